//go:build linux

package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LogTails renders the last n lines of every process's log, one section
// per process start.
func (c *Cluster) LogTails(n int) []string {
	var out []string
	for _, p := range c.Processes() {
		out = append(out, fmt.Sprintf("---- %s (pid %d), last %d lines of %s ----\n%s", p.Name, p.PID(), n, p.Log, Tail(p.Log, n)))
	}
	return out
}

// CopyLogs copies every process log of the cluster (*.log in its
// directory) and every node's datapath log (as NODE-datapath.log) into dst,
// creating it.
func (c *Cluster) CopyLogs(dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "*.log"))
	names := make([]string, len(logs))
	for i, l := range logs {
		names[i] = filepath.Base(l)
	}
	for _, n := range c.Nodes() {
		l := filepath.Join(n.StateDir, "datapath.log")
		if _, err := os.Stat(l); err == nil {
			logs, names = append(logs, l), append(names, n.Name+"-datapath.log")
		}
	}
	var errs []string
	for i, l := range logs {
		data, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, names[i]), data, 0o644)
		}
		if err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("copy logs: %s", strings.Join(errs, "; "))
	}
	return nil
}

// NetworkSnapshots renders, for every node, what a failed traffic check
// needs: the strict-mode state and counters the agent reports, each
// WireGuard peer with its endpoint, allowed IPs, last handshake and byte
// counts, and the node's routes and pod interfaces.
func (c *Cluster) NetworkSnapshots() []string {
	var out []string
	for _, n := range c.Nodes() {
		var b strings.Builder
		fmt.Fprintf(&b, "---- %s network state (netns %s) ----\n", n.Name, n.NS)
		if st, err := n.Status(); err != nil {
			fmt.Fprintf(&b, "status: %v\n", err)
		} else {
			fmt.Fprintf(&b, "status: state=%s ready=%v strictMode=%v strict=%+v\n", st.State, st.Ready, st.StrictMode, st.Strict)
		}
		if dev, err := n.WGDevice(); err != nil {
			fmt.Fprintf(&b, "wireguard: %v\n", err)
		} else {
			fmt.Fprintf(&b, "wireguard %s: port %d, %d peers\n", dev.Name, dev.ListenPort, len(dev.Peers))
			for _, p := range dev.Peers {
				fmt.Fprintf(&b, "  peer %s endpoint %v allowed %v handshake %s rx %d tx %d\n",
					p.PublicKey.String()[:8], p.Endpoint, p.AllowedIPs, p.LastHandshakeTime.Format("15:04:05.000"), p.ReceiveBytes, p.TransmitBytes)
			}
		}
		for _, args := range [][]string{{"route", "show", "table", "all"}, {"-brief", "link"}} {
			o, err := Exec("ip", append([]string{"-n", n.NS}, args...)...)
			if err != nil {
				o += " (" + err.Error() + ")"
			}
			fmt.Fprintf(&b, "$ ip %s\n%s\n", strings.Join(args, " "), strings.TrimSpace(o))
		}
		out = append(out, b.String())
	}
	return out
}
