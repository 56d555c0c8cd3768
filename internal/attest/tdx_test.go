package attest_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
)

// Real quotes from go-tdx-guest's testdata (copied into testdata/tdx) and
// the times at which their PCK chains and collateral are valid.
var (
	tdxV4At = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)
	tdxV5At = time.Date(2026, time.February, 3, 1, 0, 0, 0, time.UTC)
)

func readTDX(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/tdx/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tdxPolicy accepts the real quote's MRTD under Intel's root.
func tdxPolicy(t *testing.T, raw []byte, extra string) *attest.Policy {
	t.Helper()
	q, err := attest.ParseTDXQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	y := "tdx:\n  mrtds: [\"" + hexs(q.Body.GetMrTd()) + "\"]\n" + extra
	p, err := attest.ParsePolicy([]byte(y))
	if err != nil {
		t.Fatalf("policy %q: %v", y, err)
	}
	return p
}

func hexs(b []byte) string {
	const d = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, d[c>>4], d[c&15])
	}
	return string(out)
}

func tdxVerifier(t *testing.T, p *attest.Policy, at time.Time, coll *attest.TDXCollateral) *attest.Verifier {
	t.Helper()
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return at }, TDXCollateral: coll})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func wantReason(t *testing.T, err error, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got %v (reason %s), want %v (reason %s)", err, attest.Reason(err), want, attest.Reason(want))
	}
	t.Logf("refused as %s: %v", attest.Reason(err), err)
}

// TestTDXRealQuotesVerifyOffline: go-tdx-guest's real v4 and v5 quotes
// verify with the chain they carry, no network, no collateral.
func TestTDXRealQuotesVerifyOffline(t *testing.T) {
	for _, tc := range []struct {
		file    string
		at      time.Time
		version uint32
	}{{"quote_v4.dat", tdxV4At, 4}, {"quote_v5.dat", tdxV5At, 5}} {
		t.Run(tc.file, func(t *testing.T) {
			raw := readTDX(t, tc.file)
			if !attest.IsTDXQuote(raw) {
				t.Fatal("IsTDXQuote: false for a real quote")
			}
			v := tdxVerifier(t, tdxPolicy(t, raw, ""), tc.at, nil)
			q, _ := attest.ParseTDXQuote(raw)
			c, err := v.VerifyExactReportData(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw}, q.Body.GetReportData())
			if err != nil {
				t.Fatal(err)
			}
			if c.TEE != attest.TEETDX || c.Product != attest.ProductTDX || c.Root != attest.RootIntel || c.Simulated || c.TDX == nil || c.TDX.QuoteVersion != tc.version {
				t.Errorf("claims %+v", c)
			}
			if !bytes.Equal(c.Measurement, q.Body.GetMrTd()) || len(c.TDX.FMSPC) != 6 || len(c.TDX.PPID) != 16 || len(c.TDX.RTMRs) != 4 {
				t.Errorf("claims fields %+v", c.TDX)
			}
			if c.TDX.TCBStatus != "" {
				t.Errorf("TCB status %q without collateral", c.TDX.TCBStatus)
			}
		})
	}
}

// TestTDXReportDataFlipRefused: one flipped REPORTDATA bit breaks the
// quote signature.
func TestTDXReportDataFlipRefused(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	v := tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV4At, nil)
	bad := bytes.Clone(raw)
	bad[48+520] ^= 1 // REPORTDATA starts 520 bytes into the v4 body
	_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: bad})
	wantReason(t, err, attest.ErrSignature)
}

// TestTDXReportDataMismatchRefused: a genuine quote whose REPORTDATA is not
// the expected binding is refused as a binding failure.
func TestTDXReportDataMismatchRefused(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	v := tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV4At, nil)
	_, err := v.VerifyExactReportData(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw}, make([]byte, 64))
	wantReason(t, err, attest.ErrBinding)
	nonce, key := sha256.Sum256([]byte("n")), sha256.Sum256([]byte("k"))
	_, err = v.VerifyReportData(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw}, nonce[:], key[:])
	wantReason(t, err, attest.ErrBinding)
}

