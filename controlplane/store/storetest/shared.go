package storetest

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

// Replicas returns two instances of one empty shared store, as two
// control-plane replicas use it; the test's cleanup closes them.
type Replicas func(t *testing.T) (a, b store.Shared)

// RunShared runs the store.Shared contract: two replicas writing at once,
// watches on both seeing one history, a watch started on the other replica,
// and the leader lease.
func RunShared(t *testing.T, open Replicas, opt Options) {
	t.Run("ConflictingWritesTwoReplicas", func(t *testing.T) {
		a, b := open(t)
		// Both create the same name: one wins.
		errs := concurrently(
			func() error { _, err := a.PutNodeIf(Node("n", "10.244.1.0/24"), 0); return err },
			func() error { _, err := b.PutNodeIf(Node("n", "10.244.2.0/24"), 0); return err })
		if !oneWins(errs) {
			t.Fatalf("both replicas created node n: %v", errs)
		}
		// Both update it from the revision they read: one wins.
		cur, err := a.GetNode("n")
		if err != nil {
			t.Fatal(err)
		}
		viaB, err := b.GetNode("n")
		if err != nil || viaB.Revision != cur.Revision {
			t.Fatalf("replicas disagree on the revision: %d and %+v, %v", cur.Revision, viaB, err)
		}
		m1, m2 := *cur, *cur
		m1.Endpoint, m2.Endpoint = "198.18.0.11:51820", "198.18.0.12:51820"
		errs = concurrently(
			func() error { _, err := a.PutNodeIf(&m1, cur.Revision); return err },
			func() error { _, err := b.PutNodeIf(&m2, cur.Revision); return err })
		if !oneWins(errs) {
			t.Fatalf("both replicas updated node n from revision %d: %v", cur.Revision, errs)
		}
		got, _ := b.GetNode("n")
		if got.Endpoint != m1.Endpoint && got.Endpoint != m2.Endpoint {
			t.Fatalf("stored endpoint %q is neither write's", got.Endpoint)
		}
		if opt.UniquePodCIDR {
			// Two nodes, one CIDR, two replicas: one wins.
			errs = concurrently(
				func() error { _, err := a.PutNodeIf(Node("x", "10.244.7.0/24"), 0); return err },
				func() error { _, err := b.PutNodeIf(Node("y", "10.244.7.0/24"), 0); return err })
			if !oneWins(errs) {
				t.Fatalf("two replicas gave CIDR 10.244.7.0/24 to two nodes: %v", errs)
			}
			for _, err := range errs {
				if err != nil && !errors.Is(err, store.ErrPodCIDRTaken) {
					t.Fatalf("loser's error %v is not ErrPodCIDRTaken", err)
				}
			}
		}
	})

	t.Run("CreateSecretsTwoReplicas", func(t *testing.T) {
		a, b := open(t)
		var got [2]map[string][]byte
		errs := concurrently(
			func() (err error) {
				got[0], err = a.CreateSecrets(map[string][]byte{"ca.key": []byte("a-key"), "ca.crt": []byte("a-crt")})
				return err
			},
			func() (err error) {
				got[1], err = b.CreateSecrets(map[string][]byte{"ca.key": []byte("b-key"), "ca.crt": []byte("b-crt")})
				return err
			})
		if errs[0] != nil || errs[1] != nil || !reflect.DeepEqual(got[0], got[1]) {
			t.Fatalf("replicas disagree on the CA: %q / %q (%v)", got[0], got[1], errs)
		}
	})

	t.Run("WatchOneHistoryOnBothReplicas", func(t *testing.T) {
		a, b := open(t)
		put(t, a, Node("pre", "10.244.1.0/24"))
		wa, wb := startWatch(t, a, "a"), startWatch(t, b, "b")
		wa.waitSync(t)
		wb.waitSync(t)
		if !reflect.DeepEqual(wa.syncNames(), []string{"pre"}) {
			t.Fatalf("sync on a: %v", wa.syncNames())
		}
		// Writes through both replicas; each returns its revision.
		var want []store.Change
		w := func(r uint64, n *store.NodeRecord, del string) {
			if n != nil {
				c := *n // n changes later
				n = &c
			}
			want = append(want, store.Change{Revision: r, Node: n, Deleted: del})
		}
		n1 := Node("n1", "10.244.2.0/24")
		w(put(t, a, n1), n1, "")
		n2 := Node("n2", "10.244.3.0/24")
		w(put(t, b, n2), n2, "")
		n1.State = store.StateRejected
		w(put(t, b, n1), n1, "")
		r, err := a.DeleteNode("pre")
		if err != nil {
			t.Fatal(err)
		}
		w(r, nil, "pre")
		_, r, err = b.RevokeNode("n2", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		w(r, nil, "n2")
		for _, wt := range []*watcher{wa, wb} {
			got := wt.waitChanges(t, len(want))
			for i := range want {
				if got[i].Revision != want[i].Revision || got[i].Deleted != want[i].Deleted || !Equal(got[i].Node, want[i].Node) {
					t.Fatalf("watch on %s: change %d is %+v, want %+v", wt.name, i, got[i], want[i])
				}
			}
			if wt.syncRev >= want[0].Revision {
				t.Fatalf("sync revision %d is not before the first change %d", wt.syncRev, want[0].Revision)
			}
		}
		// A watch started later on the other replica resumes from where
		// the first left: its sync is the state at or after the last
		// change the first one saw.
		wc := startWatch(t, b, "b (late)")
		wc.waitSync(t)
		if wc.syncRev < want[len(want)-1].Revision || !reflect.DeepEqual(wc.syncNames(), []string{"n1"}) {
			t.Fatalf("late watch on b: sync %v at %d; want [n1] at or after %d", wc.syncNames(), wc.syncRev, want[len(want)-1].Revision)
		}
		n3 := Node("n3", "10.244.4.0/24")
		r3 := put(t, a, n3)
		if got := wc.waitChanges(t, 1); got[0].Revision != r3 || !Equal(got[0].Node, n3) {
			t.Fatalf("late watch's first change: %+v, want n3 at %d", got[0], r3)
		}
	})

	t.Run("IdleWatchReportsProgress", func(t *testing.T) {
		// A watch with nothing to deliver still shows it is live: its
		// consumer tells a silent connection from an idle store by this.
		a, _ := open(t)
		put(t, a, Node("n", "10.244.1.0/24"))
		w := startWatch(t, a, "a")
		w.waitSync(t)
		start := time.Now()
		time.Sleep(3 * store.ProgressInterval) // the idle period under test
		w.mu.Lock()
		beats := append([]time.Time{start}, w.progress...)
		w.mu.Unlock()
		beats = append(beats, time.Now())
		// One interval of slack for a loaded machine.
		for i := 1; i < len(beats); i++ {
			if gap := beats[i].Sub(beats[i-1]); gap > 2*store.ProgressInterval {
				t.Fatalf("idle watch silent for %s (progress at %v); want progress at least every %s", gap.Round(time.Millisecond), beats, store.ProgressInterval)
			}
		}
		if len(beats) < 4 {
			t.Fatalf("%d progress calls in %s of idle watch, want at least 2", len(beats)-2, 3*store.ProgressInterval)
		}
	})

	t.Run("LeaseOneLeader", func(t *testing.T) {
		a, b := open(t)
		var leading atomic.Int32
		var overlap atomic.Bool
		led := make(chan string, 4)
		run := func(s store.Shared, name string) (context.CancelFunc, chan error) {
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- s.Lead(ctx, func(ctx context.Context) {
					if leading.Add(1) > 1 {
						overlap.Store(true)
					}
					led <- name
					<-ctx.Done()
					leading.Add(-1)
				})
			}()
			return cancel, done
		}
		cancelA, doneA := run(a, "a")
		cancelB, doneB := run(b, "b")
		defer cancelA()
		defer cancelB()
		first := waitLead(t, led)
		select {
		case other := <-led:
			t.Fatalf("%s leads while %s does", other, first)
		case <-time.After(500 * time.Millisecond):
		}
		stop, stopped, next := cancelA, doneA, "b"
		if first == "b" {
			stop, stopped, next = cancelB, doneB, "a"
		}
		stop()
		if err := <-stopped; !errors.Is(err, context.Canceled) {
			t.Fatalf("Lead returned %v after its context ended", err)
		}
		if got := waitLead(t, led); got != next {
			t.Fatalf("after %s stopped, %s leads", first, got)
		}
		if overlap.Load() {
			t.Fatal("two replicas ran fn at once")
		}
	})
}

