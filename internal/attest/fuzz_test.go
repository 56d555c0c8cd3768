package attest_test

// Fuzz targets for everything in package attest that reads untrusted bytes:
// raw reports, encoded evidence, policy files, and (FuzzVerify) a genuine
// signed report with one byte changed. The in-code seeds below and the files
// under testdata/fuzz/<FuzzName>/ run as ordinary tests under `go test`;
// `make fuzz` (or go test -run '^$' -fuzz '^FuzzX$' ./internal/attest/)
// explores from them.
//
// This is the external test package (attest_test) so that the seeds can be
// built with package sim, which itself imports attest.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/verify/testdata"
	"google.golang.org/protobuf/proto"
)

// fzFixture is one simulated node's evidence and a verifier that accepts it,
// built once per process: RSA key generation for the simulated CA dominates.
type fzFixture struct {
	evidence *attestv1.Evidence // bound with fzBinding, verifies at fzNow
	encoded  []byte             // MarshalEvidence(evidence)
	verifier *attest.Verifier
	policy   []byte // the YAML the verifier was built from
	want     attest.Expect
}

var (
	fzOnce sync.Once
	fzFix  *fzFixture
	fzErr  error
)

// fzNow is the fixture's frozen clock, set once when it is built (the
// simulated CA's certificates start an hour before that): the challenge is
// issued at fzNow and the verifier reads the time as fzNow, so evidence age
// is always zero and a verdict never depends on when an input runs.
var fzNow time.Time

func fzSetup(tb testing.TB) *fzFixture {
	tb.Helper()
	fzOnce.Do(func() { fzFix, fzErr = fzBuild() })
	if fzErr != nil {
		tb.Fatalf("build fuzz fixture: %v", fzErr)
	}
	return fzFix
}

func fzBuild() (*fzFixture, error) {
	fzNow = time.Now().Truncate(time.Second)
	ca, err := sim.NewTestCA("")
	if err != nil {
		return nil, err
	}
	measurement := bytes.Repeat([]byte{0x4d}, abi.MeasurementSize)
	node, err := ca.NewNode(sim.NodeConfig{Measurement: measurement})
	if err != nil {
		return nil, err
	}
	challenge := make([]byte, attest.ChallengeSize)
	binary.BigEndian.PutUint64(challenge, uint64(fzNow.Unix()))
	for i := 8; i < len(challenge); i++ {
		challenge[i] = byte(i)
	}
	b := attest.Binding{
		Purpose:         attest.PurposeJoin,
		Challenge:       challenge,
		IdentityKeyHash: bytes.Repeat([]byte{0x1d}, 32),
		Name:            "node-a",
		Key:             bytes.Repeat([]byte{0x6b}, attest.KeySize),
	}
	ev, err := attest.Attest(node, b, fzNow)
	if err != nil {
		return nil, err
	}
	encoded, err := attest.MarshalEvidence(ev)
	if err != nil {
		return nil, err
	}
	// The root file lives in the OS temp dir for the life of the process;
	// the verifier reads it once, in NewVerifier.
	dir, err := os.MkdirTemp("", "confmesh-fuzz-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, sim.RootFile)
	if err := os.WriteFile(root, ca.RootPEM(), 0o644); err != nil {
		return nil, err
	}
	policy := fmt.Appendf(nil, "measurements: [%x]\ntrustedRoots:\n  - kind: simulated\n    file: %q\n", measurement, root)
	p, err := attest.ParsePolicy(policy)
	if err != nil {
		return nil, err
	}
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return fzNow }, Logger: fzQuietLogger()})
	if err != nil {
		return nil, err
	}
	want := attest.Expect{Purpose: b.Purpose, Key: b.Key, IdentityKeyHash: b.IdentityKeyHash, Name: b.Name, Challenge: b.Challenge}
	if _, err := v.Verify(ev, want); err != nil {
		return nil, fmt.Errorf("the unmodified fixture does not verify: %w", err)
	}
	return &fzFixture{evidence: ev, encoded: encoded, verifier: v, policy: policy, want: want}, nil
}

