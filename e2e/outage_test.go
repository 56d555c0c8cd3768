//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestControlPlaneDownAgentRestart: with the control plane stopped, node-1's
// agent is restarted (SIGTERM, start). It cannot re-join, yet pod traffic
// between node-1's pod and node-2's pod keeps flowing in both directions
// (the datapath, peers and routes stay; the restarted agent's first strict
// rules exempt its own pods because it remembers its pod CIDR in
// <state>/network.json). When the control plane comes back (same state
// directory and address) the agent becomes attested and ready again, with
// the same pod CIDR.
func TestControlPlaneDownAgentRestart(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	for _, p := range [][2]*Pod{{a, b}, {b, a}} {
		if err := netlab.SendUDP(p[0], p[1], netlab.RandomPayload("warm-up", 16), 10*time.Second); err != nil {
			t.Fatalf("before the outage: %v", err)
		}
	}
	podCIDR := n1.PodCIDR
	dpBefore, err := n1.DatapathPID()
	if err != nil {
		t.Fatal(err)
	}

	down := time.Now()
	if err := c.CP.Stop(); err != nil {
		t.Fatalf("stop the control plane: %v", err)
	}
	t.Logf("control plane stopped in %s", time.Since(down).Round(time.Millisecond))

	// Both directions, one datagram every 10 ms for 5 s; the agent
	// restart happens after the first second.
	const count, interval = 500, 10 * time.Millisecond
	ab, err := netlab.StartUDPStream(a, b, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := netlab.StartUDPStream(b, a, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.Eventually(streamStartLimit, 10*time.Millisecond, func() error {
		if ab.Sent() < 100 {
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
	n1.StartAgent()
	// The new agent is up (its local API answers, strict rules in place)
	// but cannot join.
	var reason string
	err = netlab.Eventually(10*time.Second, netlab.PollEvery, func() error {
		if done, werr := n1.Agent().Exited(); done {
			return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		st, err := n1.Status()
		if err != nil {
			return err
		}
		if st.Attested {
			return netlab.Permanent(fmt.Errorf("attested although the control plane is down"))
		}
		if !st.StrictMode || !strings.Contains(st.ReadyReason, "not attested") {
			return fmt.Errorf("strictMode=%v reason %q: no join attempt yet", st.StrictMode, st.ReadyReason)
		}
		reason = st.ReadyReason
		return nil
	})
	if err != nil {
		t.Fatalf("restarted agent: %v", err)
	}
	upAfter := time.Since(restart)

	lossOK := true
	for _, s := range []*netlab.UDPStream{ab, ba} {
		missing, err := s.Finish(count*interval + streamEndSlack)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s -> %s: lost %d of %d datagrams (%.1f%%)%s", s.From.Name, s.To.Name, len(missing), count,
			100*float64(len(missing))/count, map[bool]string{true: ": seq " + netlab.Ranges(missing)}[len(missing) > 0])
		if len(missing)*100 >= 5*count {
			lossOK = false
			t.Errorf("%s -> %s: lost %d of %d datagrams while the agent restarted with the control plane down (limit: < 5%%)", s.From.Name, s.To.Name, len(missing), count)
		}
	}
	st, err := n1.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Attested {
		t.Fatalf("%s attested while the control plane is down", n1.Name)
	}
	t.Logf("agent restarted, serving and refusing to pretend (%q) %s after SIGTERM; still unattested after the stream", reason, upAfter.Round(time.Millisecond))
	if dp, err := n1.DatapathPID(); err != nil || dp != dpBefore || !netlab.PIDAlive(dp) {
		t.Errorf("datapath pid %d before, %d after (err %v): the datapath must survive the agent restart", dpBefore, dp, err)
	}
	if lossOK {
		for _, p := range [][2]*Pod{{a, b}, {b, a}} {
			if err := netlab.SendUDP(p[0], p[1], netlab.RandomPayload("during the outage", 16), 5*time.Second); err != nil {
				t.Errorf("during the outage: %v", err)
			}
		}
	}

	back := time.Now()
	if err := c.CP.Start(); err != nil {
		t.Fatalf("start the control plane again: %v", err)
	}
	n1.WaitReady() // 30 s: the agent's join backoff is up to 16 s by now
	t.Logf("control plane down for %s; %s attested and ready %s after it came back",
		back.Sub(down).Round(time.Millisecond), n1.Name, time.Since(back).Round(time.Millisecond))
	if n1.PodCIDR != podCIDR {
		t.Errorf("%s re-joined with pod CIDR %s, had %s", n1.Name, n1.PodCIDR, podCIDR)
	}
	c.WaitMesh(n1, n2)
	for _, p := range [][2]*Pod{{a, b}, {b, a}} {
		if err := netlab.SendUDP(p[0], p[1], netlab.RandomPayload("after the outage", 16), 10*time.Second); err != nil {
			t.Errorf("after the outage: %v", err)
		}
	}
}
