package controlplane_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSameChipNameTakeoverRefused: a second approved VM on the same chip
// (same chip ID, its own keys) joins under an active node's name. It must be
// refused while the node's SVID is valid, with a reason naming the node, the
// expiry and `confmesh nodes remove`; the holder keeps its SVID, pod CIDR
// and place in the peer set.
func TestSameChipNameTakeoverRefused(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	chip := bytes.Repeat([]byte{0xc1}, 64)
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: chip}), nil)
	first := a.Join(t, c)

	thief := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: chip}), nil)
	_, err := thief.TryJoin(t, c)
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("join under an active node's name from the same chip with other keys: err = %v, want AlreadyExists", err)
	}
	for _, want := range []string{`"node-a"`, "until", "confmesh nodes remove node-a"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not mention %q", err, want)
		}
	}
	rec, err := c.Store.GetNode("node-a")
	if err != nil || !bytes.Equal(rec.WireGuardKey, a.WGKey) || rec.PodCIDR != first.PodCidr {
		t.Fatalf("the holder's record changed: %+v (err %v)", rec, err)
	}
}