// fzReportSeeds are raw-report seeds: genuine ones (simulated and AMD's
// example), and the shapes DESIGN.md names as bad input.
func fzReportSeeds(fix *fzFixture) [][]byte {
	good := fix.evidence.GetReport()
	amd := testdata.AttestationBytes[:abi.ReportSize]
	withVersion := func(raw []byte, v uint32) []byte {
		out := bytes.Clone(raw)
		binary.LittleEndian.PutUint32(out, v)
		return out
	}
	withByte := func(raw []byte, off int, b byte) []byte {
		out := bytes.Clone(raw)
		out[off] = b
		return out
	}
	return [][]byte{
		good,
		bytes.Clone(amd),
		nil,
		{0x02, 0x00, 0x00, 0x00},
		good[:abi.ReportSize-1],      // truncated by one byte
		good[:0x2A0],                 // signed part only
		append(bytes.Clone(good), 0), // one byte too long
		bytes.Repeat([]byte{0xff}, abi.ReportSize), // garbage
		make([]byte, abi.ReportSize),               // all zero (version 0)
		withVersion(good, 1),                       // too old
		withVersion(good, 6),                       // too new
		withVersion(amd, 3),                        // v2 report relabelled v3
		withByte(good, 0x34, 2),                    // signature algorithm 2
		withByte(good, 0x48, 0x04),                 // signed by a VLEK
		withByte(good, 0x48, 0x1c),                 // no signer
		withByte(good, 0x4c, 1),                    // reserved byte set
		withByte(good, 0x18A, 0x71),                // CPUID stepping with high nibble
		withByte(good, abi.ReportSize-1, 1),        // beyond the ECDSA signature
	}
}

// FuzzParseReport: ParseReport never panics, and a report it accepts is
// exactly 1184 bytes whose proto re-encodes to the input.
//
// Round trip, checked: abi.ReportToProto insists that every reserved
// (must-be-zero) range is zero, and ParseReport insists on ECDSA P-384 whose
// unused signature tail is must-be-zero too, so re-encoding with
// abi.ReportToAbiBytes reproduces all 1184 bytes, signed part (0x000-0x29F)
// and signature alike, with one exception: in v3+ reports byte 0x18A is
// CPUID_STEP, and go-sev-guest keeps it in Cpuid1EaxFms whose stepping field
// is 4 bits wide, so the byte's high nibble is dropped (a hardware report
// always has it zero; a hand-made one that sets it still parses). The
// assertion therefore compares everything but that nibble. Signature checks
// use the raw bytes, never the re-encoding, so the loss cannot make a
// forged report verify.
func FuzzParseReport(f *testing.F) {
	for _, s := range fzReportSeeds(fzSetup(f)) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := attest.ParseReport(raw)
		if err != nil {
			if r != nil {
				t.Fatalf("ParseReport returned a report with error %v", err)
			}
			if reason := attest.Reason(err); reason != "malformed_report" && reason != "unsupported_version" {
				t.Fatalf("rejection %q has reason %q, want malformed_report or unsupported_version", err, reason)
			}
			return
		}
		if len(raw) != abi.ReportSize {
			t.Fatalf("ParseReport accepted %d bytes, a report is %d", len(raw), abi.ReportSize)
		}
		out, err := abi.ReportToAbiBytes(r)
		if err != nil {
			t.Fatalf("accepted report does not re-encode: %v", err)
		}
		if len(out) != abi.ReportSize {
			t.Fatalf("re-encoded report is %d bytes, want %d", len(out), abi.ReportSize)
		}
		want := bytes.Clone(raw)
		if r.GetVersion() >= abi.ReportVersion3 {
			want[0x18A] &= 0x0f // see the function comment
		}
		if !bytes.Equal(out, want) {
			for i := range out {
				if out[i] != want[i] {
					t.Fatalf("re-encoded report differs at offset %#x: %#02x, input %#02x (signed part ends at 0x2a0)", i, out[i], want[i])
				}
			}
		}
		if !bytes.Equal(abi.SignedComponent(out), abi.SignedComponent(want)) {
			t.Fatal("signed component does not round-trip")
		}
		again, err := attest.ParseReport(out)
		if err != nil {
			t.Fatalf("re-encoded report no longer parses: %v", err)
		}
		if !proto.Equal(again, r) {
			t.Fatal("parse(encode(parse(raw))) != parse(raw)")
		}
	})
}

