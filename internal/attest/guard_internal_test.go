package attest

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
)

// TestParserPanicIsMalformed: when go-tdx-guest's parser panics on an
// input the length checks let through, the verifier refuses the evidence
// as malformed and names the panic; the process carries on.
func TestParserPanicIsMalformed(t *testing.T) {
	raw, err := os.ReadFile("testdata/tdx/quote_v5.dat")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePolicy([]byte("tdx:\n  mrtds: [\"" + strings.Repeat("ab", 48) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(p, Options{Now: func() time.Time { return time.Date(2026, 2, 3, 1, 0, 0, 0, time.UTC) }})
	if err != nil {
		t.Fatal(err)
	}
	saved := quoteToProto
	t.Cleanup(func() { quoteToProto = saved })
	quoteToProto = func([]byte) (any, error) { panic("slice bounds out of range [:64] with capacity 48") }
	_, err = v.VerifyUnbound(&attestv1.Evidence{Tee: TEETDX, Report: raw})
	if !errors.Is(err, ErrMalformed) || Reason(err) != "malformed" || !strings.Contains(err.Error(), "recovered panic: slice bounds") {
		t.Fatalf("err = %v (reason %s), want a malformed refusal naming the panic", err, Reason(err))
	}
	quoteToProto = saved
	if _, err := v.VerifyUnbound(&attestv1.Evidence{Tee: TEETDX, Report: raw}); !errors.Is(err, ErrMeasurement) {
		t.Fatalf("the same verifier afterwards: %v, want the honest quote refused only for its MRTD", err)
	}
}

// TestVerifyBoundaryRecovers: a panic anywhere under verifyReport (the
// evidence-verification boundary every caller goes through) is a
// malformed refusal, logged at error level with its stack.
func TestVerifyBoundaryRecovers(t *testing.T) {
	var logs bytes.Buffer
	v := &Verifier{log: slog.New(slog.NewTextHandler(&logs, nil))}
	ev := &attestv1.Evidence{Tee: TEETDX, Report: make([]byte, 1026)}
	c, rd, err := func() (c *Claims, rd []byte, err error) {
		defer v.recoverEvidence(ev, &c, &rd, &err)
		c, rd = &Claims{}, []byte{1}
		var m map[string]int
		m["x"] = 1 // a nil-map write: a runtime panic like a parser's
		return c, rd, nil
	}()
	if c != nil || rd != nil || Reason(err) != "malformed" || !strings.Contains(err.Error(), "1026-byte report") {
		t.Fatalf("claims %v, report data %x, err %v (reason %s)", c, rd, err, Reason(err))
	}
	if out := logs.String(); !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "refused as malformed") || !strings.Contains(out, "guard_internal_test.go") {
		t.Fatalf("log does not record the panic with its stack:\n%s", out)
	}
}
