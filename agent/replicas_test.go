package agent

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/controlplane/store/memstore"
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

// joinWithoutDevice joins through the agent's replicas and adopts the
// SVID as join does, without the strict rules and WireGuard device that
// need root.
func joinWithoutDevice(t *testing.T, a *Agent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var resp *cpv1.JoinResponse
	conn, err := a.call(ctx, func(ctx context.Context, c *cpclient.Conn) error {
		var err error
		resp, err = c.Join(ctx, a.nodeSpec())
		return err
	})
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	conn.Close()
	if err := a.adopt(resp.GetSvid(), resp.GetTrustBundle()); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.podCIDR = netip.MustParsePrefix(resp.GetPodCidr())
	a.joined = true
	a.setStateLocked(StateActive, "")
	a.mu.Unlock()
}

// TestWatchResumesOnAnotherReplica: two control-plane replicas on one
// shared store (memstore: sparse revisions, asynchronous watches). The
// agent watches through replica 1; replica 1 stops; the agent's watch
// moves to replica 2, resuming from the last revision it saw, and a node
// that joins through replica 2 afterwards reaches it. The peers it had
// stay (the failover alone changes no record), and it ends at the
// store's revision.
func TestWatchResumesOnAnotherReplica(t *testing.T) {
	backend := memstore.New()
	cp1 := cptest.Start(t, cptest.Options{Store: backend.Open()})
	cp2 := cptest.Start(t, cptest.Options{Store: backend.Open()})
	a, err := New(Config{NodeName: "node-a", ControlPlanes: []string{cp1.Addr, cp2.Addr}, Policy: cptest.Policy(t, cptest.GoodMeasurement),
		Provider: cptest.SimNode(t, sim.NodeConfig{}), StateDir: t.TempDir(), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	joinWithoutDevice(t, a)
	cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil).Join(t, cp1)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.watchLoop(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	has := func(want ...string) func() error {
		return func() error {
			a.mu.Lock()
			defer a.mu.Unlock()
			for _, n := range want {
				if _, ok := a.records[n]; !ok {
					return fmt.Errorf("no record of %s (revision %d, %d records)", n, a.revision, len(a.records))
				}
			}
			return nil
		}
	}
	waitFor(t, watchLimit, has("node-b"))
	if a.replicas.Current() != cp1.Addr {
		t.Fatalf("watching through %q, want %s", a.replicas.Current(), cp1.Addr)
	}
	a.mu.Lock()
	before := a.revision
	a.mu.Unlock()

	cp1.Stop()
	cptest.NewAgent(t, "node-c", cptest.SimNode(t, sim.NodeConfig{}), nil).Join(t, cp2)
	waitFor(t, watchLimit, has("node-b", "node-c"))
	rev, err := cp2.Store.Revision()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, watchLimit, func() error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.revision != rev {
			return fmt.Errorf("agent at revision %d, store at %d", a.revision, rev)
		}
		return nil
	})
	if a.revision <= before {
		t.Errorf("revision %d after the failover, %d before", a.revision, before)
	}
	if st := a.Status(); st.ControlPlane != cp2.Addr || st.ControlPlaneFailovers != 1 {
		t.Errorf("status: replica %q failovers %d, want %s, 1", st.ControlPlane, st.ControlPlaneFailovers, cp2.Addr)
	}
}

// watchLimit bounds how long a watch event may take to reach the agent,
// failover included: sized for a loaded 2-core CI machine.
const watchLimit = 30 * time.Second

// waitFor polls f until it returns nil or limit passes.
func waitFor(t *testing.T, limit time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
