package agent

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

// TestControlPlaneReplicasConfig: the replica list is validated up front
// with an error naming the bad entry, one address keeps working, and the
// single-address form takes a comma-separated list as the flag does.
func TestControlPlaneReplicasConfig(t *testing.T) {
	base := func() Config {
		return Config{NodeName: "node-a", Policy: cptest.Policy(t, cptest.GoodMeasurement), Provider: cptest.SimNode(t, sim.NodeConfig{}),
			StateDir: t.TempDir(), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), Logger: quiet}
	}
	for _, tc := range []struct {
		one  string
		list []string
		err  string
		want string
	}{
		{one: "cp:7443", want: "cp:7443"},
		{one: "cp-0:7443,cp-1:7443", want: "cp-0:7443 cp-1:7443"},
		{list: []string{"cp-0:7443", "cp-1:7443"}, want: "cp-0:7443 cp-1:7443"},
		{list: []string{"cp-0:7443", ""}, err: "control-plane address 2 is empty"},
		{one: "cp-0:7443,cp-1", err: `control-plane address 2 "cp-1": want HOST:PORT`},
		{one: "cp-0:7443", list: []string{"cp-1:7443"}, err: "not both"},
		{err: "ControlPlanes (or ControlPlane)"},
	} {
		cfg := base()
		cfg.ControlPlane, cfg.ControlPlanes = tc.one, tc.list
		a, err := New(cfg)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q %q: err %v, want %q", tc.one, tc.list, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q %q: %v", tc.one, tc.list, err)
			continue
		}
		if got := strings.Join(a.Status().ControlPlanes, " "); got != tc.want {
			t.Errorf("%q %q: replicas %q, want %q", tc.one, tc.list, got, tc.want)
		}
	}
}

// TestAgentFailsOverToAnotherReplica: the agent's control-plane calls go
// to the replica that worked last; when it dies they go to the next one,
// which status names, and the failover metric counts the move.
func TestAgentFailsOverToAnotherReplica(t *testing.T) {
	cp1 := cptest.Start(t, cptest.Options{})
	cp2 := cptest.Start(t, cptest.Options{})
	a, err := New(Config{NodeName: "node-a", ControlPlanes: []string{cp1.Addr, cp2.Addr}, Policy: cptest.Policy(t, cptest.GoodMeasurement),
		Provider: cptest.SimNode(t, sim.NodeConfig{}), StateDir: t.TempDir(), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st := a.Status(); st.ControlPlane != "" || st.ControlPlaneFailovers != 0 {
		t.Fatalf("before any call: replica %q failovers %d", st.ControlPlane, st.ControlPlaneFailovers)
	}
	conn, err := a.dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if st := a.Status(); st.ControlPlane != cp1.Addr || st.ControlPlaneFailovers != 0 {
		t.Fatalf("first call: replica %q failovers %d, want %s, 0", st.ControlPlane, st.ControlPlaneFailovers, cp1.Addr)
	}
	cp1.Stop()
	conn, err = a.dial(ctx)
	if err != nil {
		t.Fatalf("dial with the first replica dead: %v", err)
	}
	conn.Close()
	if st := a.Status(); st.ControlPlane != cp2.Addr || st.ControlPlaneFailovers != 1 {
		t.Fatalf("after the first replica died: replica %q failovers %d, want %s, 1", st.ControlPlane, st.ControlPlaneFailovers, cp2.Addr)
	}
	mfs, err := a.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got float64 = -1
	for _, mf := range mfs {
		if mf.GetName() == "confmesh_agent_controlplane_failovers_total" {
			got = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if got != 1 {
		t.Errorf("confmesh_agent_controlplane_failovers_total = %v, want 1", got)
	}
}
