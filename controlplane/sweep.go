package controlplane

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
)

// SetPolicy swaps in a new policy and re-evaluates every node at once. An
// invalid policy (or one for another trust domain) is refused and the old
// one stays in force.
func (s *Server) SetPolicy(p *attest.Policy) error {
	if p.TrustDomain != s.td.String() {
		return fmt.Errorf("policy trust domain %q differs from the running %q; restart with a new state to change it", p.TrustDomain, s.td)
	}
	v, err := attest.NewVerifier(p, s.cfg.VerifierOptions)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.policy, s.verifier = p, v
	s.mu.Unlock()
	s.log.Info("policy loaded; re-evaluating every node", "measurements", len(p.Measurements))
	// The policy is in force now; a failure to store a sweep result is
	// logged, not returned, so callers can tell refusal from application.
	if err := s.Sweep(); err != nil {
		s.log.Error("sweep after policy change", "err", err)
	}
	return nil
}

// Sweep re-evaluates every node under the policy in force: a node whose
// evidence no longer passes (policy tightened, evidence too old, SVID
// expired) leaves the peer set; a rejected node that passes again (policy
// relaxed) returns.
func (s *Server) Sweep() error { return s.sweep(context.Background()) }

// sweep is Sweep, stopping early when ctx ends (the leader lease is lost).
// With a shared store it runs only on a synced cache, and a record another
// replica changed since the cache saw it is left to the next sweep.
func (s *Server) sweep(ctx context.Context) error {
	if s.shared != nil && !s.Synced() {
		return fmt.Errorf("sweep skipped: %w", errNotSynced)
	}
	s.lockWrite()
	defer s.unlockWrite()
	s.metrics.sweeps.Inc()
	var errs []error
	for _, n := range s.nodes.list() {
		if ctx.Err() != nil {
			return errors.Join(append(errs, fmt.Errorf("sweep stopped: %w", ctx.Err()))...)
		}
		verr := s.evaluateLocked(n)
		switch {
		case n.State == store.StateActive && verr != nil:
			n.State, n.Reason = store.StateRejected, verr.Error()
			s.log.Warn("node left the peer set", "node", n.Name, "reason", n.Reason)
		case n.State == store.StateRejected && verr == nil:
			n.State, n.Reason = store.StateActive, ""
			s.log.Info("node passes the policy again", "node", n.Name)
		default:
			continue
		}
		// Conditional on the revision judged: a record another replica
		// changed (a renewal) or deleted since is judged by the next sweep.
		if err := s.putAndPublish(n, n.Revision); err != nil {
			if errors.Is(err, store.ErrConflict) {
				continue
			}
			errs = append(errs, err)
		}
	}
	if cs, ok := s.store.(store.ClaimSweeper); ok {
		held := map[string]string{}
		for _, n := range s.nodes.list() {
			held[n.Name] = n.PodCIDR
		}
		released, err := cs.ReleaseStaleClaims(held)
		if released > 0 {
			s.log.Info("released stale pod CIDR claims", "count", released)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("release stale pod CIDR claims: %w", err))
		}
	}
	return errors.Join(errs...)
}

// evaluateLocked re-verifies a node's stored evidence against its record.
func (s *Server) evaluateLocked(n *store.NodeRecord) error {
	if !s.now().Before(n.ExpiresAt) {
		return fmt.Errorf("node SVID expired at %s without renewal", n.ExpiresAt.UTC().Format(time.RFC3339))
	}
	ev, err := attest.UnmarshalEvidence(n.Evidence)
	if err != nil {
		return err
	}
	leaf, err := parseLeaf(n.SVID)
	if err != nil {
		return fmt.Errorf("SVID on record: %w", err)
	}
	idHash, err := identity.SPKIHash(leaf.PublicKey)
	if err != nil {
		return err
	}
	purpose := attest.Purpose(ev.GetBinding().GetPurpose())
	if purpose != attest.PurposeJoin && purpose != attest.PurposeRenew {
		return fmt.Errorf("stored evidence has purpose %q", purpose)
	}
	_, err = s.verifier.Verify(ev, attest.Expect{Purpose: purpose, Key: n.WireGuardKey, IdentityKeyHash: idHash, Name: n.Name})
	if err != nil {
		return fmt.Errorf("%s: %w", attest.Reason(err), err)
	}
	return nil
}

// Run re-evaluates every node each SweepInterval until ctx ends. With a
// shared store it also keeps the node cache in step with the store (a
// replica serves nothing before Run has listed the store) and sweeps only
// while it holds the store's leader lease, so one replica sweeps at a time.
// A store that is not shared but a store.Prober is probed meanwhile
// (progress.go).
func (s *Server) Run(ctx context.Context) {
	if s.shared != nil {
		s.runShared(ctx)
		return
	}
	if s.prober != nil {
		done := make(chan struct{})
		go func() { defer close(done); s.probeStore(ctx, s.prober) }()
		defer func() { <-done }()
	}
	s.sweepLoop(ctx, false)
}

// sweepLoop sweeps every SweepInterval (and at once if now and the cache
// is synced) until ctx ends.
func (s *Server) sweepLoop(ctx context.Context, now bool) {
	if now && s.Synced() {
		if err := s.sweep(ctx); err != nil {
			s.log.Error("sweep", "err", err)
		}
	}
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := s.sweep(ctx); err != nil {
				s.log.Error("sweep", "err", err)
			}
		}
	}
}

func shortHex(b []byte) string {
	if len(b) > 8 {
		b = b[:8]
	}
	return hex.EncodeToString(b)
}