// TestTDXWrongMRTDRefused: a genuine quote of an image the policy does not
// list is refused.
func TestTDXWrongMRTDRefused(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	p, err := attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + strings.Repeat("ab", 48) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = tdxVerifier(t, p, tdxV4At, nil).VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
	wantReason(t, err, attest.ErrMeasurement)
}

// TestTDXTrailingBytesRefused: go-tdx-guest ignores bytes after the signed
// data; confmesh refuses any but zero padding, so one quote has one
// encoding.
func TestTDXTrailingBytesRefused(t *testing.T) {
	for _, f := range []string{"quote_v4.dat", "quote_v5.dat"} {
		raw := readTDX(t, f)
		at := tdxV4At
		if strings.Contains(f, "v5") {
			at = tdxV5At
		}
		v := tdxVerifier(t, tdxPolicy(t, raw, ""), at, nil)
		_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: append(bytes.Clone(raw), 0xff)})
		wantReason(t, err, attest.ErrTrailingData)
	}
}

// TestTDXSimulatedClaimRefused: a real quote labelled sim-tdx (or with no
// TDX section in the policy) is refused.
func TestTDXPolicyWithoutTDXRefuses(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	v := tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV4At, nil)
	_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEESimTDX, Report: raw})
	wantReason(t, err, attest.ErrUntrustedRoot)
	p, err := attest.ParsePolicy([]byte("measurements: [\"" + strings.Repeat("ab", 48) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = tdxVerifier(t, p, tdxV4At, nil).VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
	wantReason(t, err, attest.ErrUnsupportedTEE)
}

// TestTDXExpiredChainRefused: the same quote long after its PCK
// certificate expired.
func TestTDXExpiredChainRefused(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	v := tdxVerifier(t, tdxPolicy(t, raw, ""), time.Date(2053, 1, 1, 0, 0, 0, 0, time.UTC), nil)
	_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
	wantReason(t, err, attest.ErrCertExpired)
}

// TestTDXOutOfDateTCBRefused: with Intel's real collateral for the v4
// quote's platform, the TCB status is computed and the platform (whose SVNs
// are below the UpToDate level) is refused; so is expired collateral.
func TestTDXOutOfDateTCBRefused(t *testing.T) {
	raw := readTDX(t, "quote_v4.dat")
	coll, err := attest.LoadCollateral("testdata/tdx/collateral_v4.json")
	if err != nil {
		t.Fatal(err)
	}
	ev := &attestv1.Evidence{Tee: attest.TEETDX, Report: raw}
	_, err = tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV4At, coll).VerifyUnbound(ev)
	wantReason(t, err, attest.ErrTCBStatus)
	// Even a policy accepting OutOfDate refuses a platform no level matches.
	_, err = tdxVerifier(t, tdxPolicy(t, raw, "  acceptedTCBStatuses: [UpToDate, OutOfDate]\n"), tdxV4At, coll).VerifyUnbound(ev)
	wantReason(t, err, attest.ErrTCBStatus)
	// Collateral past its nextUpdate is refused.
	_, err = tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV4At.AddDate(0, 2, 0), coll).VerifyUnbound(ev)
	wantReason(t, err, attest.ErrCollateral)
}

