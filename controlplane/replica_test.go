package controlplane_test

// Replicas: several control planes in one process on one memstore backend
// (standing in for the Kubernetes API), each serving over real gRPC.

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/controlplane/store/memstore"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// replicaSet is n control planes sharing one memstore backend.
type replicaSet struct {
	backend *memstore.Backend
	cps     []*cptest.ControlPlane
	stores  []*memstore.Store
}

// startReplicas starts n replicas; tune (if set) adjusts replica i's config.
func startReplicas(t *testing.T, n int, tune func(i int, cfg *controlplane.Config)) *replicaSet {
	t.Helper()
	rs := &replicaSet{backend: memstore.New()}
	for i := 0; i < n; i++ {
		rs.add(t, tune)
	}
	return rs
}

// add starts one more replica.
func (rs *replicaSet) add(t *testing.T, tune func(i int, cfg *controlplane.Config)) *cptest.ControlPlane {
	t.Helper()
	i, st := len(rs.cps), rs.backend.Open()
	o := cptest.Options{Store: st, SourceBurst: 1000, SourceRate: 1000}
	if tune != nil {
		o.Tune = func(cfg *controlplane.Config) { tune(i, cfg) }
	}
	c := cptest.Start(t, o)
	rs.cps = append(rs.cps, c)
	rs.stores = append(rs.stores, st)
	return c
}

func newAgent(t *testing.T, name string) *cptest.Agent {
	return cptest.NewAgent(t, name, cptest.SimNode(t, sim.NodeConfig{}), nil)
}

// metricValue reads an unlabelled gauge or counter.
func metricValue(t *testing.T, c *cptest.ControlPlane, name string) float64 {
	t.Helper()
	fams, err := c.Server.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name || len(f.GetMetric()) == 0 {
			continue
		}
		m := f.GetMetric()[0]
		if m.GetCounter() != nil {
			return m.GetCounter().GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// eventually polls cond until it holds or 10 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	within(t, 10*time.Second, what, cond)
}

func (w *watcher) snapshotEvents() ([]*cpv1.WatchEvent, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]*cpv1.WatchEvent(nil), w.events...), w.err
}

// describe renders events as "rev:kind:name" for comparisons and messages.
func describe(evs []*cpv1.WatchEvent) []string {
	var out []string
	for _, ev := range evs {
		s := ""
		switch e := ev.Event.(type) {
		case *cpv1.WatchEvent_Snapshot:
			s = "snapshot"
		case *cpv1.WatchEvent_Upsert:
			s = "upsert:" + e.Upsert.GetName()
		case *cpv1.WatchEvent_Delete:
			s = "delete:" + e.Delete
		default:
			s = "marker"
		}
		out = append(out, strconv.FormatUint(ev.Revision, 10)+":"+s)
	}
	return out
}

func upsertRevision(evs []*cpv1.WatchEvent, name string) uint64 {
	for _, ev := range evs {
		if ev.GetUpsert().GetName() == name {
			return ev.Revision
		}
	}
	return 0
}

