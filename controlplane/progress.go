package controlplane

// Store progress: a store that stops answering without an error (a
// connection to the Kubernetes API that drops bytes, a hung disk under the
// bbolt file) must not leave a replica serving a peer set it can no longer
// keep current. A shared store's watch reports progress at least every
// store.ProgressInterval; a store.Prober that is not shared is probed that
// often. When StoreProgressDeadline passes without progress the store
// counts as broken from its last progress (replica.go: admissions stop,
// /readyz fails, open watches end StaleWatchLimit after that moment, or
// at once when that has passed). A store that reports an error is broken
// from the error.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

// errSilent is the cause of a store watch cancelled for want of progress.
var errSilent = errors.New("the store delivered neither changes nor progress")

// noteProgress records that the store just proved the cache current.
func (s *Server) noteProgress() {
	s.health.mu.Lock()
	s.health.progress = time.Now()
	s.health.mu.Unlock()
}

// silentFor reports how long a synced store has made no progress (0 when
// it is not synced: it is broken already).
func (s *Server) silentFor() time.Duration {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if !s.health.synced {
		return 0
	}
	return time.Since(s.health.progress)
}

// dogTick is how often the progress deadline is checked.
func (s *Server) dogTick() time.Duration {
	return min(s.cfg.StoreProgressDeadline/10, time.Second)
}

// watchdog cancels a synced store watch (its context, with cause
// errSilent) once it has made no progress for StoreProgressDeadline. The
// returned func stops the watchdog.
func (s *Server) watchdog(ctx context.Context, cancel context.CancelCauseFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(s.dogTick())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-done:
				return
			case <-t.C:
				if d := s.silentFor(); d > s.cfg.StoreProgressDeadline {
					s.log.Warn("store watch silent; treating it as broken", "silentFor", d.Round(time.Millisecond), "deadline", s.cfg.StoreProgressDeadline)
					cancel(fmt.Errorf("%w for %s (deadline %s)", errSilent, d.Round(time.Millisecond), s.cfg.StoreProgressDeadline))
					return
				}
			}
		}
	}()
	return func() { close(done) }
}

// probeStore probes a store that is not shared every
// store.ProgressInterval until ctx ends: a probe that succeeds is progress
// (and heals a broken store), one that fails breaks it, and one that has
// not returned within StoreProgressDeadline of the last progress breaks
// it as a silent watch would.
func (s *Server) probeStore(ctx context.Context, p store.Prober) {
	result := make(chan error, 1)
	inFlight := false
	probe := time.NewTicker(store.ProgressInterval)
	defer probe.Stop()
	dog := time.NewTicker(s.dogTick())
	defer dog.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-probe.C:
			if !inFlight {
				inFlight = true
				go func() { result <- p.Probe() }()
			}
		case err := <-result:
			inFlight = false
			if err != nil {
				s.markBroken(fmt.Errorf("store probe: %w", err), false)
				continue
			}
			if !s.Synced() {
				s.log.Info("store answers again")
			}
			s.markSynced()
		case <-dog.C:
			if d := s.silentFor(); d > s.cfg.StoreProgressDeadline {
				s.markBroken(fmt.Errorf("%w: a store write has not completed for %s (deadline %s)", errSilent, d.Round(time.Millisecond), s.cfg.StoreProgressDeadline), true)
			}
		}
	}
}
