package kubestore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// WatchNodes implements store.Shared: a list (sync, at the list's
// resourceVersion) and a watch from there. A watch the API server ends
// normally is resumed from the last revision seen, without a new sync; an
// expired revision (410 Gone), an error event or an API server that cannot
// be reached ends WatchNodes with the error, and the caller calls it again
// for a fresh list.
//
// Progress: each watch request asks the API server to end it after
// watchSpan (well within store.ProgressInterval) and for bookmarks; a
// bookmark and every watch started again call progress. A connection that
// goes silent (drops bytes without an error) therefore shows as a watch
// without progress: its caller's deadline catches it, long before
// client-go's HTTP/2 health check (30 s idle + 15 s ping) would.
func (s *Store) WatchNodes(ctx context.Context, sync func([]*store.NodeRecord, uint64), change func(store.Change), progress func(uint64)) error {
	lctx, cancel := context.WithTimeout(ctx, s.opt.Timeout)
	nodes, rev, err := s.listNodes(lctx)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	sync(nodes, rev)
	span := int64(watchSpan / time.Second)
	for first := true; ; first = false {
		w, err := s.nodes.Watch(ctx, metav1.ListOptions{ResourceVersion: fmt.Sprint(rev), AllowWatchBookmarks: true, TimeoutSeconds: &span})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("kubestore: watch nodes from revision %d: %w", rev, err)
		}
		if !first {
			progress(rev) // the API server answered a new watch from rev
		}
		rev, err = s.relay(ctx, w, rev, change, progress)
		w.Stop()
		if err != nil {
			return err
		}
	}
}

// watchSpan is the timeout of each watch request: the API server ends the
// watch after it, and WatchNodes starts the next one (progress), so an
// idle watch reports progress at least this often (store.ProgressInterval
// allows for the round trip).
const watchSpan = 2 * time.Second

// relay passes w's events to change (bookmarks to progress) until w ends
// (nil error: resume from the returned revision) or fails.
func (s *Store) relay(ctx context.Context, w watch.Interface, rev uint64, change func(store.Change), progress func(uint64)) (uint64, error) {
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return rev, ctx.Err()
		case ev, ok = <-w.ResultChan():
		}
		if !ok {
			return rev, nil
		}
		if ev.Type == watch.Error {
			err := apierrors.FromObject(ev.Object)
			return rev, fmt.Errorf("kubestore: watch nodes from revision %d: %w", rev, err)
		}
		u, isU := ev.Object.(*unstructured.Unstructured)
		if !isU {
			return rev, fmt.Errorf("kubestore: watch nodes: unexpected %T in a %s event", ev.Object, ev.Type)
		}
		r, err := revisionOf(u.GetResourceVersion())
		if err != nil {
			return rev, fmt.Errorf("kubestore: watch nodes: %w", err)
		}
		if r <= rev {
			if ev.Type == watch.Bookmark {
				progress(rev)
				continue
			}
			return rev, fmt.Errorf("kubestore: watch nodes: revision %d after %d: out of order", r, rev)
		}
		switch {
		case ev.Type == watch.Bookmark:
			progress(r)
		case incomplete(u):
			// A created object whose record is not written yet (or whose
			// deletion ends a first write that never finished): no node.
			progress(r)
		case ev.Type == watch.Added || ev.Type == watch.Modified:
			n, err := nodeRecord(u)
			if err != nil {
				return rev, fmt.Errorf("kubestore: watch nodes: %w", err)
			}
			change(store.Change{Revision: r, Node: n})
		case ev.Type == watch.Deleted:
			change(store.Change{Revision: r, Deleted: u.GetName()})
		default:
			return rev, fmt.Errorf("kubestore: watch nodes: unexpected event type %q", ev.Type)
		}
		rev = r
	}
}

// Lead implements store.Shared with a coordination.k8s.io Lease in the
// store's namespace (client-go's leader election). fn's context ends when
// the lease is lost (not renewed within RenewDeadline); Lead then campaigns
// again, until ctx ends. The lease is released when ctx ends, so another
// replica takes over at once.
func (s *Store) Lead(ctx context.Context, fn func(ctx context.Context)) error {
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, s.opt.Namespace, s.opt.LeaseName,
		s.core.CoreV1(), s.core.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: s.opt.Identity})
	if err != nil {
		return fmt.Errorf("kubestore: lease: %w", err)
	}
	var running sync.Mutex
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: s.opt.LeaseName, ReleaseOnCancel: true,
		LeaseDuration: s.opt.LeaseDuration, RenewDeadline: s.opt.RenewDeadline, RetryPeriod: s.opt.RetryPeriod,
		Callbacks: leaderelection.LeaderCallbacks{OnStartedLeading: func(ctx context.Context) {
			// One fn at a time: a term's fn may still be returning
			// when the next term starts.
			running.Lock()
			defer running.Unlock()
			if ctx.Err() == nil {
				fn(ctx)
			}
		}, OnStoppedLeading: func() {}},
	})
	if err != nil {
		return fmt.Errorf("kubestore: lease: %w", err)
	}
	for ctx.Err() == nil {
		le.Run(ctx) // returns when leadership is lost or ctx ends
	}
	running.Lock() // wait for a running fn (its context has ended)
	running.Unlock()
	return ctx.Err()
}