// TestReplicasShareThePeerSet: a node that joins on replica A appears in
// a watch on replica B, at the same revision on both; revisions are
// sparse; and a join answers only once the replica serves its own write
// (bounded by StoreWait).
func TestReplicasShareThePeerSet(t *testing.T) {
	const storeWait = time.Second
	rs := startReplicas(t, 2, func(_ int, cfg *controlplane.Config) { cfg.StoreWait = storeWait })
	a, b, stA := rs.cps[0], rs.cps[1], rs.stores[0]
	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, a)
	y.Join(t, b)
	wy := watch(t, y.MTLS(t, b), 0)
	wy.waitFor(t, "node-x (joined on A) in the snapshot on B", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-x"] != nil })
	wx := watch(t, x.MTLS(t, a), 0)
	wx.waitFor(t, "node-y (joined on B) in the snapshot on A", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-y"] != nil })

	// A's watch lags 200 ms: the join answers only after A has its own
	// write, and a watch opened on A right then starts with z.
	z := newAgent(t, "node-z")
	stA.HoldWatch()
	// start before the timer: a descheduled test must not see less than the lag.
	start := time.Now()
	time.AfterFunc(200*time.Millisecond, stA.ReleaseWatch) // the lag under test
	z.Join(t, a)
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("join answered after %s, before the replica's watch brought the write back", d)
	}
	fresh := watch(t, y.MTLS(t, a), 0)
	fresh.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	if evs, _ := fresh.snapshotEvents(); evs[0].GetSnapshot() == nil || peers(evs[:1])["node-z"] == nil {
		t.Fatalf("watch opened on A after node-z's join returned starts with %v; want a snapshot with node-z", describe(evs))
	}
	for _, w := range []*watcher{wx, wy} {
		w.waitFor(t, "node-z's upsert", func(evs []*cpv1.WatchEvent, _ error) bool { return upsertRevision(evs, "node-z") != 0 })
	}
	ex, _ := wx.snapshotEvents()
	ey, _ := wy.snapshotEvents()
	ra, rb := upsertRevision(ex, "node-z"), upsertRevision(ey, "node-z")
	if ra != rb {
		t.Fatalf("node-z's upsert at revision %d on A and %d on B; replicas must agree", ra, rb)
	}
	if prev := ex[len(ex)-2].Revision; ra <= prev+1 {
		t.Fatalf("revisions %d then %d: the memstore's revisions should be sparse", prev, ra)
	}
	eventually(t, "both replicas at the same revision", func() bool {
		return metricValue(t, a, "confmesh_controlplane_revision") == metricValue(t, b, "confmesh_controlplane_revision")
	})

	// A's watch does not bring the write back within StoreWait: the join
	// is stored but answered with Unavailable (the agent retries).
	stA.HoldWatch()
	start = time.Now()
	_, err := newAgent(t, "node-late").TryJoin(t, a)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "has not seen it") || time.Since(start) < storeWait {
		t.Fatalf("join while A's watch is held: %v after %s; want Unavailable after %s", err, time.Since(start), storeWait)
	}
	stA.ReleaseWatch()
	wy.waitFor(t, "the late node on B all the same", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-late"] != nil })
}

// TestWatchResumesOnAnotherReplica: an agent whose watch on A ended at
// revision R resumes on B (started after R, so its log begins there and
// the next revision is R plus more than one) and receives exactly the
// deltas it missed (the same a watcher that stayed on A got), no snapshot.
func TestWatchResumesOnAnotherReplica(t *testing.T) {
	rs := startReplicas(t, 1, nil)
	a := rs.cps[0]
	x, y, v := newAgent(t, "node-x"), newAgent(t, "node-y"), newAgent(t, "node-v")
	x.Join(t, a)
	y.Join(t, a)
	v.Join(t, a)
	wy := watch(t, y.MTLS(t, a), 0)
	wy.waitFor(t, "snapshot with x and v", func(evs []*cpv1.WatchEvent, _ error) bool {
		return peers(evs)["node-x"] != nil && peers(evs)["node-v"] != nil
	})
	evs, _ := wy.snapshotEvents()
	from := lastRevision(evs)
	wy.cancel()
	<-wy.done
	ref := watch(t, v.MTLS(t, a), from) // stays on A throughout
	b := rs.add(t, nil)

	// What y misses, written on both replicas.
	z, w := newAgent(t, "node-z"), newAgent(t, "node-w")
	z.Join(t, b)
	if _, err := b.AdminClient(t).RemoveNode(ctxT(t), &cpv1.RemoveNodeRequest{Name: "node-x"}); err != nil {
		t.Fatal(err)
	}
	w.Join(t, a)
	ref.waitFor(t, "three deltas on A", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) >= 3 })

	resumed := watch(t, y.MTLS(t, b), from)
	resumed.waitFor(t, "three deltas on B", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) >= 3 })
	got, _ := resumed.snapshotEvents()
	want, _ := ref.snapshotEvents()
	g, wnt := strings.Join(describe(got), " "), strings.Join(describe(want), " ")
	if g != wnt {
		t.Fatalf("resumed on B from %d: %s\nwant what A sent: %s", from, g, wnt)
	}
	if !strings.Contains(g, "upsert:node-z") || !strings.Contains(g, "delete:node-x") || !strings.Contains(g, "upsert:node-w") || strings.Contains(g, "snapshot") {
		t.Fatalf("resumed on B: %s; want z's and w's upserts and x's delete, no snapshot", g)
	}
}

