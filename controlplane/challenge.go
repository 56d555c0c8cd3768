package controlplane

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

// Layout of a join/renew challenge (attest.ChallengeSize bytes): the issue
// time DESIGN.md requires, then random bytes, then a MAC over both.
const (
	challengeTimeLen = 8
	challengeRandLen = 8
	challengeMACLen  = attest.ChallengeSize - challengeTimeLen - challengeRandLen // 16
	challengeLabel   = "confmesh/v1/challenge-mac"
)

// Why a challenge is refused; each is a confmesh_controlplane_challenge_refusals_total reason.
var (
	errChallengeMalformed = errors.New("malformed")
	errChallengeForged    = errors.New("forged")
	errChallengeExpired   = errors.New("expired")
	errChallengeReplayed  = errors.New("replayed")
	errChallengesFull     = errors.New("consumed_full")
)

// challenges issues stateless join/renew challenges and enforces their
// single use. Issuing stores nothing: a challenge is its issue time, random
// bytes and a MAC (HMAC-SHA256, truncated to 16 bytes) under a key made at
// start and never stored, so only this process can issue one and forging
// one takes breaking HMAC. A challenge is remembered only once evidence
// answering it has verified (bounded by honest joins and renewals), until
// it expires.
type challenges struct {
	key [32]byte
	ttl time.Duration
	max int

	mu        sync.Mutex
	consumed  map[[attest.ChallengeSize]byte]time.Time // challenge -> expiry
	nextPrune time.Time
}

func newChallenges(ttl time.Duration, max int) (*challenges, error) {
	c := &challenges{ttl: ttl, max: max, consumed: map[[attest.ChallengeSize]byte]time.Time{}}
	if _, err := rand.Read(c.key[:]); err != nil {
		return nil, fmt.Errorf("challenge MAC key: %w", err)
	}
	return c, nil
}

func (c *challenges) mac(timeAndRand []byte) []byte {
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(challengeLabel))
	m.Write([]byte{0})
	m.Write(timeAndRand)
	return m.Sum(nil)[:challengeMACLen]
}

// issue returns a fresh challenge; it changes no state.
func (c *challenges) issue(now time.Time) ([]byte, error) {
	ch := make([]byte, attest.ChallengeSize)
	binary.BigEndian.PutUint64(ch[:challengeTimeLen], uint64(now.Unix()))
	if _, err := rand.Read(ch[challengeTimeLen : challengeTimeLen+challengeRandLen]); err != nil {
		return nil, fmt.Errorf("read random challenge bytes: %w", err)
	}
	copy(ch[challengeTimeLen+challengeRandLen:], c.mac(ch[:challengeTimeLen+challengeRandLen]))
	return ch, nil
}

// check reports whether ch was issued by this process, is younger than the
// TTL and was not used yet. It changes no state: consume does, once the
// evidence answering ch has verified.
func (c *challenges) check(ch []byte, now time.Time) error {
	if len(ch) != attest.ChallengeSize {
		return errChallengeMalformed
	}
	head := ch[:challengeTimeLen+challengeRandLen]
	if !hmac.Equal(ch[len(head):], c.mac(head)) {
		return errChallengeForged
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(ch[:challengeTimeLen])), 0)
	// Issue times are whole seconds; one second of slack for a clock that
	// stepped back since.
	if !now.Before(issued.Add(c.ttl)) || issued.After(now.Add(time.Second)) {
		return errChallengeExpired
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, used := c.consumed[[attest.ChallengeSize]byte(ch)]; used {
		return errChallengeReplayed
	}
	return nil
}

// consume marks a checked challenge used. It fails if it was used
// meanwhile (two joins racing with one challenge) or, as a last bound that
// honest use never reaches, when max unexpired challenges are remembered.
func (c *challenges) consume(ch []byte, now time.Time) error {
	if len(ch) != attest.ChallengeSize {
		return errChallengeMalformed
	}
	k := [attest.ChallengeSize]byte(ch)
	issued := time.Unix(int64(binary.BigEndian.Uint64(ch[:challengeTimeLen])), 0)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, used := c.consumed[k]; used {
		return errChallengeReplayed
	}
	if !now.Before(c.nextPrune) || len(c.consumed) >= c.max {
		for k, exp := range c.consumed {
			if !now.Before(exp) {
				delete(c.consumed, k)
			}
		}
		c.nextPrune = now.Add(c.ttl)
	}
	if len(c.consumed) >= c.max {
		return errChallengesFull
	}
	// Remembered until the challenge would expire anyway (plus the slack
	// check allows).
	c.consumed[k] = issued.Add(c.ttl + time.Second)
	return nil
}

// remembered is how many used challenges are kept.
func (c *challenges) remembered() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.consumed)
}
