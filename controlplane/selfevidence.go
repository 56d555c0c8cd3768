package controlplane

import (
	"context"
	"sync"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"golang.org/x/sync/singleflight"
)

// selfEvidenceRetry is how long a failed report generation is remembered,
// so a broken TEE is not asked again on every call.
const selfEvidenceRetry = time.Second

// selfEvidence is the control plane's own evidence, produced at most once
// per epoch and shared by every caller in it: bound to the TLS key (key32
// and identity key hash) and to an epoch challenge the control plane makes
// itself (time of issue || random). Callers never choose what the TEE
// signs, and at most one report generation is in flight (singleflight).
type selfEvidence struct {
	epoch   time.Duration
	now     func() time.Time
	produce func(challenge []byte, now time.Time) (*attestv1.Evidence, error)
	counted func(err error)

	group singleflight.Group

	mu     sync.Mutex
	cur    *attestv1.Evidence
	issued time.Time // the epoch challenge's time
	err    error
	errAt  time.Time
}

// get returns evidence younger than one epoch, producing it when there is
// none. Waiting for a generation in flight ends with ctx.
func (e *selfEvidence) get(ctx context.Context) (*attestv1.Evidence, error) {
	if ev, err, ok := e.cached(); ok {
		return ev, err
	}
	ch := e.group.DoChan("epoch", func() (any, error) {
		if ev, err, ok := e.cached(); ok {
			return ev, err
		}
		now := e.now()
		challenge, err := attest.NewChallenge(now)
		if err == nil {
			var ev *attestv1.Evidence
			ev, err = e.produce(challenge, now)
			e.counted(err)
			if err == nil {
				issued, _ := attest.ChallengeTime(challenge)
				e.mu.Lock()
				e.cur, e.issued, e.err = ev, issued, nil
				e.mu.Unlock()
				return ev, nil
			}
		}
		e.mu.Lock()
		e.err, e.errAt = err, now
		e.mu.Unlock()
		return nil, err
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*attestv1.Evidence), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// cached returns the current evidence if it is younger than one epoch, or a
// generation error younger than selfEvidenceRetry; ok is false when a new
// generation is due.
func (e *selfEvidence) cached() (*attestv1.Evidence, error, bool) {
	now := e.now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cur != nil && now.Sub(e.issued) < e.epoch && !now.Before(e.issued.Add(-time.Second)) {
		return e.cur, nil, true
	}
	if e.err != nil && now.Sub(e.errAt) < selfEvidenceRetry && !now.Before(e.errAt) {
		return nil, e.err, true
	}
	return nil, nil, false
}