// TestWatchAheadOfReplica: an agent resuming on B from a revision it saw
// on A that B has not reached yet gets the deltas once B catches up
// within StoreWait, else a snapshot (and the rest when B catches up).
func TestWatchAheadOfReplica(t *testing.T) {
	const storeWait = 500 * time.Millisecond
	rs := startReplicas(t, 2, func(_ int, cfg *controlplane.Config) { cfg.StoreWait = storeWait })
	a, b, stB := rs.cps[0], rs.cps[1], rs.stores[1]
	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, a)
	y.Join(t, a)
	wy := watch(t, y.MTLS(t, a), 0)
	wy.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-x"] != nil })

	// B lags: it catches up 100 ms into the resumed watch's wait.
	stB.HoldWatch()
	newAgent(t, "node-u").Join(t, a)
	wy.waitFor(t, "node-u on A", func(evs []*cpv1.WatchEvent, _ error) bool { return upsertRevision(evs, "node-u") != 0 })
	evs, _ := wy.snapshotEvents()
	ahead := lastRevision(evs)
	time.AfterFunc(100*time.Millisecond, stB.ReleaseWatch) // the lag under test, not a wait for a condition
	onB := watch(t, y.MTLS(t, b), ahead)
	newAgent(t, "node-v").Join(t, a)
	onB.waitFor(t, "node-v on B", func(evs []*cpv1.WatchEvent, _ error) bool { return upsertRevision(evs, "node-v") != 0 })
	got, _ := onB.snapshotEvents()
	if d := describe(got); len(d) != 1 || !strings.HasSuffix(d[0], "upsert:node-v") {
		t.Fatalf("resumed on B from %d (B caught up within the wait): %v; want only node-v's upsert", ahead, d)
	}

	// B lags longer than StoreWait: a snapshot of what B has, then the rest.
	stB.HoldWatch()
	newAgent(t, "node-q").Join(t, a)
	wy.waitFor(t, "node-q on A", func(evs []*cpv1.WatchEvent, _ error) bool { return upsertRevision(evs, "node-q") != 0 })
	evs, _ = wy.snapshotEvents()
	ahead = lastRevision(evs)
	start := time.Now()
	late := watch(t, y.MTLS(t, b), ahead)
	late.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	if waited := time.Since(start); waited < storeWait {
		t.Fatalf("snapshot after %s; B should wait %s for its watch to catch up", waited, storeWait)
	}
	got, _ = late.snapshotEvents()
	if got[0].GetSnapshot() == nil || got[0].Revision >= ahead || peers(got)["node-q"] != nil || peers(got)["node-v"] == nil {
		t.Fatalf("resumed on a lagging B from %d: %v; want a snapshot at B's older revision", ahead, describe(got))
	}
	stB.ReleaseWatch()
	late.waitFor(t, "node-q once B catches up", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-q"] != nil })
}

// TestRevocationOnOneReplicaEndsStreamOnAnother: a node revoked through
// B's admin API loses its stream on A, and A's other watchers see it go.
func TestRevocationOnOneReplicaEndsStreamOnAnother(t *testing.T) {
	rs := startReplicas(t, 2, nil)
	a, b := rs.cps[0], rs.cps[1]
	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, a)
	y.Join(t, b)
	wx := watch(t, x.MTLS(t, a), 0)
	wy := watch(t, y.MTLS(t, a), 0)
	wy.waitFor(t, "node-x present", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-x"] != nil })
	wx.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	if _, err := b.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-x"}); err != nil {
		t.Fatal(err)
	}
	wx.waitFor(t, "revoked node's stream on A ends", func(_ []*cpv1.WatchEvent, err error) bool { return status.Code(err) == codes.PermissionDenied })
	wy.waitFor(t, "node-x deleted on A", func(evs []*cpv1.WatchEvent, _ error) bool {
		return peers(evs)["node-x"] == nil && evs[len(evs)-1].GetDelete() == "node-x"
	})
	x.Name = "node-x2"
	if _, err := x.TryJoin(t, a); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked chip joining A under another name: %v", err)
	}
}