// FuzzUnmarshalEvidence: UnmarshalEvidence never panics, every rejection is
// labelled malformed_evidence, and accepted evidence survives an encode and
// decode unchanged (proto.Equal, which also compares unknown fields).
func FuzzUnmarshalEvidence(f *testing.F) {
	fix := fzSetup(f)
	amd, _ := attest.MarshalEvidence(&attestv1.Evidence{
		Tee:    attest.TEESevSnp,
		Report: testdata.AttestationBytes[:abi.ReportSize],
		Chain:  &attestv1.CertChain{Vcek: testdata.VcekBytes},
	})
	noTEE := proto.Clone(fix.evidence).(*attestv1.Evidence)
	noTEE.Tee = ""
	noTEEBytes, _ := attest.MarshalEvidence(noTEE)
	noReport := proto.Clone(fix.evidence).(*attestv1.Evidence)
	noReport.Report = nil
	noReportBytes, _ := attest.MarshalEvidence(noReport)
	for _, s := range [][]byte{
		fix.encoded,
		amd,
		nil,
		{0x0a, 0x07, 's', 'i', 'm', '-', 's', 'n', 'p'}, // tee only
		fix.encoded[:len(fix.encoded)/2],                // truncated
		noTEEBytes,
		noReportBytes,
		append(bytes.Clone(fix.encoded), 0xfa, 0x01, 0x02, 'h', 'i'), // unknown field 31
		bytes.Repeat([]byte{0xff}, 64),
		append(append([]byte(nil), fix.encoded...), fix.encoded...), // every field twice
		make([]byte, attest.MaxEvidenceSize+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := attest.UnmarshalEvidence(b)
		if err != nil {
			if ev != nil {
				t.Fatalf("UnmarshalEvidence returned evidence with error %v", err)
			}
			if reason := attest.Reason(err); reason != "malformed_evidence" {
				t.Fatalf("rejection %q has reason %q, want malformed_evidence", err, reason)
			}
			return
		}
		enc, err := attest.MarshalEvidence(ev)
		if err != nil {
			t.Fatalf("accepted evidence does not encode: %v", err)
		}
		again, err := attest.UnmarshalEvidence(enc)
		if err != nil {
			t.Fatalf("re-encoded evidence (%d bytes) is rejected: %v", len(enc), err)
		}
		if !proto.Equal(ev, again) {
			t.Fatalf("decode(encode(ev)) != ev:\n%v\n%v", ev, again)
		}
		enc2, err := attest.MarshalEvidence(again)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("deterministic encoding is not stable (err %v)", err)
		}
	})
}

// fzPolicySeeds are policy files: the fixture's, the documented examples'
// shapes, and malformed ones.
var fzPolicySeeds = []string{
	"measurements: [" + string(bytes.Repeat([]byte("ab"), 48)) + "]\n",
	`trustDomain: prod.example
measurements:
  - 0x` + string(bytes.Repeat([]byte("0F"), 48)) + `
  - ` + string(bytes.Repeat([]byte("1e"), 48)) + `
minimumTCB: {bootloader: 3, tee: 0, snp: 8, microcode: 115}
allowDebug: false
allowSMT: true
allowMigrationAgent: false
allowedVMPLs: [0, 1]
chipIDs: [` + string(bytes.Repeat([]byte("c1"), 64)) + `]
maxEvidenceAge: 45m
trustedRoots: [{kind: amd}, {kind: simulated, file: /etc/confmesh/sim/root.pem}]
`,
	"{\"measurements\": [\"" + string(bytes.Repeat([]byte("00"), 48)) + "\"], \"maxEvidenceAge\": \"1h30m\"}",
	"tdx:\n  mrtds: [\"" + string(bytes.Repeat([]byte("ab"), 48)) + "\"]\n  rtmrSets:\n    - [\"\", \"" + string(bytes.Repeat([]byte("a1"), 48)) + "\", \"\", \"\"]\n    - [\"\", \"" + string(bytes.Repeat([]byte("b1"), 48)) + "\", \"\", \"\"]\n",
	"tdx: {mrtds: [\"" + string(bytes.Repeat([]byte("ab"), 48)) + "\"], rtmrSets: [[], [null]]}\n",
	"",
	"   \n",
	"measurements: []\n",
	"measurements: [abcd]\n",
	"bogus: 1\n",
	"trustDomain: Bad/Domain\n",
	"allowedVMPLs: [4]\n",
	"maxEvidenceAge: -1s\n",
	"trustedRoots: [{kind: simulated}]\n",
	"trustedRoots: [{kind: amd, file: x}]\n",
	"minimumTCB: {microcode: 256}\n",
	"- just\n- a list\n",
	"measurements: &a [*a]\n",
	"\t\x00\xff",
}

