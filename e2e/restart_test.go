//go:build linux

package e2e

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestAgentRestartKeepsTraffic: while a pod on node-1 streams datagrams to
// a pod on node-2 (one every 10 ms for 4 s), node-1's agent is stopped
// (SIGTERM) and started again. The datapath process must be the same one
// afterwards, at most 5% of the datagrams may be lost, and the agent must
// become ready again.
func TestAgentRestartKeepsTraffic(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("warm-up", 16), 10*time.Second); err != nil {
		t.Fatalf("before the restart: %v", err)
	}
	dpBefore, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}

	_, inBefore, err := n1.StrictCounters()
	if err != nil {
		t.Fatal(err)
	}

	const count, interval = 400, 10 * time.Millisecond
	s, err := netlab.StartUDPStream(a, b, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.Eventually(streamStartLimit, 10*time.Millisecond, func() error {
		if s.Sent() < 100 {
			return netlab.ErrNotYet
		}
		return nil
	}); err != nil {
		t.Fatalf("stream: %v", err)
	}
	restart := time.Now()
	if err := n1.StopAgent(); err != nil {
		t.Errorf("stop agent: %v", err)
	}
	stopped := time.Since(restart)
	n1.StartAgent()
	n1.WaitReady() // while the stream goes on
	readyAfter := time.Since(restart)
	missing, err := s.Finish(count*interval + streamEndSlack)
	if err != nil {
		t.Fatal(err)
	}
	_, inAfter, err := n1.StrictCounters()
	if err != nil {
		t.Fatal(err)
	}

	dpAfter, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}
	if dpAfter != dpBefore || !netlab.PIDAlive(dpBefore) {
		t.Errorf("datapath pid %d before the agent restart, %d after (alive: %v): the datapath must survive", dpBefore, dpAfter, netlab.PIDAlive(dpBefore))
	}
	t.Logf("agent stopped in %s, ready again %s after SIGTERM; lost %d of %d datagrams (%.1f%%)%s",
		stopped.Round(time.Millisecond), readyAfter.Round(time.Millisecond), len(missing), count,
		100*float64(len(missing))/count, map[bool]string{true: ": seq " + netlab.Ranges(missing)}[len(missing) > 0])
	if d := inAfter - inBefore; d > 0 {
		t.Logf("strict_in_drop on %s rose by %d during the restart (packets of %s dropped by the strict in-chain)", n1.Name, d, a.Name)
	}
	if len(missing)*100 >= 5*count {
		t.Errorf("lost %d of %d datagrams across an agent restart (limit: < 5%%)", len(missing), count)
	}
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("after restart", 16), 10*time.Second); err != nil {
		t.Errorf("after the restart: %v", err)
	}
}

// TestDatapathRestartRestored: the userspace datapath of node-1 is killed
// (SIGKILL, PID from datapath.pid); its agent must bring up a new one with
// the device configured and the peer restored within 15 s, and pod
// traffic must flow again.
func TestDatapathRestartRestored(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("before", 16), 10*time.Second); err != nil {
		t.Fatalf("before killing the datapath: %v", err)
	}
	old, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}
	if !netlab.IsDatapathOf(old, n1.Device) {
		t.Fatalf("pid %d from datapath.pid is not the datapath of %s: %q", old, n1.Device, netlab.Cmdline(old))
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	const restoreTimeout = 15 * time.Second
	var pid int
	err = netlab.Eventually(restoreTimeout, netlab.PollEvery, func() error {
		var err error
		if pid, err = n1.DatapathPID(); err != nil {
			return err
		}
		if pid == old || !netlab.PIDAlive(pid) {
			return fmt.Errorf("no new datapath (pid file says %d)", pid)
		}
		if err := n1.CheckPeers(n2); err != nil {
			return err
		}
		st, err := n1.Status()
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.ReadyReason)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("device not restored within %s of SIGKILL: %v", restoreTimeout, err)
	}
	restored := time.Since(killed)
	left := restoreTimeout - restored
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("after, 1 to 2", 16), left); err != nil {
		t.Errorf("UDP %s -> %s after the datapath restart: %v", a.Name, b.Name, err)
	}
	if err := netlab.SendUDP(b, a, netlab.RandomPayload("after, 2 to 1", 16), restoreTimeout-time.Since(killed)); err != nil {
		t.Errorf("UDP %s -> %s after the datapath restart: %v", b.Name, a.Name, err)
	}
	if err := netlab.ExchangeTCP(a, b, netlab.RandomPayload("tcp req", 1000), netlab.RandomPayload("tcp resp", 1000), 10*time.Second); err != nil {
		t.Errorf("TCP after the datapath restart: %v", err)
	}
	t.Logf("datapath %d killed; new datapath %d with peers and ready after %s; traffic flowing after %s",
		old, pid, restored.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}
