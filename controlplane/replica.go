package controlplane

// Replicas: with a store.Shared store several control planes serve from one
// state. Each builds its node cache and watch log from the store's watch
// alone (its own writes come back through it too), so all replicas hand out
// the same changes at the same revisions and an agent resumes on any of
// them. A write (join, renewal, revocation, removal, sweep) returns once
// the watch brought it back, so its caller then sees it on this replica.
//
// Fail closed on a lost store: when the watch has been broken (or never
// synced) for longer than StoreSyncGrace the replica refuses joins and
// renewals with Unavailable and /readyz fails; existing watches go on from
// the cache until StaleWatchLimit, then end with Unavailable so agents fail
// over to a replica that still sees revocations. A watch that goes silent
// (no change and no progress for StoreProgressDeadline) is broken too, and
// both clocks run from the last moment the watch was known current, not
// from when the silence was noticed (progress.go).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults of the replica bounds (Config).
const (
	// DefaultStoreSyncGrace is how long a replica whose store watch broke
	// keeps admitting joins and renewals: a watch the API server ends is
	// re-established (listed again) well within it.
	DefaultStoreSyncGrace = 5 * time.Second
	// DefaultStaleWatchLimit is how long a replica whose store watch broke
	// keeps serving open watches from its cache. A revocation made on
	// another replica meanwhile reaches this replica's agents at most this
	// late (plus their failover): their streams then end with Unavailable
	// and they resume on another replica.
	DefaultStaleWatchLimit = 30 * time.Second
	// DefaultStoreWait bounds how long a write waits to come back through
	// the store's watch, and how long a watch resuming from a revision this
	// replica has not reached yet waits for it.
	DefaultStoreWait = 5 * time.Second
	// DefaultStoreProgressDeadline is how long a replica's store watch may
	// deliver neither a change nor progress before it counts as broken
	// (since its last progress): a few store.ProgressInterval, well
	// within DefaultStaleWatchLimit.
	DefaultStoreProgressDeadline = 10 * time.Second
)

// storeHealth is the state of a shared store's watch.
type storeHealth struct {
	mu         sync.Mutex
	synced     bool      // the watch is up and listed
	everSynced bool      // it was listed at least once
	since      time.Time // since when it is not synced: its last progress before the break (or the start)
	err        error     // why it is not synced
	stale      *time.Timer
	// progress is when the store last proved the cache current: a list,
	// a change, a progress report of the watch, a probe that succeeded.
	progress time.Time
}

// errNotSynced describes a replica whose cache is not in step with the store.
var errNotSynced = errors.New("the store's watch is not synced")

// storeState reports whether the store is usable for admissions (a
// refusal when not) and how long the watch has been broken.
func (s *Server) storeState() (ok bool, broken time.Duration, why string) {
	if !s.tracked {
		return true, 0, ""
	}
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.synced {
		return true, 0, ""
	}
	broken = time.Since(h.since)
	cause := "not listed yet"
	if h.err != nil {
		cause = h.err.Error()
	}
	if !h.everSynced {
		return false, broken, fmt.Sprintf("this control-plane replica has not synced with its store yet (%s)", cause)
	}
	return broken <= s.cfg.StoreSyncGrace, broken, fmt.Sprintf("this control-plane replica lost its store %s ago (%s)", broken.Round(time.Millisecond), cause)
}

// storeRefusal refuses a join or renewal on a replica that lost its store
// for longer than StoreSyncGrace (or never synced): it could not see
// revocations or allocations other replicas make.
func (s *Server) storeRefusal() *refusal {
	ok, _, why := s.storeState()
	if ok {
		return nil
	}
	return refuse("store_unavailable", codes.Unavailable, "%s: it admits no joins or renewals; use another replica", why)
}

// watchRefusal refuses a new Watch on a replica whose cache is too stale
// to serve one (never synced, or broken longer than StaleWatchLimit).
func (s *Server) watchRefusal() error {
	if !s.tracked {
		return nil
	}
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.synced:
		return nil
	case !h.everSynced:
		return status.Error(codes.Unavailable, "this control-plane replica has not synced with its store yet; use another replica")
	case time.Since(h.since) > s.cfg.StaleWatchLimit:
		return status.Errorf(codes.Unavailable, "this control-plane replica lost its store %s ago (%v) and may have missed revocations; use another replica", time.Since(h.since).Round(time.Millisecond), h.err)
	}
	return nil
}

