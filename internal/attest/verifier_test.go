package attest_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/verify/testdata"
	"google.golang.org/protobuf/proto"
)

// realNow is inside the validity of go-sev-guest's example VCEK (2022-2029).
var realNow = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func realEvidence() *attestv1.Evidence {
	return &attestv1.Evidence{
		Tee:    attest.TEESevSnp,
		Report: append([]byte(nil), testdata.AttestationBytes...),
		Chain:  &attestv1.CertChain{Vcek: testdata.VcekBytes},
	}
}

func amdPolicy(allowDebug bool) *attest.Policy {
	p := attest.DefaultPolicy()
	p.AllowDebug = allowDebug
	return p
}

// TestRealHardwareReport uses the report and VCEK from a real Milan machine
// that go-sev-guest ships: its signature and chain verify against the
// pinned AMD roots, and it was launched with debug allowed.
func TestRealHardwareReport(t *testing.T) {
	v, err := attest.NewVerifier(amdPolicy(true), attest.Options{Now: func() time.Time { return realNow }})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.VerifyUnbound(realEvidence())
	if err != nil {
		t.Fatalf("real report rejected: %v", err)
	}
	if c.Product != "Milan" || c.Root != attest.RootAMD || c.Simulated || !c.Debug {
		t.Errorf("claims = product %q root %q simulated %v debug %v; want Milan amd false true", c.Product, c.Root, c.Simulated, c.Debug)
	}
	if !bytes.Equal(c.Measurement, testdata.AttestationBytes[0x90:0xC0]) {
		t.Errorf("measurement %x is not the report's bytes 0x90-0xC0", c.Measurement)
	}

	strict, err := attest.NewVerifier(amdPolicy(false), attest.Options{Now: func() time.Time { return realNow }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.VerifyUnbound(realEvidence()); !errors.Is(err, attest.ErrDebug) {
		t.Fatalf("debug-forbidding policy: err = %v, want ErrDebug", err)
	}
}

func TestSimRoundTrip(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	for _, version := range []uint32{2, 3} {
		n := f.node(t, sim.NodeConfig{ReportVersion: version})
		bd := newBound(t, now)
		ev := f.evidence(t, n, bd, now)
		// Through the wire encoding, as a peer receives it.
		wire, err := attest.MarshalEvidence(ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := attest.UnmarshalEvidence(wire)
		if err != nil {
			t.Fatal(err)
		}
		v := f.verifier(t, f.simPolicy(), now)
		c, err := v.Verify(got, bd.want)
		if err != nil {
			t.Fatalf("v%d: verify: %v", version, err)
		}
		if c.TEE != attest.TEESimSnp || !c.Simulated || c.ReportVersion != version ||
			!bytes.Equal(c.ChipID, n.ChipID()) || !bytes.Equal(c.Measurement, f.measurement) {
			t.Errorf("v%d: claims %+v do not describe the node", version, c)
		}
		if !c.IssuedAt.Equal(now.Truncate(time.Second)) {
			t.Errorf("IssuedAt = %v, want %v", c.IssuedAt, now.Truncate(time.Second))
		}
		// The same evidence, a different key: the binding is wrong.
		other := bd.want
		other.Key = randBytes(t, 32)
		if _, err := v.Verify(got, other); !errors.Is(err, attest.ErrWrongKey) {
			t.Fatalf("v%d: other key: err = %v, want ErrWrongKey", version, err)
		}
	}
}

// TestBadEvidence is the table of rejections: each case names the check
// that must refuse it.
func TestBadEvidence(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	good := f.node(t, sim.NodeConfig{})

	type tc struct {
		name   string
		want   error
		policy func(p *attest.Policy)
		// build returns the evidence and the expectation to verify against.
		build func(t *testing.T) (*attestv1.Evidence, attest.Expect)
		// verifyNow overrides the verifier's clock.
		verifyNow time.Time
		// amd uses the AMD-only policy (allowing debug, any measurement).
		amd bool
	}
	fromNode := func(cfg sim.NodeConfig) func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
		return func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			n := f.node(t, cfg)
			bd := newBound(t, now)
			return f.evidence(t, n, bd, now), bd.want
		}
	}
	mutate := func(m func(ev *attestv1.Evidence)) func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
		return func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			bd := newBound(t, now)
			ev := f.evidence(t, good, bd, now)
			m(ev)
			return ev, bd.want
		}
	}
	cases := []tc{
		{name: "flipped signature bit", want: attest.ErrSignature, build: mutate(func(ev *attestv1.Evidence) { ev.Report[0x2A0+5] ^= 0x01 })},
		{name: "flipped report-data bit", want: attest.ErrSignature, build: mutate(func(ev *attestv1.Evidence) { ev.Report[0x50] ^= 0x80 })},
		{name: "flipped measurement bit", want: attest.ErrSignature, build: mutate(func(ev *attestv1.Evidence) { ev.Report[0x90+7] ^= 0x04 })},
		{name: "truncated report", want: attest.ErrMalformedReport, build: mutate(func(ev *attestv1.Evidence) { ev.Report = ev.Report[:1000] })},
		{name: "garbage bytes", want: attest.ErrMalformedReport, build: mutate(func(ev *attestv1.Evidence) {
			ev.Report = bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 37)
		})},
		{name: "unsupported report version", want: attest.ErrUnsupportedVersion, build: fromNode(sim.NodeConfig{ReportVersion: 99})},
		{name: "empty chain", want: attest.ErrMissingChain, build: mutate(func(ev *attestv1.Evidence) { ev.Chain = nil })},
		{name: "VCEK not signed by the ASK", want: attest.ErrBrokenChain, build: mutate(func(ev *attestv1.Evidence) {
			ev.Chain.Ask, ev.Chain.Ark = f.otherCA.ASK().Raw, f.otherCA.ARK().Raw
		})},
		{name: "chain for the wrong product", want: attest.ErrWrongProduct, build: fromNode(sim.NodeConfig{Product: "Genoa-B1"})},
		{name: "simulated root, policy trusts AMD only", want: attest.ErrUntrustedRoot, amd: true, build: fromNode(sim.NodeConfig{})},
		{name: "AMD root, policy trusts only the simulated one", want: attest.ErrUntrustedRoot, verifyNow: realNow,
			build: func(t *testing.T) (*attestv1.Evidence, attest.Expect) { return realEvidence(), attest.Expect{} }},
		{name: "root of another simulated CA", want: attest.ErrUntrustedRoot, build: func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			n, err := f.otherCA.NewNode(sim.NodeConfig{Measurement: f.measurement})
			if err != nil {
				t.Fatal(err)
			}
			bd := newBound(t, now)
			return f.evidence(t, n, bd, now), bd.want
		}},
		{name: "sim evidence labelled sev-snp", want: attest.ErrUntrustedRoot, build: mutate(func(ev *attestv1.Evidence) { ev.Tee = attest.TEESevSnp })},
		{name: "unknown TEE type", want: attest.ErrUnsupportedTEE, build: mutate(func(ev *attestv1.Evidence) { ev.Tee = "sgx" })},
		{name: "debug guest", want: attest.ErrDebug, build: fromNode(sim.NodeConfig{Debug: true})},
		{name: "VMPL not allowed", want: attest.ErrVMPL, build: fromNode(sim.NodeConfig{VMPL: 2})},
		{name: "measurement not allowed", want: attest.ErrMeasurement, build: fromNode(sim.NodeConfig{Measurement: bytes.Repeat([]byte{1}, 48)})},
		{name: "bootloader TCB below minimum", want: attest.ErrTCBBootloader, build: fromNode(sim.NodeConfig{TCB: attest.TCBParts{Bootloader: 2, TEE: 9, SNP: 9, Microcode: 9}}),
			policy: func(p *attest.Policy) { p.MinimumTCB = attest.TCBMinimum{Bootloader: 3, TEE: 1, SNP: 1, Microcode: 1} }},
		{name: "TEE TCB below minimum", want: attest.ErrTCBTEE, build: fromNode(sim.NodeConfig{TCB: attest.TCBParts{Bootloader: 9, TEE: 0, SNP: 9, Microcode: 9}}),
			policy: func(p *attest.Policy) { p.MinimumTCB = attest.TCBMinimum{Bootloader: 1, TEE: 1, SNP: 1, Microcode: 1} }},
		{name: "SNP TCB below minimum", want: attest.ErrTCBSNP, build: fromNode(sim.NodeConfig{TCB: attest.TCBParts{Bootloader: 9, TEE: 9, SNP: 7, Microcode: 9}}),
			policy: func(p *attest.Policy) { p.MinimumTCB = attest.TCBMinimum{Bootloader: 1, TEE: 1, SNP: 8, Microcode: 1} }},
		{name: "microcode TCB below minimum", want: attest.ErrTCBMicrocode, build: fromNode(sim.NodeConfig{TCB: attest.TCBParts{Bootloader: 9, TEE: 9, SNP: 9, Microcode: 200}}),
			policy: func(p *attest.Policy) {
				p.MinimumTCB = attest.TCBMinimum{Bootloader: 1, TEE: 1, SNP: 1, Microcode: 210}
			}},
		{name: "chip ID not in the allowlist", want: attest.ErrChipID, build: fromNode(sim.NodeConfig{}),
			policy: func(p *attest.Policy) { p.ChipIDs = []attest.HexBytes{good.ChipID()} }},
		{name: "SMT when forbidden", want: attest.ErrSMT, build: fromNode(sim.NodeConfig{SMT: true}),
			policy: func(p *attest.Policy) { p.AllowSMT = false }},
		{name: "migration agent when forbidden", want: attest.ErrMigrationAgent, build: fromNode(sim.NodeConfig{MigrationAgent: true})},
		{name: "evidence older than the maximum age", want: attest.ErrEvidenceTooOld, verifyNow: now.Add(11 * time.Minute), build: fromNode(sim.NodeConfig{})},
		{name: "evidence from the future", want: attest.ErrEvidenceFromFuture, verifyNow: now.Add(-5 * time.Minute), build: fromNode(sim.NodeConfig{})},
		{name: "wrong nonce (another challenge)", want: attest.ErrWrongNonce, build: func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			bd := newBound(t, now)
			ev := f.evidence(t, good, bd, now)
			bd.want.Challenge, _ = attest.NewChallenge(now)
			return ev, bd.want
		}},
		{name: "wrong nonce (another node name)", want: attest.ErrWrongNonce, build: func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			bd := newBound(t, now)
			ev := f.evidence(t, good, bd, now)
			bd.want.Name = "node-b"
			return ev, bd.want
		}},
		{name: "wrong key", want: attest.ErrWrongKey, build: func(t *testing.T) (*attestv1.Evidence, attest.Expect) {
			bd := newBound(t, now)
			ev := f.evidence(t, good, bd, now)
			bd.want.Key = randBytes(t, 32)
			return ev, bd.want
		}},
		{name: "binding swapped after signing", want: attest.ErrBinding, build: mutate(func(ev *attestv1.Evidence) { ev.Binding.Key[0] ^= 1 })},
		{name: "replayed report under a new challenge", want: attest.ErrBinding, build: mutate(func(ev *attestv1.Evidence) {
			ev.Binding.Challenge, _ = attest.NewChallenge(now)
		})},
		{name: "expired VCEK", want: attest.ErrCertExpired, build: fromNode(sim.NodeConfig{VCEKIssued: now.AddDate(-8, 0, 0)})},
		{name: "VCEK is garbage", want: attest.ErrMalformedChain, build: mutate(func(ev *attestv1.Evidence) { ev.Chain.Vcek = []byte("not a certificate") })},
	}
	if len(cases) < 20 {
		t.Fatalf("only %d cases", len(cases))
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := f.simPolicy()
			if c.amd {
				p = amdPolicy(true)
			}
			if c.policy != nil {
				c.policy(p)
			}
			vnow := now
			if !c.verifyNow.IsZero() {
				vnow = c.verifyNow
			}
			v := f.verifier(t, p, vnow)
			ev, want := c.build(t)
			before := proto.Clone(ev)
			var err error
			if want.Purpose == "" {
				_, err = v.VerifyUnbound(ev)
			} else {
				_, err = v.Verify(ev, want)
			}
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			// The message names the reason, and the label is stable.
			if !strings.Contains(err.Error(), c.want.Error()) {
				t.Errorf("message %q does not name %q", err, c.want)
			}
			if attest.Reason(err) == "other" {
				t.Errorf("no reason label for %v", err)
			}
			if !proto.Equal(before, ev) {
				t.Errorf("verification modified the evidence")
			}
		})
	}
}

