//go:build linux

package e2e

import (
	"fmt"
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
	if d := outAfter - outBefore; d < count {
		t.Errorf("strict_out_drop on %s rose by %d, want at least %d", n1.Name, d, count)
	}
}
