//go:build linux

package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/netlab"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// TestKeyRotation: node-1's agent rotates its WireGuard key every 3 s
// (--key-rotation; each rotation is a re-attested renewal) under a control
// plane with the shortest SVID lifetime it accepts. Within 15 s node-1's key
// must change at least once, both in its `confmesh status` and on node-2's
// WireGuard device (old key gone, new one present), while pod traffic
// between node-1's pod and node-2's pod keeps flowing (loss < 10%) in each
// direction on its own: 8 s of datagrams from node-2's pod to node-1's pod
// (towards the rotating node), then 8 s the other way. One direction at a
// time, because traffic the other way would re-establish the tunnel by
// itself and hide a stall. Afterwards node-1 is still attested, with a later
// SVID expiry than before.
func TestKeyRotation(t *testing.T) {
	// The control plane refuses an SVID TTL under config.MinTTL (2 min), and
	// the lab policy's maxEvidenceAge (90 min) exceeds half of it.
	c := NewCluster(t, Options{SVIDTTL: config.MinTTL})
	n1 := c.AddNode(NodeOptions{KeyRotation: 3 * time.Second})
	n2 := c.AddNode(NodeOptions{})
	n1.WaitReady()
	n2.WaitReady()
	c.WaitMesh(n1, n2)
	a, b := c.AddPod(n1), c.AddPod(n2)
	for _, p := range [][2]*Pod{{a, b}, {b, a}} {
		if err := netlab.SendUDP(p[0], p[1], netlab.RandomPayload("warm-up", 16), 10*time.Second); err != nil {
			t.Fatalf("before rotation: %v", err)
		}
	}
	before, err := n1.Status()
	if err != nil {
		t.Fatal(err)
	}
	expiryBefore, err := time.Parse(time.RFC3339, before.SVIDExpiry)
	if err != nil {
		t.Fatalf("status svidExpiry %q: %v", before.SVIDExpiry, err)
	}
	key0, err := netlab.KeyFromHex(before.WireGuardKey)
	if err != nil {
		t.Fatal(err)
	}

	// 8 s per direction, one datagram every 10 ms.
	const count, interval = 800, 10 * time.Millisecond
	start := time.Now()
	towards, err := netlab.StartUDPStream(b, a, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[wgtypes.Key]bool{key0: true}
	err = netlab.Eventually(15*time.Second, 50*time.Millisecond, func() error {
		st, err := n1.Status()
		if err != nil {
			return err
		}
		k, err := netlab.KeyFromHex(st.WireGuardKey)
		if err != nil {
			return netlab.Permanent(err)
		}
		keys[k] = true
		if k == key0 {
			return fmt.Errorf("%s still has its first key", n1.Name)
		}
		dev, err := n2.WGDevice()
		if err != nil {
			return err
		}
		has := map[wgtypes.Key]bool{}
		for _, p := range dev.Peers {
			has[p.PublicKey] = true
		}
		if has[key0] || !has[k] || len(dev.Peers) != 1 {
			return fmt.Errorf("%s's peers: %s's first key present=%v, its current key present=%v, %d peers", n2.Name, n1.Name, has[key0], has[k], len(dev.Peers))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("no key rotation seen within 15 s: %v", err)
	}
	t.Logf("%s's key rotated: new key in its status and on %s's device %s after the start",
		n1.Name, n2.Name, time.Since(start).Round(time.Millisecond))
	checkRotationLoss(t, towards, "towards", n1.Name, count, interval)
	from, err := netlab.StartUDPStream(a, b, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	checkRotationLoss(t, from, "from", n1.Name, count, interval)

	after, err := n1.Status()
	if err != nil {
		t.Fatal(err)
	}
	if k, err := netlab.KeyFromHex(after.WireGuardKey); err == nil {
		keys[k] = true
	}
	t.Logf("%s used %d WireGuard keys in %s", n1.Name, len(keys), time.Since(start).Round(time.Millisecond))
	expiryAfter, err := time.Parse(time.RFC3339, after.SVIDExpiry)
	if err != nil {
		t.Fatalf("status svidExpiry %q: %v", after.SVIDExpiry, err)
	}
	if !after.Attested || !after.Ready {
		t.Errorf("%s after rotation: attested=%v ready=%v %s", n1.Name, after.Attested, after.Ready, after.ReadyReason)
	}
	if !expiryAfter.After(expiryBefore) {
		t.Errorf("%s's SVID expiry %s is not later than before the rotation (%s): no renewal", n1.Name, after.SVIDExpiry, before.SVIDExpiry)
	} else {
		t.Logf("%s's SVID expiry moved from %s to %s", n1.Name, before.SVIDExpiry, after.SVIDExpiry)
	}
}

// checkRotationLoss finishes a stream and checks the bound on a
// key switch: no gap in delivery longer than one handshake retry
// (REKEY_TIMEOUT and its jitter, plus a second of scheduling slack on a
// loaded machine). A dead tunnel would show as one gap spanning the rest
// of the stream.
func checkRotationLoss(t *testing.T, s *netlab.UDPStream, dir, rotating string, count int, interval time.Duration) {
	t.Helper()
	missing, err := s.Finish(time.Duration(count)*interval + streamEndSlack)
	if err != nil {
		t.Fatal(err)
	}
	what := fmt.Sprintf("%s -> %s (%s the rotating node %s)", s.From.Name, s.To.Name, dir, rotating)
	seqs := map[bool]string{true: ": seq " + netlab.Ranges(missing)}[len(missing) > 0]
	gap := longestRun(missing)
	t.Logf("%s: lost %d of %d datagrams (%.1f%%), longest gap %s%s", what, len(missing), count,
		100*float64(len(missing))/float64(count), time.Duration(gap)*interval, seqs)
	if limit := rekeyTimeout + rekeyJitter + time.Second; time.Duration(gap)*interval > limit {
		t.Errorf("%s: a delivery gap of %s across WireGuard key rotations exceeds one handshake retry (%s)%s",
			what, time.Duration(gap)*interval, limit, seqs)
	}
}

// longestRun is the length of the longest run of consecutive numbers in
// the ascending list seqs.
func longestRun(seqs []int) int {
	seqs = slices.Sorted(slices.Values(seqs))
	best, run := 0, 0
	for i, v := range seqs {
		if i > 0 && v == seqs[i-1]+1 {
			run++
		} else {
			run = 1
		}
		best = max(best, run)
	}
	return best
}
