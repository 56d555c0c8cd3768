package memstore

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

func node(name string) *store.NodeRecord {
	return &store.NodeRecord{Name: name, WireGuardKey: []byte("wg-" + name), ChipID: []byte("chip-" + name), State: store.StateActive}
}

// watcher records what one WatchNodes call delivers.
type watcher struct {
	mu      sync.Mutex
	syncs   int
	syncRev uint64
	nodes   map[string]*store.NodeRecord
	changes []store.Change
	done    chan error
}

func startWatch(t *testing.T, s *Store) (*watcher, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{done: make(chan error, 1)}
	go func() {
		w.done <- s.WatchNodes(ctx, func(nodes []*store.NodeRecord, rev uint64) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.syncs++
			w.syncRev = rev
			w.nodes = map[string]*store.NodeRecord{}
			for _, n := range nodes {
				w.nodes[n.Name] = n
			}
		}, func(c store.Change) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.changes = append(w.changes, c)
		}, func(uint64) {})
	}()
	t.Cleanup(cancel)
	return w, cancel
}

func (w *watcher) waitSync(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		n := w.syncs
		w.mu.Unlock()
		if n > 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("timed out waiting for the list")
}

func (w *watcher) waitChanges(t *testing.T, n int) []store.Change {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		if len(w.changes) >= n {
			out := append([]store.Change(nil), w.changes...)
			w.mu.Unlock()
			return out
		}
		w.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("timed out waiting for %d changes", n)
	return nil
}

// TestRevisionsSparseAndShared: every write advances the revision by more
// than one (pod and secret writes too), and both replicas' watches see the
// same changes with the same revisions in the same order, their own
// writes included.
func TestRevisionsSparseAndShared(t *testing.T) {
	b := New()
	a, c := b.Open(), b.Open()
	if _, err := a.PutNode(node("n0")); err != nil {
		t.Fatal(err)
	}
	wa, _ := startWatch(t, a)
	wc, _ := startWatch(t, c)
	wa.waitSync(t)
	wc.waitSync(t)
	if len(wa.nodes) != 1 || wa.nodes["n0"] == nil {
		t.Fatalf("sync listed %v, want n0", wa.nodes)
	}
	prev, _ := a.Revision()
	var revs []uint64
	step := func(what string, rev uint64, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if rev < prev+2 {
			t.Fatalf("%s: revision %d after %d, want a step of at least 2", what, rev, prev)
		}
		prev = rev
		revs = append(revs, rev)
	}
	rev, err := a.PutNode(node("n1"))
	step("put on a", rev, err)
	rev, err = c.PutNode(node("n2"))
	step("put on c", rev, err)
	before, _ := a.Revision()
	if err := c.PutPod(&store.PodRecord{UID: "p", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	if after, _ := a.Revision(); after < before+2 {
		t.Fatalf("pod write moved the revision from %d to %d, want a step of at least 2", before, after)
	}
	prev, _ = a.Revision()
	rev, err = c.DeleteNode("n1")
	step("delete on c", rev, err)
	if _, err := a.GetPod("p"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pod of a deleted node: %v, want not found", err)
	}
	_, rev, err = a.RevokeNode("n2", time.Now())
	step("revoke on a", rev, err)
	if _, ok, _ := c.Revoked([]byte("chip-n2")); !ok {
		t.Fatal("revocation not visible on the other replica")
	}
	for _, w := range []*watcher{wa, wc} {
		got := w.waitChanges(t, 4)
		for i, ch := range got {
			if ch.Revision != revs[i] {
				t.Fatalf("change %d at revision %d, want %d", i, ch.Revision, revs[i])
			}
		}
		if got[0].Node == nil || got[0].Node.Name != "n1" || got[1].Node.Name != "n2" || got[2].Deleted != "n1" || got[3].Deleted != "n2" {
			t.Fatalf("changes %+v", got)
		}
	}
	if _, err := a.DeleteNode("n1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of an absent node: %v, want not found", err)
	}
	if r, _ := a.Revision(); r != prev {
		t.Fatalf("a failed delete moved the revision to %d from %d", r, prev)
	}
}

// TestCutAndBreak: a cut store fails every call and loses its watch, the
// other replica carries on; after Restore a new watch relists.
func TestCutAndBreak(t *testing.T) {
	b := New()
	a, c := b.Open(), b.Open()
	wa, _ := startWatch(t, a)
	a.Cut()
	select {
	case err := <-wa.done:
		if err == nil {
			t.Fatal("cut watch ended without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cut did not end the watch")
	}
	if _, err := a.PutNode(node("x")); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("put on a cut store: %v, want ErrUnreachable", err)
	}
	if err := a.WatchNodes(context.Background(), func([]*store.NodeRecord, uint64) {}, func(store.Change) {}, func(uint64) {}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("watch on a cut store: %v", err)
	}
	if _, err := c.PutNode(node("y")); err != nil {
		t.Fatalf("the other replica: %v", err)
	}
	a.Restore()
	w2, _ := startWatch(t, a)
	w2.waitSync(t)
	if _, err := c.PutNode(node("z")); err != nil {
		t.Fatal(err)
	}
	w2.waitChanges(t, 1)
	w2.mu.Lock()
	if w2.nodes["y"] == nil {
		t.Fatalf("relist after restore lacks y: %v", w2.nodes)
	}
	w2.mu.Unlock()
	a.BreakWatch()
	select {
	case err := <-w2.done:
		if !errors.Is(err, errWatchBroken) {
			t.Fatalf("broken watch: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("BreakWatch did not end the watch")
	}
}

// TestLeadExclusive: one replica leads at a time; cutting the leader ends
// its fn and the other takes over only after it returned.
func TestLeadExclusive(t *testing.T) {
	b := New()
	a, c := b.Open(), b.Open()
	var running, overlaps atomic.Int32
	led := map[*Store]*atomic.Int32{a: {}, c: {}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range []*Store{a, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = s.Lead(ctx, func(lctx context.Context) {
				if running.Add(1) > 1 {
					overlaps.Add(1)
				}
				led[s].Add(1)
				<-lctx.Done()
				time.Sleep(5 * time.Millisecond) // still winding down: the other must wait
				running.Add(-1)
			})
		}()
	}
	first := waitLeader(t, b, nil)
	first.Cut()
	second := waitLeader(t, b, first)
	if second == first {
		t.Fatal("the cut store still leads")
	}
	first.Restore()
	second.Cut()
	if third := waitLeader(t, b, second); third != first {
		t.Fatalf("lease went to %p, want the restored store %p", third, first)
	}
	cancel()
	wg.Wait()
	if overlaps.Load() != 0 {
		t.Fatalf("%d times two replicas led at once", overlaps.Load())
	}
	if led[a].Load() == 0 || led[c].Load() == 0 {
		t.Fatalf("leads: a %d, c %d; want both", led[a].Load(), led[c].Load())
	}
}

func waitLeader(t *testing.T, b *Backend, not *Store) *Store {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if l := b.Leader(); l != nil && l != not {
			return l
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no leader")
	return nil
}
