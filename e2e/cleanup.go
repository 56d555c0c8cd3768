//go:build linux

package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
)

// teardown stops every process by PID, runs `confmesh agent cleanup` in
// every node namespace, kills any datapath left, and deletes the
// namespaces. On failure it first dumps the tail of every log.
func (c *Cluster) teardown() {
	t := c.T
	if t.Failed() {
		c.dumpLogs()
	}
	defer c.keepLogs()
	c.mu.Lock()
	nodes := append([]*Node(nil), c.Nodes...)
	procs := append([]*Process(nil), c.procs...)
	namespaces := append([]string(nil), c.namespaces...)
	c.mu.Unlock()

	var wg sync.WaitGroup
	for _, p := range procs {
		if p == c.CP.procOrNil() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.Stop(); err != nil {
				t.Errorf("e2e cleanup: %v", err)
			}
		}()
	}
	wg.Wait()
	if p := c.CP.procOrNil(); p != nil {
		if err := p.Stop(); err != nil {
			t.Errorf("e2e cleanup: %v", err)
		}
	}
	for _, n := range nodes {
		out, err := run("ip", "netns", "exec", n.NS, c.Bin, "agent", "cleanup", "--device", n.Device, "--state-dir", n.StateDir)
		if err != nil {
			t.Errorf("e2e cleanup: %s: confmesh agent cleanup: %v", n.Name, err)
		} else if testing.Verbose() {
			t.Logf("e2e cleanup: %s: %s", n.Name, strings.TrimSpace(out))
		}
		if err := n.checkCleaned(); err != nil {
			t.Errorf("e2e cleanup: %s: after `confmesh agent cleanup`: %v", n.Name, err)
		}
		if pid, err := readPIDFile(filepath.Join(n.StateDir, "datapath.pid")); err == nil && pidAlive(pid) && isDatapathOf(pid, n.Device) {
			t.Errorf("e2e cleanup: %s: datapath pid %d still running after `confmesh agent cleanup`; killing it", n.Name, pid)
			if err := killDatapath(pid, n.Device); err != nil {
				t.Errorf("e2e cleanup: %v", err)
			}
		}
	}
	// Anything still running in our namespaces was started by this
	// cluster (the datapaths are checked above; this is the last resort).
	for i := len(namespaces) - 1; i >= 0; i-- {
		for _, pid := range netnsPIDs(namespaces[i]) {
			t.Errorf("e2e cleanup: pid %d (%s) still running in %s; killing it", pid, strings.Join(cmdline(pid), " "), namespaces[i])
			_ = killPID(pid)
		}
		if err := delNetns(namespaces[i]); err != nil {
			t.Errorf("e2e cleanup: %v", err)
		}
	}
	for _, n := range nodes {
		sock := filepath.Join(wgSockDir, n.Device+".sock")
		if _, err := os.Stat(sock); err == nil {
			t.Errorf("e2e cleanup: %s left behind; removing it", sock)
			os.Remove(sock)
		}
	}
}

func (cp *ControlPlane) procOrNil() *Process {
	if cp == nil {
		return nil
	}
	return cp.Proc
}

// dumpLogs logs the tail of every process's log.
func (c *Cluster) dumpLogs() {
	c.mu.Lock()
	procs := append([]*Process(nil), c.procs...)
	c.mu.Unlock()
	for _, p := range procs {
		c.T.Logf("e2e: ---- %s (pid %d), last 40 lines of %s ----\n%s", p.Name, p.PID(), p.Log, tail(p.Log, 40))
	}
}

// LogDirEnv names a directory to copy every cluster's process logs into
// (one subdirectory per test), kept after the run; unset, logs go with the
// test's temporary directory.
const LogDirEnv = "CME2E_LOG_DIR"

// keepLogs copies the logs when LogDirEnv is set.
func (c *Cluster) keepLogs() {
	dir := os.Getenv(LogDirEnv)
	if dir == "" {
		return
	}
	dst := filepath.Join(dir, strings.NewReplacer("/", "_", " ", "_").Replace(c.T.Name()))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		c.T.Logf("e2e: %s: %v", LogDirEnv, err)
		return
	}
	logs, _ := filepath.Glob(filepath.Join(c.Dir, "*.log"))
	for _, l := range logs {
		if data, err := os.ReadFile(l); err == nil {
			_ = os.WriteFile(filepath.Join(dst, filepath.Base(l)), data, 0o644)
		}
	}
	c.T.Logf("e2e: logs kept in %s", dst)
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
