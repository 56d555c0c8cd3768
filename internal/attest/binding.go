package attest

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"time"
)

// Purpose labels what a binding is for, so evidence produced for one step of
// the protocol cannot be replayed in another.
type Purpose string

// The purposes DESIGN.md defines. Each becomes part of the nonce label
// "confmesh/v1/<purpose>".
const (
	PurposeJoin         Purpose = "join"
	PurposeRenew        Purpose = "renew"
	PurposeControlPlane Purpose = "controlplane"
)

// Sizes of the binding inputs.
const (
	ChallengeSize = 32
	KeySize       = 32
	NonceSize     = 32
	// MaxChallengeSkew is how far a challenge's issue time may be from the
	// attesting side's own clock before it refuses to attest.
	MaxChallengeSkew = 60 * time.Second
	// MaxControlPlaneEvidenceAge is the oldest control-plane evidence an
	// agent accepts, counted from its challenge time. The control plane
	// reuses its evidence for one epoch (at most this less
	// MaxChallengeSkew), so honest evidence is never older than that plus
	// clock skew.
	MaxControlPlaneEvidenceAge = 2 * time.Minute
)

// Valid reports whether p is one of the defined purposes.
func (p Purpose) Valid() bool {
	switch p {
	case PurposeJoin, PurposeRenew, PurposeControlPlane:
		return true
	}
	return false
}

// NewChallenge returns a fresh 32-byte challenge: 8 bytes big-endian Unix
// time of issue followed by 24 random bytes.
func NewChallenge(now time.Time) ([]byte, error) {
	c := make([]byte, ChallengeSize)
	binary.BigEndian.PutUint64(c[:8], uint64(now.Unix()))
	if _, err := rand.Read(c[8:]); err != nil {
		return nil, fmt.Errorf("read random challenge bytes: %w", err)
	}
	return c, nil
}

// ChallengeTime returns the issue time encoded in a challenge.
func ChallengeTime(challenge []byte) (time.Time, error) {
	if len(challenge) != ChallengeSize {
		return time.Time{}, fmt.Errorf("%w: challenge is %d bytes, want %d", ErrMalformedBinding, len(challenge), ChallengeSize)
	}
	return time.Unix(int64(binary.BigEndian.Uint64(challenge[:8])), 0), nil
}

// CheckChallengeFresh is what the attesting side runs before it produces
// evidence: it refuses a challenge whose issue time is more than
// MaxChallengeSkew away from its own clock.
func CheckChallengeFresh(challenge []byte, now time.Time) error {
	issued, err := ChallengeTime(challenge)
	if err != nil {
		return err
	}
	if d := now.Sub(issued); d > MaxChallengeSkew || d < -MaxChallengeSkew {
		return fmt.Errorf("%w: challenge issued at %s is %s away from local time %s (limit %s)",
			ErrStaleChallenge, issued.UTC().Format(time.RFC3339), d.Round(time.Second), now.UTC().Format(time.RFC3339), MaxChallengeSkew)
	}
	return nil
}

// CheckControlPlaneEvidenceAge is what an agent runs on the control
// plane's evidence after Verify: evidence whose challenge was issued more
// than MaxControlPlaneEvidenceAge before now is refused (ErrEvidenceTooOld).
// The evidence answers no nonce of the agent's; its freshness comes from
// this age and from its binding to the TLS key of the live connection.
func CheckControlPlaneEvidenceAge(issued, now time.Time) error {
	if age := now.Sub(issued); age > MaxControlPlaneEvidenceAge {
		return fmt.Errorf("%w: control plane evidence issued %s ago, agents accept at most %s", ErrEvidenceTooOld, age.Round(time.Second), MaxControlPlaneEvidenceAge)
	}
	return nil
}

// Nonce derives nonce32 = SHA-256("confmesh/v1/" + purpose || 0x00 ||
// challenge || identityKeyHash || name).
func Nonce(purpose Purpose, challenge, identityKeyHash []byte, name string) ([NonceSize]byte, error) {
	var out [NonceSize]byte
	if !purpose.Valid() {
		return out, fmt.Errorf("%w: unknown purpose %q", ErrMalformedBinding, purpose)
	}
	if len(challenge) != ChallengeSize {
		return out, fmt.Errorf("%w: challenge is %d bytes, want %d", ErrMalformedBinding, len(challenge), ChallengeSize)
	}
	if len(identityKeyHash) != sha256.Size {
		return out, fmt.Errorf("%w: identity key hash is %d bytes, want %d", ErrMalformedBinding, len(identityKeyHash), sha256.Size)
	}
	if name == "" {
		return out, fmt.Errorf("%w: name is empty", ErrMalformedBinding)
	}
	h := sha256.New()
	h.Write([]byte("confmesh/v1/" + string(purpose)))
	h.Write([]byte{0})
	h.Write(challenge)
	h.Write(identityKeyHash)
	h.Write([]byte(name))
	copy(out[:], h.Sum(nil))
	return out, nil
}

// ReportData computes REPORT_DATA = SHA-512(nonce32 || key32).
func ReportData(nonce, key []byte) ([64]byte, error) {
	var out [64]byte
	if len(nonce) != NonceSize {
		return out, fmt.Errorf("%w: nonce is %d bytes, want %d", ErrMalformedBinding, len(nonce), NonceSize)
	}
	if len(key) != KeySize {
		return out, fmt.Errorf("%w: key is %d bytes, want %d", ErrMalformedBinding, len(key), KeySize)
	}
	h := sha512.New()
	h.Write(nonce)
	h.Write(key)
	copy(out[:], h.Sum(nil))
	return out, nil
}

// KeyHash returns SHA-256 of a DER SubjectPublicKeyInfo: the identity key
// hash of the nonce, and key32 for the control plane's TLS key.
func KeyHash(spkiDER []byte) []byte {
	h := sha256.Sum256(spkiDER)
	return h[:]
}
