package attest

import (
	"fmt"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"google.golang.org/protobuf/proto"
)

// MaxEvidenceSize bounds encoded evidence: a report (1184 bytes), four
// certificates and a binding fit comfortably.
const MaxEvidenceSize = 64 << 10

// MarshalEvidence encodes evidence deterministically.
func MarshalEvidence(ev *attestv1.Evidence) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode evidence: %w", err)
	}
	return b, nil
}

// UnmarshalEvidence decodes evidence and checks its shape (not its
// truth: that is the Verifier's job).
func UnmarshalEvidence(b []byte) (*attestv1.Evidence, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrMalformedEvidence)
	}
	if len(b) > MaxEvidenceSize {
		return nil, fmt.Errorf("%w: %d bytes exceeds the %d-byte limit", ErrMalformedEvidence, len(b), MaxEvidenceSize)
	}
	ev := &attestv1.Evidence{}
	if err := proto.Unmarshal(b, ev); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedEvidence, err)
	}
	if err := CheckEvidenceShape(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// CheckEvidenceShape rejects evidence that names no TEE or carries no report.
func CheckEvidenceShape(ev *attestv1.Evidence) error {
	if ev.GetTee() == "" {
		return fmt.Errorf("%w: no TEE type", ErrMalformedEvidence)
	}
	if len(ev.GetReport()) == 0 {
		return fmt.Errorf("%w: no report", ErrMalformedEvidence)
	}
	return nil
}