// FuzzParsePolicy: ParsePolicy never panics, and an accepted policy renders
// (YAML) to a file that parses to the same policy: the rendering is a fixed
// point, so `confmesh policy check` output can be fed back as a policy.
func FuzzParsePolicy(f *testing.F) {
	f.Add(fzSetup(f).policy)
	for _, s := range fzPolicySeeds {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile("../../docs/examples/policy.yaml"); err == nil {
		f.Add(b)
	}
	if b, err := os.ReadFile("../../docs/examples/policy-sim.yaml"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := attest.ParsePolicy(data)
		if err != nil {
			if p != nil {
				t.Fatalf("ParsePolicy returned a policy with error %v", err)
			}
			return
		}
		out, err := p.YAML()
		if err != nil {
			t.Fatalf("accepted policy does not render: %v", err)
		}
		p2, err := attest.ParsePolicy(out)
		if err != nil {
			t.Fatalf("rendered policy is rejected: %v\n%s", err, out)
		}
		out2, err := p2.YAML()
		if err != nil {
			t.Fatalf("re-parsed policy does not render: %v", err)
		}
		if !bytes.Equal(out, out2) {
			t.Fatalf("policy rendering is not stable:\n%s\n---\n%s", out, out2)
		}
		if p.TrustsSimulated() != p2.TrustsSimulated() {
			t.Fatal("TrustsSimulated changed across a round trip")
		}
	})
}

// FuzzVerify takes the fixture's genuine simulated evidence and XORs one
// byte of its report (position pos mod 1184) with x. Only x == 0, the
// unmodified report, may verify; every other change must be rejected with a
// named reason (never "other"). The chain verdict is cached after the first
// input, so each input costs about one ECDSA verification.
func FuzzVerify(f *testing.F) {
	fix := fzSetup(f)
	for _, s := range []struct {
		pos uint16
		x   byte
	}{
		{0, 0},       // unmodified: verifies
		{0, 1},       // version
		{0x08, 0x01}, // guest policy ABI minor
		{0x0a, 0x08}, // guest policy: debug bit (bit 19)
		{0x30, 0x01}, // VMPL
		{0x40, 0x01}, // platform info: SMT_EN
		{0x48, 0x04}, // signer: VLEK
		{0x50, 0x80}, // REPORT_DATA
		{0x90, 0x01}, // measurement
		{0x180, 0x01},
		{0x18a, 0x10}, // CPUID stepping high nibble (lost by the proto, covered by the signature)
		{0x1a0, 0xff}, // chip ID
		{0x29f, 0x01}, // last signed byte
		{0x2a0, 0x01}, // signature R, lowest byte
		{0x2e7, 0x01}, // signature R, past 48 bytes (must-be-zero in practice)
		{0x2e8, 0x01}, // signature S
		{0x330, 0x01}, // beyond the signature
		{abi.ReportSize - 1, 0x80},
	} {
		f.Add(s.pos, s.x)
	}
	f.Fuzz(func(t *testing.T, pos uint16, x byte) {
		ev := proto.Clone(fix.evidence).(*attestv1.Evidence)
		i := int(pos) % abi.ReportSize
		ev.Report[i] ^= x
		c, err := fix.verifier.Verify(ev, fix.want)
		if x == 0 {
			if err != nil {
				t.Fatalf("the unmodified report is rejected: %v", err)
			}
			return
		}
		if err == nil {
			t.Fatalf("report with byte %#x xor %#02x verified: %+v", i, x, c)
		}
		if c != nil {
			t.Fatalf("Verify returned claims with error %v", err)
		}
		if reason := attest.Reason(err); reason == "other" {
			t.Fatalf("byte %#x xor %#02x: rejection carries no reason: %v", i, x, err)
		}
	})
}

// fzQuietLogger swallows the simulated-root warning, which the fixture
// triggers on purpose.
func fzQuietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