// TestChainVerdictCached checks the cache is used yet still enforces the
// certificate's validity period.
func TestChainVerdictCached(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	n := f.node(t, sim.NodeConfig{})
	clock := now
	p := f.simPolicy()
	p.MaxEvidenceAge = attest.Duration(attest.MaxMaxEvidenceAge) // the chain check comes first anyway
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	bd := newBound(t, now)
	ev := f.evidence(t, n, bd, now)
	if _, err := v.Verify(ev, bd.want); err != nil {
		t.Fatal(err)
	}
	clock = n.VCEK().NotAfter.Add(time.Hour)
	if _, err := v.Verify(ev, bd.want); !errors.Is(err, attest.ErrCertExpired) {
		t.Fatalf("after VCEK expiry (cached chain): err = %v, want ErrCertExpired", err)
	}
}

func TestPolicyChangesVerdict(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	n := f.node(t, sim.NodeConfig{})
	bd := newBound(t, now)
	ev := f.evidence(t, n, bd, now)
	if _, err := f.verifier(t, f.simPolicy(), now).Verify(ev, bd.want); err != nil {
		t.Fatal(err)
	}
	tight := f.simPolicy()
	tight.Measurements = []attest.HexBytes{bytes.Repeat([]byte{2}, 48)}
	if _, err := f.verifier(t, tight, now).Verify(ev, bd.want); !errors.Is(err, attest.ErrMeasurement) {
		t.Fatalf("tightened policy: err = %v, want ErrMeasurement", err)
	}
}

// TestCachedVerdictStillChecksShippedChain: a VCEK already verified once
// does not let a later report ship a chain that does not link.
func TestCachedVerdictStillChecksShippedChain(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	n := f.node(t, sim.NodeConfig{})
	v := f.verifier(t, f.simPolicy(), now)
	bd := newBound(t, now)
	ev := f.evidence(t, n, bd, now)
	if _, err := v.Verify(ev, bd.want); err != nil {
		t.Fatal(err)
	}
	ev.Chain.Ask = f.otherCA.ASK().Raw
	if _, err := v.Verify(ev, bd.want); !errors.Is(err, attest.ErrBrokenChain) {
		t.Fatalf("err = %v, want ErrBrokenChain", err)
	}
}