// Synced reports whether the replica's cache is in step with its shared
// store, or whether a store that is not shared answers its probes (always
// true for a store that is neither shared nor a store.Prober).
func (s *Server) Synced() bool {
	if !s.tracked {
		return true
	}
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	return s.health.synced
}

// markSynced records a successful list.
func (s *Server) markSynced() {
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.synced, h.everSynced, h.err = true, true, nil
	h.progress = time.Now()
	if h.stale != nil {
		h.stale.Stop()
		h.stale = nil
	}
	s.metrics.storeSynced.Set(1)
}

// markBroken records a broken watch (or a store that stopped answering);
// the first break after a sync starts the clocks of StoreSyncGrace and
// StaleWatchLimit: now for a store that reported an error, at its last
// progress for a silent one (silent true: what changed since may be
// missing from the cache already).
func (s *Server) markBroken(err error, silent bool) {
	h := &s.health
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
	s.metrics.storeSynced.Set(0)
	if !h.synced {
		return
	}
	h.synced, h.since = false, time.Now()
	if silent {
		h.since = h.progress
	}
	s.metrics.storeBreaks.Inc()
	s.log.Warn("store watch broke; serving watches from the cache for a bounded time", "err", err,
		"lastProgress", h.since, "admissionsStopAfter", s.cfg.StoreSyncGrace, "watchesEndAfter", s.cfg.StaleWatchLimit)
	since := h.since
	h.stale = time.AfterFunc(s.cfg.StaleWatchLimit-time.Since(since), func() { s.endStaleWatches(since) })
}

// endStaleWatches ends every open watch if the store watch that broke at
// since is still broken.
func (s *Server) endStaleWatches(since time.Time) {
	s.health.mu.Lock()
	still := !s.health.synced && s.health.since.Equal(since)
	err := s.health.err
	s.health.mu.Unlock()
	if !still {
		return
	}
	s.log.Error("store watch broken for too long; ending every watch so agents move to another replica", "limit", s.cfg.StaleWatchLimit, "lastProgress", since, "err", err)
	s.hub.closeAll(fmt.Sprintf("this control-plane replica lost its store %s ago (%v) and may miss revocations; resume on another replica", s.cfg.StaleWatchLimit, err))
	s.metrics.watchers.Set(float64(s.hub.watchers()))
}

