package attest

import (
	"fmt"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
)

// Provider produces evidence from a TEE: real SEV-SNP hardware (package
// snp) or the simulated TEE (package sim).
type Provider interface {
	// TEE names the TEE type the evidence will carry.
	TEE() string
	// Report returns evidence whose report carries reportData, with the
	// endorsement chain attached. The binding is left for Attest to fill.
	Report(reportData [64]byte) (*attestv1.Evidence, error)
}

// Binding is the input of a bound attestation.
type Binding struct {
	Purpose         Purpose
	Challenge       []byte
	IdentityKeyHash []byte
	Name            string
	Key             []byte
}

// Attest produces evidence bound to b. It refuses a challenge whose time is
// more than MaxChallengeSkew away from now, so a stale or post-dated
// challenge is never answered.
func Attest(p Provider, b Binding, now time.Time) (*attestv1.Evidence, error) {
	if err := CheckChallengeFresh(b.Challenge, now); err != nil {
		return nil, err
	}
	nonce, err := Nonce(b.Purpose, b.Challenge, b.IdentityKeyHash, b.Name)
	if err != nil {
		return nil, err
	}
	rd, err := ReportData(nonce[:], b.Key)
	if err != nil {
		return nil, err
	}
	ev, err := p.Report(rd)
	if err != nil {
		return nil, fmt.Errorf("%s report: %w", p.TEE(), err)
	}
	ev.Binding = &attestv1.Binding{
		Purpose:         string(b.Purpose),
		Challenge:       append([]byte(nil), b.Challenge...),
		IdentityKeyHash: append([]byte(nil), b.IdentityKeyHash...),
		Name:            b.Name,
		Key:             append([]byte(nil), b.Key...),
	}
	return ev, nil
}
