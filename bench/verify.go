// Package bench is the benchmark harness: setups and measuring loops shared
// by `confmesh bench` and the Go benchmarks in this directory.
package bench

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
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

	ca          *sim.CA
	measurement []byte
	binding     attest.Binding
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
		ca:       ca, measurement: measurement, binding: b,
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

func (r *VerifyResult) add(n int, d time.Duration) {
	r.Verifications += n
	r.Elapsed += d
	r.PerSecond = float64(r.Verifications) / r.Elapsed.Seconds()
}

// RunVerify verifies the setup's evidence on the calling goroutine until
// d has elapsed (at least once), and stops at the first failure.
func RunVerify(s *VerifySetup, d time.Duration) (VerifyResult, error) {
	var r VerifyResult
	n, elapsed, err := loop(d, s.VerifyOnce)
	if err != nil {
		return r, fmt.Errorf("verification %d: %w", n+1, err)
	}
	r.add(n, elapsed)
	return r, nil
}

// RunSignatureBaseline measures, on the same report, the floor that full
// verification cannot beat: the report's ECDSA P-384 signature check alone
// (go-sev-guest verify.SnpReportSignature).
func RunSignatureBaseline(s *VerifySetup, d time.Duration) (VerifyResult, error) {
	var r VerifyResult
	sig, err := s.signatureOnly()
	if err != nil {
		return r, err
	}
	n, elapsed, err := loop(d, sig)
	if err != nil {
		return r, err
	}
	r.add(n, elapsed)
	return r, nil
}

func (s *VerifySetup) signatureOnly() (func() error, error) {
	vcek, err := x509.ParseCertificate(s.Evidence.GetChain().GetVcek())
	if err != nil {
		return nil, err
	}
	report := s.Evidence.GetReport()
	return func() error { return verify.SnpReportSignature(report, vcek) }, nil
}

// loop runs f until d has elapsed (at least once) or it fails, and returns
// how many calls succeeded and the time they took.
func loop(d time.Duration, f func() error) (int, time.Duration, error) {
	start := time.Now()
	deadline := start.Add(d)
	n := 0
	for {
		if err := f(); err != nil {
			return n, time.Since(start), err
		}
		n++
		if !time.Now().Before(deadline) {
			return n, time.Since(start), nil
		}
	}
}

// RunInterleaved measures full verification (warm: chain verdict cached)
// and the signature-only baseline in alternating windows, rounds of each,
// d in total per kind, the order flipping every round (ABBA), so a change
// in the machine's load during the run affects both alike. The ratio of
// the two rates is the figure to read: absolute rates depend on the
// machine and its other work.
func RunInterleaved(s *VerifySetup, d time.Duration, rounds int) (warm, base VerifyResult, err error) {
	if rounds < 1 {
		rounds = 1
	}
	sig, err := s.signatureOnly()
	if err != nil {
		return warm, base, err
	}
	w := d / time.Duration(rounds)
	measure := func(r *VerifyResult, f func() error) error {
		n, elapsed, err := loop(w, f)
		if err != nil {
			return err
		}
		r.add(n, elapsed)
		return nil
	}
	for i := 0; i < rounds; i++ {
		order := []func() error{
			func() error { return measure(&warm, s.VerifyOnce) },
			func() error { return measure(&base, sig) },
		}
		if i%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, m := range order {
			if err := m(); err != nil {
				return warm, base, err
			}
		}
	}
	return warm, base, nil
}

// ColdSet is evidence from n simulated nodes this verifier has never seen:
// verifying each one runs the full chain check (VCEK against the ASK and
// ARK) as a new node's join does.
type ColdSet struct {
	setup    *VerifySetup
	evidence []*attestv1.Evidence
}

// NewColdSet makes n new simulated nodes (each a new chip with its own
// VCEK) and their evidence, bound like the setup's. Creating them is not
// measured.
func (s *VerifySetup) NewColdSet(n int) (*ColdSet, error) {
	c := &ColdSet{setup: s}
	now := time.Now()
	for i := 0; i < n; i++ {
		node, err := s.ca.NewNode(sim.NodeConfig{Measurement: s.measurement})
		if err != nil {
			return nil, err
		}
		ev, err := attest.Attest(node, s.binding, now)
		if err != nil {
			return nil, err
		}
		c.evidence = append(c.evidence, ev)
	}
	return c, nil
}

// RunCold verifies every piece of the set's evidence once (each a chain
// never seen before) and returns the rate. Each ColdSet can be run once:
// afterwards its chains are cached.
func RunCold(c *ColdSet) (VerifyResult, error) {
	var r VerifyResult
	if c.evidence == nil {
		return r, errors.New("cold set already used")
	}
	start := time.Now()
	for i, ev := range c.evidence {
		if _, err := c.setup.Verifier.Verify(ev, c.setup.Expect); err != nil {
			return r, fmt.Errorf("cold verification %d: %w", i+1, err)
		}
	}
	r.add(len(c.evidence), time.Since(start))
	c.evidence = nil
	return r, nil
}
