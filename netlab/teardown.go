//go:build linux

package netlab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
)

// Teardown runs the CNI plugin's DEL for every pod it made, stops every
// process by PID (agents in parallel, then the
// control plane), runs `confmesh agent cleanup` in every node namespace,
// kills any datapath or other process left in the cluster's namespaces,
// deletes the namespaces (pods first) and checks that no UAPI socket is
// left. It returns every problem it met; each was also dealt with.
func (c *Cluster) Teardown() []error {
	var (
		mu   sync.Mutex
		errs []error
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		errs = append(errs, fmt.Errorf(format, args...))
		mu.Unlock()
	}
	// Pods the CNI plugin made get their DEL first, while the agents run
	// (DEL also succeeds with the agent down: it removes the veth).
	for _, p := range c.Pods() {
		if err := c.DeletePod(p); err != nil {
			fail("%v", err)
		}
	}
	cpProcs := map[*Process]bool{}
	for _, cp := range c.ControlPlanes() {
		if p := cp.Process(); p != nil {
			cpProcs[p] = true
		}
	}
	// Everything else stops before the control planes, each group in
	// parallel.
	stopAll := func(keep func(*Process) bool) {
		var wg sync.WaitGroup
		for _, p := range c.Processes() {
			if !keep(p) {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := p.Stop(); err != nil {
					fail("%v", err)
				}
			}()
		}
		wg.Wait()
	}
	stopAll(func(p *Process) bool { return !cpProcs[p] })
	stopAll(func(p *Process) bool { return cpProcs[p] })
	for _, n := range c.Nodes() {
		out, err := Exec("ip", "netns", "exec", n.NS, c.Bin, "agent", "cleanup", "--device", n.Device, "--state-dir", n.StateDir)
		if err != nil {
			fail("%s: confmesh agent cleanup: %v", n.Name, err)
		} else if c.Logf != nil {
			c.Logf("%s: %s", n.Name, strings.TrimSpace(out))
		}
		if err := n.checkCleaned(); err != nil {
			fail("%s: after `confmesh agent cleanup`: %v", n.Name, err)
		}
		if pid, err := n.DatapathPID(); err == nil && PIDAlive(pid) && IsDatapathOf(pid, n.Device) {
			fail("%s: datapath pid %d still running after `confmesh agent cleanup`; killing it", n.Name, pid)
			if err := KillDatapath(pid, n.Device); err != nil {
				fail("%v", err)
			}
		}
	}
	// Anything still running in our namespaces was started by this
	// cluster (the datapaths are checked above; this is the last resort).
	namespaces := c.Namespaces()
	for i := len(namespaces) - 1; i >= 0; i-- {
		for _, pid := range NetnsPIDs(namespaces[i]) {
			fail("pid %d (%s) still running in %s; killing it", pid, strings.Join(Cmdline(pid), " "), namespaces[i])
			_ = killPID(pid)
		}
		if err := DelNetns(namespaces[i]); err != nil {
			fail("%v", err)
		}
	}
	for _, n := range c.Nodes() {
		sock := filepath.Join(WireGuardSocketDir, n.Device+".sock")
		if _, err := os.Stat(sock); err == nil {
			fail("%s left behind; removing it", sock)
			os.Remove(sock)
		}
	}
	return errs
}

// checkCleaned verifies that `confmesh agent cleanup` removed the strict
// table and the WireGuard device from the node's namespace.
func (n *Node) checkCleaned() error {
	return InNS(n.NS, func() error {
		var left []string
		if ok, err := netfilter.Installed(agent.DefaultTable); err != nil {
			return err
		} else if ok {
			left = append(left, "nftables table "+agent.DefaultTable)
		}
		if _, err := net.InterfaceByName(n.Device); err == nil {
			left = append(left, "link "+n.Device)
		}
		if len(left) > 0 {
			return fmt.Errorf("still present: %s", strings.Join(left, ", "))
		}
		return nil
	})
}
