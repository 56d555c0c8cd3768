//go:build linux

package e2e

import (
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestAgentKill9KeepsTCP (issue 4): one TCP connection from a pod on
// node-1 to a pod on node-2 carries a sequence-numbered 64-byte record
// every 10 ms for 5 s. After 1 s node-1's agent is SIGKILLed (no chance to
// clean up) and started again. The connection must never see an error on
// either side and every record must arrive intact and in order; the
// datapath must be the same process (the new agent adopted the device) and
// the agent must become ready again.
func TestAgentKill9KeepsTCP(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	dpBefore, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}

	const count, interval = 500, 10 * time.Millisecond
	s, err := netlab.StartTCPStream(a, b, count, interval, streamEndSlack)
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
	old := n1.Agent()
	killed := time.Now()
	if err := syscall.Kill(old.PID(), syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", old.PID(), err)
	}
	if err := old.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	atKill := s.Received()
	n1.StartAgent()
	n1.WaitReady() // while the stream goes on
	readyAfter := time.Since(killed)
	atReady := s.Received()
	if err := s.Finish(); err != nil {
		t.Errorf("TCP stream %s -> %s across kill -9 of %s's agent: %v (sent %d, received %d of %d)", a.Name, b.Name, n1.Name, err, s.Sent(), s.Received(), count)
	} else if s.Received() != count {
		t.Errorf("received %d records of %d", s.Received(), count)
	}
	dpAfter, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}
	if dpAfter != dpBefore || !netlab.PIDAlive(dpBefore) {
		t.Errorf("datapath pid %d before kill -9 of the agent, %d after (old one alive: %v): the new agent must adopt the device", dpBefore, dpAfter, netlab.PIDAlive(dpBefore))
	}
	if st, err := n1.Status(); err != nil || !st.Ready || !st.Attested {
		t.Errorf("%s after the stream: status %+v, %v", n1.Name, st, err)
	}
	t.Logf("agent pid %d SIGKILLed with %d records received, new agent ready %s later (%d received by then); %d of %d records arrived in order, datapath pid %d throughout",
		old.PID(), atKill, readyAfter.Round(time.Millisecond), atReady, s.Received(), count, dpBefore)
}