func waitLead(t *testing.T, led chan string) string {
	t.Helper()
	select {
	case name := <-led:
		return name
	case <-time.After(60 * time.Second):
		t.Fatal("no replica became leader within 60 s")
		return ""
	}
}

func concurrently(fns ...func() error) []error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, f := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = f()
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// oneWins: exactly one nil error, the others ErrConflict.
func oneWins(errs []error) bool {
	wins := 0
	for _, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, store.ErrConflict):
			return false
		}
	}
	return wins == 1
}

// watcher records a WatchNodes run.
type watcher struct {
	name    string
	mu      sync.Mutex
	synced  chan struct{}
	sync    []*store.NodeRecord
	syncRev uint64
	changes []store.Change
	// progress holds when progress was called.
	progress []time.Time
	err      chan error
}

// startWatch runs s.WatchNodes until the test ends.
func startWatch(t *testing.T, s store.Shared, name string) *watcher {
	w := &watcher{name: name, synced: make(chan struct{}), err: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		<-w.err
	})
	go func() {
		w.err <- s.WatchNodes(ctx, func(nodes []*store.NodeRecord, rev uint64) {
			w.mu.Lock()
			w.sync, w.syncRev = nodes, rev
			w.mu.Unlock()
			close(w.synced)
		}, func(c store.Change) {
			w.mu.Lock()
			w.changes = append(w.changes, c)
			w.mu.Unlock()
		}, func(uint64) {
			w.mu.Lock()
			w.progress = append(w.progress, time.Now())
			w.mu.Unlock()
		})
	}()
	return w
}

func (w *watcher) waitSync(t *testing.T) {
	t.Helper()
	select {
	case <-w.synced:
	case err := <-w.err:
		t.Fatalf("WatchNodes ended before its sync: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no sync within 30 s")
	}
}

func (w *watcher) syncNames() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return names(w.sync)
}

func (w *watcher) waitChanges(t *testing.T, n int) []store.Change {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w.mu.Lock()
		got := append([]store.Change(nil), w.changes...)
		w.mu.Unlock()
		if len(got) >= n {
			if len(got) > n {
				t.Fatalf("watch %s: %d changes, want %d: %+v", w.name, len(got), n, got)
			}
			w.mu.Lock()
			w.changes = w.changes[n:]
			w.mu.Unlock()
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("watch %s: %d changes within 30 s, want %d", w.name, len(got), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