// TestReplicaWithoutStoreFailsClosed: a replica cut off its store keeps
// its watches for StaleWatchLimit but refuses joins after StoreSyncGrace
// (Unavailable, /readyz 503), ends its watches at the limit, refuses new
// ones, and serves again once the store is back; the other replica
// carries on throughout.
func TestReplicaWithoutStoreFailsClosed(t *testing.T) {
	const grace, limit = 300 * time.Millisecond, 1500 * time.Millisecond
	rs := startReplicas(t, 2, func(i int, cfg *controlplane.Config) {
		cfg.StoreSyncGrace, cfg.StaleWatchLimit = grace, limit
	})
	a, b, stA := rs.cps[0], rs.cps[1], rs.stores[0]
	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, a)
	y.Join(t, a)
	wx := watch(t, x.MTLS(t, a), 0)
	wx.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-y"] != nil })
	readyz := func() (int, string) { return readyzOf(t, a) }
	if code, body := readyz(); code != 200 {
		t.Fatalf("/readyz %d %s before the cut", code, body)
	}

	cut := time.Now()
	stA.Cut()
	eventually(t, "/readyz failing", func() bool { code, _ := readyz(); return code == http.StatusServiceUnavailable })
	if d := time.Since(cut); d < grace {
		t.Fatalf("/readyz failed %s after the cut, before the grace of %s", d, grace)
	}
	if _, body := readyz(); !strings.Contains(body, "lost its store") {
		t.Errorf("/readyz body %q does not name the reason", body)
	}
	n := newAgent(t, "node-n")
	_, err := n.TryJoin(t, a)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "lost its store") || !strings.Contains(err.Error(), "admits no joins") {
		t.Fatalf("join on the cut replica: %v; want Unavailable naming the lost store", err)
	}
	if _, err := y.MTLS(t, a).Renew(ctxT(t), y.NodeSpec(), nil); status.Code(err) != codes.Unavailable {
		t.Fatalf("renewal on the cut replica: %v; want Unavailable", err)
	}
	if v := metricValue(t, a, "confmesh_controlplane_store_synced"); v != 0 {
		t.Errorf("store_synced %v on the cut replica", v)
	}
	if _, werr := wx.snapshotEvents(); werr != nil && time.Since(cut) < limit {
		t.Fatalf("watch on the cut replica ended before the limit: %v", werr)
	}
	n.Join(t, b) // the other replica admits

	wx.waitFor(t, "watch ends at the stale limit", func(_ []*cpv1.WatchEvent, err error) bool {
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), "lost its store")
	})
	if d := time.Since(cut); d < limit {
		t.Fatalf("watch ended %s after the cut, before the limit %s", d, limit)
	}
	evs, _ := wx.snapshotEvents()
	from := lastRevision(evs)
	refused := watch(t, x.MTLS(t, a), from)
	refused.waitFor(t, "new watch refused", func(_ []*cpv1.WatchEvent, err error) bool { return status.Code(err) == codes.Unavailable })

	stA.Restore()
	eventually(t, "/readyz again", func() bool { code, _ := readyz(); return code == 200 })
	back := watch(t, x.MTLS(t, a), from)
	back.waitFor(t, "node-n (joined on B meanwhile) on A", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-n"] != nil })
	if got, _ := back.snapshotEvents(); peers(got)["node-y"] == nil {
		t.Fatalf("resumed on A after the outage: %v; node-y is still in the store", describe(got))
	}
	newAgent(t, "node-m").Join(t, a)
	if v := metricValue(t, a, "confmesh_controlplane_store_watch_breaks_total"); v != 1 {
		t.Errorf("store_watch_breaks_total %v, want 1", v)
	}
}

