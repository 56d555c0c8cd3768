//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// udpStream sends count sequence-numbered datagrams, one every interval,
// from one pod to another, in the background.
type udpStream struct {
	count int
	token string
	sent  atomic.Int64
	r     *UDPReceiver
	done  chan error
}

func startStream(from, to *Pod, count int, interval time.Duration) (*udpStream, error) {
	dst := netip.AddrPortFrom(to.IP, randomPort())
	r, err := ListenUDP(to.NS, dst)
	if err != nil {
		return nil, err
	}
	conn, err := DialUDP(from.NS, dst)
	if err != nil {
		r.Close()
		return nil, err
	}
	s := &udpStream{count: count, token: fmt.Sprintf("%x", RandomPayload("", 8)), r: r, done: make(chan error, 1)}
	go func() {
		defer conn.Close()
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := range count {
			_, _ = conn.Write(fmt.Appendf(nil, "stream %s seq %06d", s.token, i)) // a failed send is a loss
			s.sent.Add(1)
			<-t.C
		}
		s.done <- nil
	}()
	return s, nil
}

// finish waits for the sender (bounded), then for stragglers, and returns
// the sequence numbers that never arrived.
func (s *udpStream) finish(timeout time.Duration) (missing []int, err error) {
	select {
	case <-s.done:
	case <-time.After(timeout):
		return nil, fmt.Errorf("stream sender still running after %s", timeout)
	}
	got := map[int]bool{}
	collect := func() error {
		for _, d := range s.r.Datagrams() {
			var tok string
			var seq int
			if _, err := fmt.Sscanf(string(d), "stream %s seq %d", &tok, &seq); err == nil && tok == s.token {
				got[seq] = true
			}
		}
		if len(got) < s.count {
			return errNotYet
		}
		return nil
	}
	_ = Eventually(500*time.Millisecond, 50*time.Millisecond, collect) // stragglers
	s.r.Close()
	for i := range s.count {
		if !got[i] {
			missing = append(missing, i)
		}
	}
	return missing, nil
}

// ranges renders sorted sequence numbers as "3-7, 12".
func ranges(seqs []int) string {
	var parts []string
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, fmt.Sprint(seqs[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", seqs[i], seqs[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// TestAgentRestartKeepsTraffic: while a pod on node-1 streams datagrams to
// a pod on node-2 (one every 10 ms for 4 s), node-1's agent is stopped
// (SIGTERM) and started again. The datapath process must be the same one
// afterwards, at most 5% of the datagrams may be lost, and the agent must
// become ready again.
func TestAgentRestartKeepsTraffic(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	if err := SendUDP(a, b, RandomPayload("warm-up", 16), 10*time.Second); err != nil {
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
	s, err := startStream(a, b, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	if err := Eventually(5*time.Second, 10*time.Millisecond, func() error {
		if s.sent.Load() < 100 {
			return errNotYet
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
	missing, err := s.finish(count*interval + 10*time.Second)
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
	if dpAfter != dpBefore || !pidAlive(dpBefore) {
		t.Errorf("datapath pid %d before the agent restart, %d after (alive: %v): the datapath must survive", dpBefore, dpAfter, pidAlive(dpBefore))
	}
	t.Logf("agent stopped in %s, ready again %s after SIGTERM; lost %d of %d datagrams (%.1f%%)%s",
		stopped.Round(time.Millisecond), readyAfter.Round(time.Millisecond), len(missing), count,
		100*float64(len(missing))/count, map[bool]string{true: ": seq " + ranges(missing)}[len(missing) > 0])
	if d := inAfter - inBefore; d > 0 {
		t.Logf("strict_in_drop on %s rose by %d during the restart (packets of %s dropped by the strict in-chain)", n1.Name, d, a.Name)
	}
	if len(missing)*100 >= 5*count {
		t.Errorf("lost %d of %d datagrams across an agent restart (limit: < 5%%)", len(missing), count)
	}
	if err := SendUDP(a, b, RandomPayload("after restart", 16), 10*time.Second); err != nil {
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
	if err := SendUDP(a, b, RandomPayload("before", 16), 10*time.Second); err != nil {
		t.Fatalf("before killing the datapath: %v", err)
	}
	old, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}
	if !isDatapathOf(old, n1.Device) {
		t.Fatalf("pid %d from datapath.pid is not the datapath of %s: %q", old, n1.Device, cmdline(old))
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	const restoreTimeout = 15 * time.Second
	var pid int
	err = Eventually(restoreTimeout, pollEvery, func() error {
		var err error
		if pid, err = n1.DatapathPID(); err != nil {
			return err
		}
		if pid == old || !pidAlive(pid) {
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
	if err := SendUDP(a, b, RandomPayload("after, 1 to 2", 16), left); err != nil {
		t.Errorf("UDP %s -> %s after the datapath restart: %v", a.Name, b.Name, err)
	}
	if err := SendUDP(b, a, RandomPayload("after, 2 to 1", 16), restoreTimeout-time.Since(killed)); err != nil {
		t.Errorf("UDP %s -> %s after the datapath restart: %v", b.Name, a.Name, err)
	}
	if err := ExchangeTCP(a, b, RandomPayload("tcp req", 1000), RandomPayload("tcp resp", 1000), 10*time.Second); err != nil {
		t.Errorf("TCP after the datapath restart: %v", err)
	}
	t.Logf("datapath %d killed; new datapath %d with peers and ready after %s; traffic flowing after %s",
		old, pid, restored.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
}
