package controlplane_test

import (
	"bytes"
	"strings"
	"testing"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSameChipNameTakeoverRefused: a second approved VM on the same chip
// (same chip ID, its own keys) joins under an active node's name. It must be
// refused while the node's SVID is valid, with a reason naming the node, the
// expiry and `confmesh nodes remove`; the holder keeps its SVID, pod CIDR
// and place in the peer set. The holder itself re-joins (agent restart, same
// identity key) and renews with a new WireGuard key. Once an operator
// removes the holder, the other VM may take the name, and the old SVID
// speaks for nothing.
func TestSameChipNameTakeoverRefused(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	chip := bytes.Repeat([]byte{0xc1}, 64)
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: chip}), nil)
	first := a.Join(t, c)
	b := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil)
	b.Join(t, c)
	wb := watch(t, b.MTLS(t, c), 0)

	thief := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: chip}), nil)
	_, err := thief.TryJoin(t, c)
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("join under an active node's name from the same chip with other keys: err = %v, want AlreadyExists", err)
	}
	for _, want := range []string{`"node-a"`, "until", "confmesh nodes remove node-a", "same chip"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not mention %q", err, want)
		}
	}
	rec, err := c.Store.GetNode("node-a")
	if err != nil || !bytes.Equal(rec.WireGuardKey, a.WGKey) || rec.PodCIDR != first.PodCidr {
		t.Fatalf("the holder's record changed: %+v (err %v)", rec, err)
	}

	// The holder restarts (same identity key, same chip): it keeps its name
	// and pod CIDR.
	again := a.Join(t, c)
	if again.PodCidr != first.PodCidr {
		t.Fatalf("re-join moved the pod CIDR from %s to %s", first.PodCidr, again.PodCidr)
	}
	// And renews with a new WireGuard key.
	newKey := bytes.Repeat([]byte{0x7e}, 32)
	resp, err := a.MTLS(t, c).Renew(ctxT(t), a.NodeSpec(), newKey)
	if err != nil {
		t.Fatalf("renewal with key rotation: %v", err)
	}
	a.WGKey, a.SVID = newKey, resp.Svid
	wb.waitFor(t, "node-a with its new key", func(evs []*cpv1.WatchEvent, _ error) bool {
		p := peers(evs)["node-a"]
		return p != nil && bytes.Equal(p.WireguardPublicKey, newKey)
	})
	if _, err := thief.TryJoin(t, c); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("takeover after the holder renewed: err = %v, want AlreadyExists", err)
	}

	// The operator removes node-a (not revoke: the chip stays allowed).
	admin := c.AdminClient(t)
	if _, err := admin.RemoveNode(ctxT(t), &cpv1.RemoveNodeRequest{Name: "node-x"}); status.Code(err) != codes.NotFound {
		t.Fatalf("remove of an unknown node: err = %v, want NotFound", err)
	}
	if _, err := admin.RemoveNode(ctxT(t), &cpv1.RemoveNodeRequest{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	wb.waitFor(t, "node-a removed", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-a"] == nil })
	thief.Join(t, c)
	if revs, _ := c.Store.ListRevocations(); len(revs) != 0 {
		t.Fatalf("remove recorded revocations: %+v", revs)
	}
	// The removed node's SVID does not speak for the new holder.
	stream, err := a.MTLS(t, c).Client.Watch(ctxT(t), &cpv1.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("old SVID after removal and takeover: err = %v, want PermissionDenied", err)
	}
	// Now node-a's former VM is the one refused, by the same rule.
	if _, err := a.TryJoin(t, c); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("former holder joining over the new one: err = %v, want AlreadyExists", err)
	}
}