// TestRelistSendsTheDifference: when a replica's store watch breaks and it
// lists again, its open watches get the changes they missed as deltas
// (never a delete of a peer still in the store) and then the new revision.
func TestRelistSendsTheDifference(t *testing.T) {
	rs := startReplicas(t, 2, nil)
	a, b, stA := rs.cps[0], rs.cps[1], rs.stores[0]
	x, y, v := newAgent(t, "node-x"), newAgent(t, "node-y"), newAgent(t, "node-v")
	for _, ag := range []*cptest.Agent{x, y, v} {
		ag.Join(t, a)
	}
	wx := watch(t, x.MTLS(t, a), 0)
	wx.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-v"] != nil })
	before, _ := wx.snapshotEvents()
	oldRev := lastRevision(before)

	stA.HoldWatch()
	newAgent(t, "node-z").Join(t, b)
	if _, err := b.AdminClient(t).RemoveNode(ctxT(t), &cpv1.RemoveNodeRequest{Name: "node-v"}); err != nil {
		t.Fatal(err)
	}
	stA.BreakWatch() // the held changes are lost with the watch: A lists again
	stA.ReleaseWatch()
	wx.waitFor(t, "the difference", func(evs []*cpv1.WatchEvent, _ error) bool {
		return peers(evs)["node-z"] != nil && peers(evs)["node-v"] == nil && lastRevision(evs) > oldRev
	})
	evs, _ := wx.snapshotEvents()
	after := evs[len(before):]
	d := describe(after)
	if len(after) != 3 || after[2].Event != nil || after[2].Revision <= oldRev {
		t.Fatalf("after the relist: %v; want two deltas at %d and a marker at the new revision", d, oldRev)
	}
	for _, ev := range after[:2] {
		if ev.Revision != oldRev || ev.GetSnapshot() != nil || ev.GetDelete() == "node-y" {
			t.Fatalf("after the relist: %v; want z's upsert and v's delete at %d", d, oldRev)
		}
	}
	if v := metricValue(t, a, "confmesh_controlplane_revision"); uint64(v) != after[2].Revision {
		t.Errorf("A's revision %v, marker %d", v, after[2].Revision)
	}
}

// TestSweepRunsOnOneReplicaAtATime: only the lease holder sweeps; when it
// loses the store, the other replica takes over.
func TestSweepRunsOnOneReplicaAtATime(t *testing.T) {
	rs := startReplicas(t, 2, func(_ int, cfg *controlplane.Config) { cfg.SweepInterval = 20 * time.Millisecond })
	var leader, other int
	eventually(t, "a leader", func() bool { return rs.backend.Leader() != nil })
	if rs.backend.Leader() == rs.stores[1] {
		leader, other = 1, 0
	} else {
		other = 1
	}
	sweeps := func(i int) float64 { return metricValue(t, rs.cps[i], "confmesh_controlplane_sweeps_total") }
	base := sweeps(leader)
	eventually(t, "the leader sweeping", func() bool { return sweeps(leader) >= base+5 })
	if s := sweeps(other); s != 0 {
		t.Fatalf("the replica without the lease swept %v times", s)
	}
	if metricValue(t, rs.cps[leader], "confmesh_controlplane_leader") != 1 || metricValue(t, rs.cps[other], "confmesh_controlplane_leader") != 0 {
		t.Fatal("leader gauges do not show one leader")
	}

	rs.stores[leader].Cut()
	eventually(t, "the other replica leading", func() bool { return rs.backend.Leader() == rs.stores[other] })
	stopped := sweeps(leader)
	eventually(t, "the new leader sweeping", func() bool { return sweeps(other) >= 5 })
	if s := sweeps(leader); s != stopped {
		t.Fatalf("the cut replica swept on (%v -> %v) after losing the lease", stopped, s)
	}
	if metricValue(t, rs.cps[leader], "confmesh_controlplane_leader") != 0 {
		t.Fatal("the cut replica still reports itself leader")
	}
}
