//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// AddNode creates the next node's namespace and starts its agent, without
// waiting for it: call WaitReady (honest node) or watch its Status (rogue).
func (c *Cluster) AddNode(opts NodeOptions) *Node {
	t := c.T
	t.Helper()
	c.mu.Lock()
	i := len(c.Nodes) + 1
	if i > maxNodes {
		c.mu.Unlock()
		t.Fatalf("e2e: at most %d nodes per cluster", maxNodes)
	}
	n := &Node{c: c, Index: i, Name: fmt.Sprintf("node-%d", i), NS: fmt.Sprintf("%s-n%d", c.Prefix, i),
		Device: fmt.Sprintf("%sn%d", c.Prefix, i), IP: nodeIP(i), StateDir: filepath.Join(c.Dir, fmt.Sprintf("n%d", i)),
		Policy: c.agentPolicy, Opts: opts}
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	n.Socket = filepath.Join(n.StateDir, "agent.sock")
	if opts.Policy != nil {
		n.Policy = filepath.Join(c.Dir, fmt.Sprintf("n%d-policy.yaml", i))
		if err := writePolicy(n.Policy, filepath.Join(c.SimDir, "root.pem"), *opts.Policy); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := c.attach(n.NS, fmt.Sprintf("n%d", i), n.IP); err != nil {
		t.Fatalf("e2e: %s namespace: %v", n.Name, err)
	}
	err := ipIn(n.NS, "route", "add", "default", "via", bridgeIP.String(), "dev", "eth0")
	if err == nil {
		err = InNS(n.NS, func() error { return writeSysctl("net/ipv4/ip_forward", "1") })
	}
	if err != nil {
		t.Fatalf("e2e: %s: %v", n.Name, err)
	}
	n.StartAgent()
	return n
}

func nodeIP(i int) netip.Addr {
	b := cpIP.As4()
	b[3] = byte(nodeIPMin + i)
	return netip.AddrFrom4(b)
}

// Endpoint is the node's WireGuard endpoint on the underlay.
func (n *Node) Endpoint() netip.AddrPort { return netip.AddrPortFrom(n.IP, wgPort) }

// StartAgent starts (or restarts) the node's agent process.
func (n *Node) StartAgent() {
	t := n.c.T
	t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.starts++
	args := []string{"agent", "--name", n.Name, "--control-plane", n.c.CP.Addr, "--policy", n.Policy,
		"--state-dir", n.StateDir, "--endpoint", n.Endpoint().String(), "--device", n.Device,
		"--socket", n.Socket, "--metrics-listen", "", "--sim-dir", n.c.SimDir, "--force-userspace"}
	if n.Opts.SimDebug {
		args = append(args, "--sim-debug")
	}
	if n.Opts.SimMeasurement != "" {
		args = append(args, "--sim-measurement", n.Opts.SimMeasurement)
	}
	log := filepath.Join(n.c.Dir, fmt.Sprintf("%s-agent-%d.log", n.Name, n.starts))
	p, err := startProcess(fmt.Sprintf("%s agent (start %d)", n.Name, n.starts), log, n.NS, n.c.Bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	n.proc = p
	n.c.trackProc(p)
}

// Agent is the node's current agent process.
func (n *Node) Agent() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// StopAgent stops the agent with SIGTERM (bounded, then SIGKILL). The
// device, the datapath and the strict rules stay, by design.
func (n *Node) StopAgent() error { return n.Agent().Stop() }

// WaitReady waits until the agent reports attested and ready with a pod
// CIDR, and records the pod CIDR and WireGuard key.
func (n *Node) WaitReady() {
	t := n.c.T
	t.Helper()
	var last *Status
	err := Eventually(ReadyTimeout, pollEvery, func() error {
		if done, werr := n.Agent().Exited(); done {
			return Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		st, err := n.Status()
		if err != nil {
			return err
		}
		last = st
		if !st.Attested || !st.Ready || st.PodCIDR == "" {
			return fmt.Errorf("attested=%v ready=%v reason=%q podCIDR=%q", st.Attested, st.Ready, st.ReadyReason, st.PodCIDR)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("e2e: %s not ready: %v\nlast status: %+v\n%s", n.Name, err, last, tail(n.Agent().Log, 30))
	}
	pfx, err := netip.ParsePrefix(last.PodCIDR)
	if err != nil {
		t.Fatalf("e2e: %s: pod CIDR %q: %v", n.Name, last.PodCIDR, err)
	}
	key, err := keyFromHex(last.WireGuardKey)
	if err != nil {
		t.Fatalf("e2e: %s: WireGuard key: %v", n.Name, err)
	}
	n.mu.Lock()
	n.PodCIDR, n.Key = pfx, key
	n.mu.Unlock()
}
