//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// observeFor is how long the rogue tests keep watching that a refused node
// stays refused.
const observeFor = 3 * time.Second

// TestRogueNodeRefusedByControlPlane: a node whose simulated TEE has the
// debug bit, and one with a measurement the policy does not list, are
// refused by the control plane: their status says attested=false with a
// ready reason naming the refusal, and no honest node ever has them as a
// WireGuard peer.
func TestRogueNodeRefusedByControlPlane(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	honest := append([]*Node(nil), c.Nodes...)
	rogues := map[*Node]string{
		c.AddNode(NodeOptions{SimDebug: true}):                          "debug",
		c.AddNode(NodeOptions{SimMeasurement: netlab.OtherMeasurement}): "measurement",
	}
	for r, want := range rogues {
		var last *Status
		err := netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
			if done, werr := r.Agent().Exited(); done {
				return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
			}
			st, err := r.Status()
			if err != nil {
				return err
			}
			last = st
			if st.Attested {
				return netlab.Permanent(fmt.Errorf("attested (ready=%v %q)", st.Ready, st.ReadyReason))
			}
			if !strings.Contains(st.ReadyReason, want) {
				return fmt.Errorf("ready reason %q does not name %q yet", st.ReadyReason, want)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s (%s): %v", r.Name, want, err)
		}
		t.Logf("%s (%s): attested=%v ready=%v reason=%q", r.Name, want, last.Attested, last.Ready, last.ReadyReason)
		if last.Ready {
			t.Errorf("%s (%s): ready=true while not attested", r.Name, want)
		}
		if r.Key, err = netlab.KeyFromHex(last.WireGuardKey); err != nil {
			t.Fatalf("%s: status wireguardKey: %v", r.Name, err)
		}
	}

	// For a while: the rogues stay unattested and no honest node has them.
	deadline := time.Now().Add(observeFor)
	for time.Now().Before(deadline) {
		for r, want := range rogues {
			st, err := r.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Attested {
				t.Fatalf("%s (%s) became attested", r.Name, want)
			}
		}
		for _, n := range honest {
			if err := n.CheckPeers(others(honest, n)...); err != nil {
				t.Fatalf("wgctrl: %v", err)
			}
			peers, err := n.Peers()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range peers {
				for r := range rogues {
					if p.Name == r.Name {
						t.Fatalf("%s lists refused node %s as a peer (%s: %s)", n.Name, r.Name, p.State, p.Reason)
					}
				}
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	nodes, err := c.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range nodes {
		for r := range rogues {
			if rec.Name == r.Name && rec.State == "active" {
				t.Errorf("control plane lists %s as active", r.Name)
			}
		}
	}
}

// TestLaxControlPlaneCannotAdmitRogue: a control plane whose policy is
// laxer than the agents' (allowDebug: true) admits a debug node, but every
// honest agent verifies the peer itself and refuses it: `confmesh peers`
// says refused (debug), its key is not on their devices, and traffic from
// an honest pod to the rogue's pod CIDR is dropped by strict mode instead
// of leaving in clear.
func TestLaxControlPlaneCannotAdmitRogue(t *testing.T) {
	lax := Policy{AllowDebug: true}
	c := NewCluster(t, Options{Nodes: 2, ControlPlanePolicy: &lax})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	// The rogue's own policy does not matter (it must accept the control
	// plane, which it does); what matters is the honest agents' policy.
	rogue := c.AddNode(NodeOptions{SimDebug: true, Policy: &lax})
	rogue.WaitReady() // attested: the lax control plane admitted it

	nodes, err := c.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	admitted := false
	for _, rec := range nodes {
		if rec.Name == rogue.Name {
			admitted = rec.State == "active"
			t.Logf("control plane: %s state=%s podCIDR=%s", rec.Name, rec.State, rec.PodCIDR)
		}
	}
	if !admitted {
		t.Fatalf("the lax control plane did not admit %s: %+v", rogue.Name, nodes)
	}

	for _, n := range []*Node{n1, n2} {
		err := netlab.Eventually(15*time.Second, netlab.PollEvery, func() error {
			peers, err := n.Peers()
			if err != nil {
				return err
			}
			for _, p := range peers {
				if p.Name != rogue.Name {
					continue
				}
				if p.State != "refused" || !strings.Contains(p.Reason, "debug") {
					return netlab.Permanent(fmt.Errorf("peer %s: state %q reason %q, want refused naming debug", p.Name, p.State, p.Reason))
				}
				t.Logf("%s: peer %s %s: %s", n.Name, p.Name, p.State, p.Reason)
				return nil
			}
			return fmt.Errorf("%s not in %s's peers yet", rogue.Name, n.Name)
		})
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		has, err := n.HasPeerKey(rogue.Key)
		if err != nil {
			t.Fatal(err)
		}
		if has {
			t.Errorf("%s has the rogue's WireGuard key on its device", n.Name)
		}
		if err := n.CheckPeers(others([]*Node{n1, n2}, n)...); err != nil {
			t.Errorf("wgctrl: %v", err)
		}
	}

	// Honest pod -> rogue pod: strict mode drops it on node-1.
	a, rp := c.AddPod(n1), c.AddPod(rogue)
	outBefore, _, err := n1.StrictCounters()
	if err != nil {
		t.Fatal(err)
	}
	payload := netlab.RandomPayload("honest pod to rogue pod", 48)
	const count = 20
	capt := c.StartCapture(20 * time.Second)
	arrived, err := netlab.CountUDP(a, rp, payload, count, 20*time.Millisecond, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	frames, cerr := capt.Stop()
	if cerr != nil {
		t.Fatal(cerr)
	}
	outAfter, _, err := n1.StrictCounters()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("underlay while %s sent %d datagrams to %s:\n%s", a.Name, count, rp.Name, netlab.Summarize(frames))
	if arrived != 0 {
		t.Errorf("%d of %d datagrams reached the rogue's pod", arrived, count)
	}
	if n := netlab.FramesContaining(frames, payload); n > 0 {
		t.Errorf("the payload crossed the underlay in clear in %d frames", n)
	}
	if bad := c.UnderlayViolations(frames); len(bad) > 0 {
		t.Errorf("frames the underlay must not carry:\n%v", bad)
	}
	// Dropped by strict mode: by the fail-closed route (no route through
	// the device for the rogue's pod CIDR) or by the out chain.
	refused, err := n1.RoutingRefuses(rp.IP)
	if err != nil {
		t.Fatal(err)
	}
	if d := outAfter - outBefore; !refused && d < count {
		t.Errorf("strict_out_drop on %s rose by %d, want at least %d, and the routing table does not refuse %s (the datagrams must be dropped by strict mode)", n1.Name, d, count, rp.IP)
	} else {
		t.Logf("strict_out_drop on %s rose by %d; fail-closed route refuses %s: %v", n1.Name, d, rp.IP, refused)
	}
}

// TestRefusedNodeStopsTrying (issue 9, item 8): a node the control plane
// refuses (simulated debug guest) ends in state "refused" with the
// control plane's reason in `confmesh status`, keeps running (status
// answers), and does not retry: over a window longer than the old retry
// backoff the control plane records no further refusal. `confmesh nodes
// --all` lists it as refused with the reason and a refusal count.
func TestRefusedNodeStopsTrying(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 1})
	rogue := c.AddNode(NodeOptions{SimDebug: true})
	err := netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
		if done, werr := rogue.Agent().Exited(); done {
			return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		st, err := rogue.Status()
		if err != nil {
			return err
		}
		if st.Attested || st.Ready {
			return netlab.Permanent(fmt.Errorf("attested=%v ready=%v", st.Attested, st.Ready))
		}
		if st.State != "refused" || !strings.Contains(st.StateReason, "debug") {
			return fmt.Errorf("state %q reason %q, want refused naming debug", st.State, st.StateReason)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", rogue.Name, err)
	}
	refusals := func() (netlab.NodeRecord, error) {
		nodes, err := c.ListAllNodes()
		if err != nil {
			return netlab.NodeRecord{}, err
		}
		for _, rec := range nodes {
			if rec.Name == rogue.Name {
				return rec, nil
			}
		}
		return netlab.NodeRecord{}, fmt.Errorf("confmesh nodes --all does not list %s: %+v", rogue.Name, nodes)
	}
	before, err := refusals()
	if err != nil {
		t.Fatal(err)
	}
	if before.State != "refused" || !strings.Contains(before.Reason, "debug") || before.Refusals < 1 || before.Since == "" {
		t.Fatalf("confmesh nodes --all: %+v, want state refused, a reason naming debug, a count and a time", before)
	}
	t.Logf("confmesh nodes --all: %s %s x%d since %s: %s", before.Name, before.State, before.Refusals, before.Since, before.Reason)

	// Longer than the old join backoff cap (8 s): a retrying agent shows.
	const window = 12 * time.Second
	time.Sleep(window)
	after, err := refusals()
	if err != nil {
		t.Fatal(err)
	}
	if after.Refusals != before.Refusals {
		t.Errorf("%s retried: %d refused joins recorded over %s after it reported refused", rogue.Name, after.Refusals-before.Refusals, window)
	}
	st, err := rogue.Status()
	if err != nil {
		t.Fatalf("%s: status after %s: %v", rogue.Name, window, err)
	}
	if st.State != "refused" || !st.StrictMode {
		t.Errorf("%s after %s: state %q strict mode %v, want refused with strict mode on", rogue.Name, window, st.State, st.StrictMode)
	}
}