// FuzzParseTDXQuote: no input panics the TDX parser (nor reaches
// go-tdx-guest's parser in a shape that makes it panic: the recover behind
// the length checks must never fire), and whatever it accepts is a quote
// followed by nothing but zero padding. Seeds: the real quotes, and the
// crash inputs of tdxCrashInputs (also under testdata/fuzz/FuzzParseTDXQuote).
func FuzzParseTDXQuote(f *testing.F) {
	for _, name := range []string{"quote_v4.dat", "quote_v5.dat"} {
		b, err := os.ReadFile("testdata/tdx/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(append(bytes.Clone(b), make([]byte, 8000-len(b))...))
	}
	for _, c := range tdxCrashInputs(f) {
		f.Add(c.raw)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		q, err := attest.ParseTDXQuote(raw)
		if err != nil {
			if attest.Reason(err) == "other" {
				t.Fatalf("unnamed refusal: %v", err)
			}
			if strings.Contains(err.Error(), "recovered panic") {
				t.Fatalf("the length checks let through an input that panics go-tdx-guest: %v", err)
			}
			return
		}
		if !attest.IsTDXQuote(raw) || len(q.Body.GetReportData()) != 64 {
			t.Fatalf("accepted a quote without a TDX header or REPORTDATA")
		}
		if !bytes.Equal(raw[:len(q.Raw)], q.Raw) || !bytes.Equal(raw[len(q.Raw):], make([]byte, len(raw)-len(q.Raw))) {
			t.Fatalf("accepted %d bytes as a %d-byte quote followed by something other than zero padding", len(raw), len(q.Raw))
		}
		if len(raw) >= attest.MaxTDXQuoteInput {
			return
		}
		if _, err := attest.ParseTDXQuote(append(bytes.Clone(raw), 1)); !errors.Is(err, attest.ErrTrailingData) {
			t.Fatalf("trailing non-zero byte: %v", err)
		}
		p, err := attest.ParseTDXQuote(append(bytes.Clone(raw), 0))
		if err != nil || !bytes.Equal(p.Raw, q.Raw) {
			t.Fatalf("a zero byte of padding changed the parse: %v", err)
		}
	})
}

// FuzzVerifyTDX feeds raw bytes to the verifier as TDX evidence, under a
// policy accepting the real v5 quote at its time: past the parser this
// reaches go-tdx-guest's chain extraction, PCK extension parsing and
// signature checks. Nothing may panic or be recovered from (a recovered
// panic is a bug in the checks before a third-party parser), every
// refusal carries a reason, and only the two real quotes (padded or not)
// can verify.
func FuzzVerifyTDX(f *testing.F) {
	v5 := readTDX(f, "quote_v5.dat")
	v4 := readTDX(f, "quote_v4.dat")
	f.Add(v5)
	f.Add(v4)
	f.Add(append(bytes.Clone(v4), make([]byte, 5006-len(v4))...))
	for _, c := range tdxCrashInputs(f) {
		f.Add(c.raw)
	}
	p, err := attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + hexs(v5[48+6+136:48+6+184]) + "\"]\n"))
	if err != nil {
		f.Fatal(err)
	}
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return tdxV5At }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
		if err == nil {
			if !bytes.HasPrefix(raw, v5[:len(v5)-1]) && !bytes.HasPrefix(raw, v4[:len(v4)-1]) {
				t.Fatalf("a quote that is not one of the real ones verified: %+v", c)
			}
			return
		}
		if attest.Reason(err) == "other" {
			t.Fatalf("unnamed refusal: %v", err)
		}
		if strings.Contains(err.Error(), "recovered panic") {
			t.Fatalf("verification panicked: %v", err)
		}
	})
}

// TestTDXV5CollateralWithExpiredQEIdentityRefused: go-tdx-guest's v5
// collateral pairs a current TCB info with a QE identity that expired in
// 2023; at the v5 quote's time the collateral is refused, not ignored.
func TestTDXV5CollateralWithExpiredQEIdentityRefused(t *testing.T) {
	raw := readTDX(t, "quote_v5.dat")
	coll, err := attest.LoadCollateral("testdata/tdx/collateral_v5.json")
	if err != nil {
		t.Fatal(err)
	}
	_, err = tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV5At, coll).VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
	wantReason(t, err, attest.ErrCollateral)
	if !strings.Contains(err.Error(), "QeIdentity has expired") {
		t.Errorf("refused for another reason: %v", err)
	}
}
