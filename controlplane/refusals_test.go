package controlplane_test

import (
	"fmt"
	"strings"
	"testing"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/status"
)

// TestNodesAllListsRevokedAndRefused (issue 9, item 8): refusals carry
// their reason as an ErrorInfo (so an agent can tell "revoked" from any
// other refusal); ListNodes with all lists a revoked node and the refused
// joins (one entry per claimed name, with a count and the latest time),
// the node gauge counts both, and a flood of refused joins under fresh
// names leaves at most 256 entries.
func TestNodesAllListsRevokedAndRefused(t *testing.T) {
	// The refusal flood below comes from one address: lift the per-source limit.
	c := cptest.Start(t, cptest.Options{SourceRate: 1000, SourceBurst: 1000})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	_, err := a.TryJoin(t, c)
	if reason, ok := cpv1.RefusalReason(status.Convert(err)); !ok || reason != cpv1.ReasonRevoked {
		t.Fatalf("join of a revoked node: %v (reason %q %v), want the reason %q attached", err, reason, ok, cpv1.ReasonRevoked)
	}
	rogue := cptest.NewAgent(t, "node-r", cptest.SimNode(t, sim.NodeConfig{Debug: true}), nil)
	for range 2 {
		_, err := rogue.TryJoin(t, c)
		if reason, _ := cpv1.RefusalReason(status.Convert(err)); reason != "debug" {
			t.Fatalf("debug guest join: %v (reason %q), want reason debug", err, reason)
		}
	}

	list := func(all bool) map[string][]*cpv1.Node {
		resp, err := c.AdminClient(t).ListNodes(ctxT(t), &cpv1.ListNodesRequest{All: all})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][]*cpv1.Node{}
		for _, n := range resp.GetNodes() {
			out[n.GetName()] = append(out[n.GetName()], n)
		}
		return out
	}
	if got := list(false); len(got) != 0 {
		t.Errorf("ListNodes without all: %v, want nothing (the only node was revoked)", got)
	}
	all := list(true)
	byState := func(name, state string) *cpv1.Node {
		for _, n := range all[name] {
			if n.GetState() == state {
				return n
			}
		}
		return nil
	}
	if n := byState("node-a", "revoked"); n == nil || n.GetSince() == nil || len(n.GetWireguardPublicKey()) == 0 {
		t.Errorf("node-a: %v, want a revoked entry with its time and key", all["node-a"])
	}
	if n := byState("node-a", "refused"); n == nil || n.GetRefusals() != 1 || !strings.Contains(n.GetReason(), "revoked") {
		t.Errorf("node-a's refused re-join: %v, want one refusal naming the revocation", all["node-a"])
	}
	if n := byState("node-r", "refused"); n == nil || n.GetRefusals() != 2 || !strings.Contains(n.GetReason(), "debug") || n.GetSince() == nil {
		t.Errorf("node-r: %v, want refused twice, naming debug, with a time", all["node-r"])
	}
	for state, want := range map[string]float64{"revoked": 1, "refused": 2} {
		if got := nodeGauge(t, c, state); got != want {
			t.Errorf("confmesh_controlplane_nodes{state=%q} = %v, want %v", state, got, want)
		}
	}

	// Refused joins under 300 fresh names: the record stays bounded.
	conn, err := rogue.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range 300 {
		spec := rogue.NodeSpec()
		spec.Name = fmt.Sprintf("flood-%03d", i)
		if _, err := conn.Join(ctxT(t), spec); err == nil {
			t.Fatalf("join %s of a debug guest succeeded", spec.Name)
		}
	}
	refused := 0
	for _, ns := range list(true) {
		for _, n := range ns {
			if n.GetState() == "refused" {
				refused++
			}
		}
	}
	if refused > 256 || refused < 200 {
		t.Errorf("%d refused entries after a flood of 300 names, want at most 256 (and the recent ones kept)", refused)
	}
	t.Logf("refused entries after refused joins under 302 names: %d", refused)
}

// nodeGauge reads confmesh_controlplane_nodes{state=state}.
func nodeGauge(t *testing.T, c *cptest.ControlPlane, state string) float64 {
	t.Helper()
	fams, err := c.Server.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "confmesh_controlplane_nodes" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no confmesh_controlplane_nodes{state=%q}", state)
	return 0
}
