//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestRevokedPeerRemovedEverywhere: `confmesh nodes revoke node-3` through
// the control plane's admin socket; within 15 s no remaining node has
// node-3's key on its WireGuard device, and traffic to node-3's pods is
// dropped by strict mode (nothing arrives, nothing crosses the underlay in
// clear).
func TestRevokedPeerRemovedEverywhere(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 3})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	a, p3 := c.AddPod(n1), c.AddPod(n3)
	if err := netlab.SendUDP(a, p3, netlab.RandomPayload("before revocation", 16), 10*time.Second); err != nil {
		t.Fatalf("before revocation: %v", err)
	}

	out, err := c.Revoke(n3.Name)
	if err != nil {
		t.Fatalf("confmesh nodes revoke: %v", err)
	}
	revoked := time.Now()
	t.Logf("confmesh nodes revoke %s: %s", n3.Name, out)
	const removeTimeout = 15 * time.Second
	err = netlab.Eventually(removeTimeout, netlab.PollEvery, func() error {
		for _, n := range []*Node{n1, n2} {
			has, err := n.HasPeerKey(n3.Key)
			if err != nil {
				return err
			}
			if has {
				return fmt.Errorf("%s still has %s's key", n.Name, n3.Name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("revoked node not removed within %s: %v", removeTimeout, err)
	}
	t.Logf("%s's key gone from every remaining node %s after the revocation", n3.Name, time.Since(revoked).Round(time.Millisecond))
	for _, n := range []*Node{n1, n2} {
		if err := n.CheckPeers(others([]*Node{n1, n2}, n)...); err != nil {
			t.Errorf("wgctrl after revocation: %v", err)
		}
	}
	nodes, err := c.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range nodes {
		if rec.Name == n3.Name && rec.State == "active" {
			t.Errorf("control plane still lists %s as active", n3.Name)
		}
	}

	outBefore, _, err := n1.StrictCounters()
	if err != nil {
		t.Fatal(err)
	}
	payload := netlab.RandomPayload("to a revoked node's pod", 48)
	const count = 20
	capt := c.StartCapture(20 * time.Second)
	arrived, err := netlab.CountUDP(a, p3, payload, count, 20*time.Millisecond, 300*time.Millisecond)
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
	if arrived != 0 {
		t.Errorf("%d of %d datagrams reached %s after its node was revoked", arrived, count, p3.Name)
	}
	if n := netlab.FramesContaining(frames, payload); n > 0 {
		t.Errorf("the payload crossed the underlay in clear in %d frames:\n%s", n, netlab.Summarize(frames))
	}
	// Dropped by strict mode: by the fail-closed route (the revoked
	// node's pod CIDR lost its route through the device) or by the out chain.
	refused, err := n1.RoutingRefuses(p3.IP)
	if err != nil {
		t.Fatal(err)
	}
	if d := outAfter - outBefore; !refused && d < count {
		t.Errorf("strict_out_drop on %s rose by %d, want at least %d (and the routing table does not refuse %s)", n1.Name, d, count, p3.IP)
	}
}

// TestRevokedNodeDropsItsPeers (issue 9, item 8): after `confmesh nodes
// revoke node-3`, node-3 itself learns it (its watch ends, its re-join is
// refused) and within seconds has no WireGuard peer and no route through
// its device (wgctrl, netlink), `confmesh status` says revoked with the
// control plane's reason, strict mode stays on, and while its pod keeps
// sending, no WireGuard packet (handshake or data) leaves node-3 on the
// underlay and nothing leaves in clear. `confmesh nodes --all` lists it as
// revoked. An agent restart ends in the same state.
func TestRevokedNodeDropsItsPeers(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 3})
	n1, n2, n3 := c.Nodes[0], c.Nodes[1], c.Nodes[2]
	p1, p2, p3 := c.AddPod(n1), c.AddPod(n2), c.AddPod(n3)
	if err := netlab.SendUDP(p3, p1, netlab.RandomPayload("before revocation", 16), 10*time.Second); err != nil {
		t.Fatalf("before revocation: %v", err)
	}
	if _, err := c.Revoke(n3.Name); err != nil {
		t.Fatalf("confmesh nodes revoke: %v", err)
	}
	revoked := time.Now()
	checkStopped := func(when string) *Status {
		t.Helper()
		const within = 10 * time.Second
		var last *Status
		err := netlab.Eventually(within, netlab.PollEvery, func() error {
			dev, err := n3.WGDevice()
			if err != nil {
				return err
			}
			routes, err := n3.DeviceRoutes()
			if err != nil {
				return err
			}
			var stale []netip.Prefix
			for _, r := range routes {
				if r.Overlaps(n1.PodCIDR) || r.Overlaps(n2.PodCIDR) {
					stale = append(stale, r)
				}
			}
			if len(dev.Peers) > 0 || len(stale) > 0 {
				return fmt.Errorf("%s still has %d WireGuard peers and routes %v through %s", n3.Name, len(dev.Peers), stale, n3.Device)
			}
			if last, err = n3.Status(); err != nil {
				return err
			}
			if last.State != "revoked" || !strings.Contains(last.StateReason, "revoked") {
				return fmt.Errorf("%s status: state %q reason %q, want revoked with the control plane's reason", n3.Name, last.State, last.StateReason)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		if last.Ready || !last.StrictMode || len(last.Peers) != 0 {
			t.Errorf("%s: %s status ready=%v strictMode=%v peers=%d; want not ready, strict mode on, no peers", when, n3.Name, last.Ready, last.StrictMode, len(last.Peers))
		}
		return last
	}
	st := checkStopped("after the revocation")
	t.Logf("%s: no peers, no routes, state %s (%s) %s after the revocation", n3.Name, st.State, st.StateReason, time.Since(revoked).Round(time.Millisecond))

	// node-3's pod keeps sending to node-1's pod: nothing may leave node-3,
	// neither WireGuard (handshakes to peers that dropped it) nor clear text.
	payload := netlab.RandomPayload("from a revoked node's pod", 48)
	const count = 25
	capt := c.StartCapture(20 * time.Second)
	arrived, err := netlab.CountUDP(p3, p1, payload, count, 200*time.Millisecond, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The control: node-1 to node-2 still works and shows on the capture.
	if err := netlab.SendUDP(p1, p2, netlab.RandomPayload("control", 16), 10*time.Second); err != nil {
		t.Errorf("node-1 to node-2 after the revocation: %v", err)
	}
	frames, cerr := capt.Stop()
	if cerr != nil {
		t.Fatal(cerr)
	}
	wgFrames, initiations, control := 0, 0, 0
	for _, f := range frames {
		p := netlab.Parse(f)
		if p.Src == n1.IP && p.SrcPort == netlab.WireGuardPort {
			control++
		}
		if p.Src != n3.IP || p.SrcPort != netlab.WireGuardPort {
			continue
		}
		wgFrames++
		if typ, ok := netlab.WireGuardType(f); ok && typ == netlab.WGHandshakeInitiation {
			initiations++
		}
	}
	t.Logf("underlay for %s while %s sent %d datagrams:\n%s", count*200*time.Millisecond, p3.Name, count, netlab.Summarize(frames))
	if control == 0 {
		t.Errorf("the capture saw no WireGuard datagram from %s to %s either: it proves nothing", n1.Name, n2.Name)
	}
	if wgFrames > 0 {
		t.Errorf("%d WireGuard datagrams (%d handshake initiations) left revoked %s", wgFrames, initiations, n3.Name)
	}
	if arrived != 0 {
		t.Errorf("%d of %d datagrams from the revoked node's pod arrived", arrived, count)
	}
	if n := netlab.FramesContaining(frames, payload); n > 0 {
		t.Errorf("the payload crossed the underlay in clear in %d frames", n)
	}

	nodes, err := c.ListAllNodes()
	if err != nil {
		t.Fatalf("confmesh nodes --all: %v", err)
	}
	found := false
	for _, rec := range nodes {
		if rec.Name == n3.Name && rec.State == "revoked" {
			found = true
			t.Logf("confmesh nodes --all: %s %s since %s: %s", rec.Name, rec.State, rec.Since, rec.Reason)
		}
	}
	if !found {
		t.Errorf("confmesh nodes --all does not list %s as revoked: %+v", n3.Name, nodes)
	}

	// A restarted agent tries to join once, is refused, and ends the same.
	if err := n3.StopAgent(); err != nil {
		t.Fatal(err)
	}
	n3.StartAgent()
	st = checkStopped("after an agent restart")
	t.Logf("%s after an agent restart: state %s (%s)", n3.Name, st.State, st.StateReason)
}