// followStore keeps the cache in step with the shared store until ctx
// ends, listing again whenever the watch breaks or goes silent.
func (s *Server) followStore(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		listed := false
		wctx, cancel := context.WithCancelCause(ctx)
		stopDog := s.watchdog(wctx, cancel)
		err := s.shared.WatchNodes(wctx,
			func(nodes []*store.NodeRecord, rev uint64) { listed = true; s.applySync(nodes, rev) },
			func(c store.Change) { s.applyChange(c); s.noteProgress() },
			func(uint64) { s.noteProgress() })
		stopDog()
		silent := false
		if cause := context.Cause(wctx); ctx.Err() == nil && errors.Is(cause, errSilent) {
			err, silent = cause, true
		}
		cancel(nil)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = errors.New("watch ended")
		}
		s.markBroken(err, silent)
		s.log.Warn("store watch ended; listing again", "err", err)
		if listed {
			backoff = 50 * time.Millisecond
		} else if backoff *= 2; backoff > 2*time.Second {
			backoff = 2 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// applySync replaces the cache with a fresh list of the store at rev.
// Watchers get the difference to what they were sent (no peer still in
// the store leaves their set, none is sent twice), then rev.
func (s *Server) applySync(nodes []*store.NodeRecord, rev uint64) {
	fresh := &nodeCache{recs: map[string]*store.NodeRecord{}, peers: map[string]*cpv1.Peer{}, wire: map[string][]byte{}}
	for _, n := range nodes {
		if err := fresh.put(n); err != nil {
			s.log.Error("stored node cannot be served as a peer", "node", n.Name, "err", err)
		}
	}
	s.mu.Lock()
	old, first := s.nodes, !s.cacheListed
	s.nodes, s.cacheListed = fresh, true
	switch {
	case first:
		s.hub.reset(rev, nil)
	case rev != s.cacheRev:
		s.hub.reset(rev, peerDiff(old, fresh))
	}
	s.cacheRev = rev
	s.metrics.revision.Set(float64(rev))
	s.refreshCacheGauge()
	s.cond.Broadcast()
	s.mu.Unlock()
	s.metrics.storeSyncs.Inc()
	s.markSynced()
	if revs, err := s.store.ListRevocations(); err == nil {
		s.metrics.nodes.WithLabelValues(stateRevoked).Set(float64(len(revs)))
	}
	s.log.Info("store listed", "revision", rev, "nodes", len(nodes))
}

// peerDiff returns the deltas that take the peers of old to those of fresh.
func peerDiff(old, fresh *nodeCache) []*cpv1.WatchEvent {
	var out []*cpv1.WatchEvent
	for name := range old.peers {
		if _, ok := fresh.peers[name]; !ok {
			out = append(out, &cpv1.WatchEvent{Event: &cpv1.WatchEvent_Delete{Delete: name}})
		}
	}
	for name, p := range fresh.peers {
		if !bytes.Equal(old.wire[name], fresh.wire[name]) {
			out = append(out, &cpv1.WatchEvent{Event: &cpv1.WatchEvent_Upsert{Upsert: p}})
		}
	}
	return out
}

// applyChange applies one change from the store's watch to the cache and
// tells watchers.
func (s *Server) applyChange(c store.Change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Revision <= s.cacheRev {
		return // already in the list this watch started from
	}
	name, state := c.Deleted, "deleted"
	if c.Node != nil {
		name, state = c.Node.Name, c.Node.State
		if err := s.nodes.put(c.Node); err != nil {
			s.log.Error("stored node cannot be served as a peer", "node", name, "err", err)
		}
	} else {
		s.nodes.remove(c.Deleted)
	}
	s.logCommit(c.Revision, name, state)
	ev := &cpv1.WatchEvent{Revision: c.Revision}
	if p := s.nodes.peers[name]; p != nil {
		ev.Event = &cpv1.WatchEvent_Upsert{Upsert: p}
	} else {
		ev.Event = &cpv1.WatchEvent_Delete{Delete: name}
	}
	s.hub.publish(ev)
	s.cacheRev = c.Revision
	s.metrics.revision.Set(float64(c.Revision))
	s.refreshCacheGauge()
	s.cond.Broadcast()
}

// awaitLocked waits, releasing s.mu meanwhile, until the cache has reached
// rev or d passed, and reports whether it has. The caller holds s.mu.
func (s *Server) awaitLocked(rev uint64, d time.Duration) bool {
	if s.cacheRev >= rev {
		return true
	}
	deadline := time.Now().Add(d)
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer t.Stop()
	for s.cacheRev < rev && time.Now().Before(deadline) {
		s.cond.Wait()
	}
	return s.cacheRev >= rev
}

// committed finishes a write the store committed at rev: with a shared
// store it waits (bounded by StoreWait) for the watch to bring it into the
// cache, so the caller's next call sees it here. The caller holds s.mu
// and s.writeMu.
func (s *Server) committed(rev uint64) error {
	if s.awaitLocked(rev, s.cfg.StoreWait) {
		return nil
	}
	return refuse("store_unavailable", codes.Unavailable,
		"the change was stored at revision %d but this control-plane replica has not seen it within %s (its store watch is at %d); retry or use another replica",
		rev, s.cfg.StoreWait, s.cacheRev)
}

// lockWrite serialises the writers of this replica (join, renew, revoke,
// remove, sweep) across their wait for the store's watch, and takes the
// state lock.
func (s *Server) lockWrite() {
	s.writeMu.Lock()
	s.mu.Lock()
}

func (s *Server) unlockWrite() {
	s.mu.Unlock()
	s.writeMu.Unlock()
}

// lead runs the periodic sweep while this replica holds the store's
// leader lease (ctx ends when it loses it): one replica sweeps at a time.
func (s *Server) lead(ctx context.Context) {
	s.log.Info("leading: this replica runs the periodic re-evaluation sweep")
	s.metrics.leader.Set(1)
	defer s.metrics.leader.Set(0)
	s.sweepLoop(ctx, true)
	s.log.Info("no longer leading")
}

// runShared follows the store and, under the leader lease, sweeps, until
// ctx ends.
func (s *Server) runShared(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.followStore(ctx) }()
	for ctx.Err() == nil {
		err := s.shared.Lead(ctx, s.lead)
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("leader election ended; trying again", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	wg.Wait()
}
