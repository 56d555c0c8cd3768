package controlplane

import (
	"errors"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

// errTooManyChallenges is returned when the outstanding set is full even
// after expired entries are dropped (a flood of Challenge calls).
var errTooManyChallenges = errors.New("too many outstanding challenges; retry shortly")

// challengeSet tracks issued challenges: each is usable once, until it expires.
type challengeSet struct {
	mu      sync.Mutex
	ttl     time.Duration
	max     int
	pending map[[attest.ChallengeSize]byte]time.Time
}

func newChallengeSet(ttl time.Duration, max int) *challengeSet {
	return &challengeSet{ttl: ttl, max: max, pending: map[[attest.ChallengeSize]byte]time.Time{}}
}

// issue returns a fresh challenge valid until now+ttl.
func (c *challengeSet) issue(now time.Time) ([]byte, error) {
	ch, err := attest.NewChallenge(now)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) >= c.max {
		for k, exp := range c.pending {
			if !now.Before(exp) {
				delete(c.pending, k)
			}
		}
		if len(c.pending) >= c.max {
			return nil, errTooManyChallenges
		}
	}
	c.pending[[attest.ChallengeSize]byte(ch)] = now.Add(c.ttl)
	return ch, nil
}

// consume reports whether ch was issued, unused and unexpired, and uses it
// up either way: a challenge never answers twice.
func (c *challengeSet) consume(ch []byte, now time.Time) bool {
	if len(ch) != attest.ChallengeSize {
		return false
	}
	k := [attest.ChallengeSize]byte(ch)
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.pending[k]
	delete(c.pending, k)
	return ok && now.Before(exp)
}
