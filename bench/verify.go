// Package bench is the benchmark harness: setups and measuring loops shared
// by `confmesh bench` and the Go benchmarks in this directory.
package bench

import (
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify"
)

// VerifySetup is one simulated node's bound evidence and a verifier whose
// policy trusts the node's simulated root and accepts its measurement.
type VerifySetup struct {
	Verifier *attest.Verifier
	Evidence *attestv1.Evidence
	Expect   attest.Expect
}

// NewVerifySetup creates a simulated test CA (RSA-2048: the chain is
// verified once and cached, so key size does not affect the steady state),
// one node, a policy trusting the CA's root (written into dir) and one
// evidence bound to a fresh join challenge. It verifies that evidence once,
// which checks the setup and warms the per-VCEK chain cache. log receives
// the verifier's simulated-root warning; nil discards it.
func NewVerifySetup(dir string, log *slog.Logger) (*VerifySetup, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := sim.NewTestCA("")
	if err != nil {
		return nil, err
	}
	measurement := make([]byte, abi.MeasurementSize)
	key := make([]byte, attest.KeySize)
	idHash := make([]byte, 32)
	for _, b := range [][]byte{measurement, key, idHash} {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
	}
	node, err := ca.NewNode(sim.NodeConfig{Measurement: measurement})
	if err != nil {
		return nil, err
	}
	rootPath := filepath.Join(dir, sim.RootFile)
	if err := os.WriteFile(rootPath, ca.RootPEM(), 0o644); err != nil {
		return nil, fmt.Errorf("write simulated root: %w", err)
	}
	policy, err := attest.ParsePolicy(fmt.Appendf(nil,
		"measurements: [%x]\ntrustedRoots:\n- kind: simulated\n  file: %q\n", measurement, rootPath))
	if err != nil {
		return nil, fmt.Errorf("bench policy: %w", err)
	}
	v, err := attest.NewVerifier(policy, attest.Options{Logger: log})
	if err != nil {
		return nil, err
	}
	now := time.Now()
	challenge, err := attest.NewChallenge(now)
	if err != nil {
		return nil, err
	}
	b := attest.Binding{Purpose: attest.PurposeJoin, Challenge: challenge, IdentityKeyHash: idHash, Name: "bench-node", Key: key}
	ev, err := attest.Attest(node, b, now)
	if err != nil {
		return nil, err
	}
	s := &VerifySetup{
		Verifier: v,
		Evidence: ev,
		Expect:   attest.Expect{Purpose: b.Purpose, Key: key, IdentityKeyHash: idHash, Name: b.Name, Challenge: challenge},
	}
	if err := s.VerifyOnce(); err != nil {
		return nil, fmt.Errorf("bench evidence does not verify: %w", err)
	}
	return s, nil
}

// VerifyOnce runs one full verification of the setup's evidence.
func (s *VerifySetup) VerifyOnce() error {
	_, err := s.Verifier.Verify(s.Evidence, s.Expect)
	return err
}

// VerifyResult is the outcome of a measuring run.
type VerifyResult struct {
	Verifications int           `json:"verifications"`
	Elapsed       time.Duration `json:"-"`
	PerSecond     float64       `json:"verifications_per_second"`
}

// RunVerify verifies the setup's evidence on the calling goroutine until
// d has elapsed (at least once), and stops at the first failure.
func RunVerify(s *VerifySetup, d time.Duration) (VerifyResult, error) {
	start := time.Now()
	deadline := start.Add(d)
	n := 0
	for {
		if err := s.VerifyOnce(); err != nil {
			return VerifyResult{}, fmt.Errorf("verification %d: %w", n+1, err)
		}
		n++
		if !time.Now().Before(deadline) {
			break
		}
	}
	elapsed := time.Since(start)
	return VerifyResult{Verifications: n, Elapsed: elapsed, PerSecond: float64(n) / elapsed.Seconds()}, nil
}

// RunSignatureBaseline measures, on the same report, the floor that full
// verification cannot beat: the report's ECDSA P-384 signature check alone
// (go-sev-guest verify.SnpReportSignature). Reported beside RunVerify so a
// figure is a ratio measured in the same run, not an absolute claim.
func RunSignatureBaseline(s *VerifySetup, d time.Duration) (VerifyResult, error) {
	vcek, err := x509.ParseCertificate(s.Evidence.GetChain().GetVcek())
	if err != nil {
		return VerifyResult{}, err
	}
	report := s.Evidence.GetReport()
	start := time.Now()
	deadline := start.Add(d)
	n := 0
	for {
		if err := verify.SnpReportSignature(report, vcek); err != nil {
			return VerifyResult{}, err
		}
		n++
		if !time.Now().Before(deadline) {
			break
		}
	}
	elapsed := time.Since(start)
	return VerifyResult{Verifications: n, Elapsed: elapsed, PerSecond: float64(n) / elapsed.Seconds()}, nil
}
