package attest_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
)

// padded returns raw followed by zeros up to n bytes, as quote-generation
// stacks return a quote in a fixed-size buffer (5006 bytes from QGS, a
// page or more from configfs-tsm).
func padded(t *testing.T, raw []byte, n int) []byte {
	t.Helper()
	if n < len(raw) {
		t.Fatalf("buffer of %d bytes is shorter than the %d-byte quote", n, len(raw))
	}
	return append(bytes.Clone(raw), make([]byte, n-len(raw))...)
}

// TestTDXPaddedQuotesVerify: v4 and v5 quotes zero-padded to 5006- and
// 8000-byte buffers verify with the same claims (report digest included)
// as the exact quote; one non-zero byte anywhere in the padding is
// trailing_data; input over 64 KiB is refused before it is parsed.
func TestTDXPaddedQuotesVerify(t *testing.T) {
	for _, f := range []string{"quote_v4.dat", "quote_v5.dat"} {
		t.Run(f, func(t *testing.T) {
			raw := readTDX(t, f)
			at := tdxV4At
			if strings.Contains(f, "v5") {
				at = tdxV5At
			}
			v := tdxVerifier(t, tdxPolicy(t, raw, ""), at, nil)
			exact, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: raw})
			if err != nil {
				t.Fatal(err)
			}
			digest := sha256.Sum256(raw)
			if !bytes.Equal(exact.ReportDigest, digest[:]) {
				t.Fatal("report digest of the exact quote is not SHA-256 of its bytes")
			}
			for _, size := range []int{5006, 8000} {
				if size < len(raw) {
					continue
				}
				p := padded(t, raw, size)
				c, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: p})
				if err != nil {
					t.Fatalf("quote padded to %d bytes: %v", size, err)
				}
				if !bytes.Equal(c.ReportDigest, exact.ReportDigest) || !bytes.Equal(c.Measurement, exact.Measurement) || !bytes.Equal(c.ReportData, exact.ReportData) {
					t.Fatalf("padded to %d: claims differ from the exact quote's", size)
				}
				trimmed, err := attest.TrimTDXQuote(p)
				if err != nil || !bytes.Equal(trimmed, raw) {
					t.Fatalf("TrimTDXQuote(padded to %d) = %d bytes, %v; want the %d-byte quote", size, len(trimmed), err, len(raw))
				}
				if size == len(raw) {
					continue // the v5 quote fills QGS's 5006-byte buffer exactly
				}
				for _, off := range []int{len(raw), size - 1} {
					dirty := bytes.Clone(p)
					dirty[off] = 1
					_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: dirty})
					wantReason(t, err, attest.ErrTrailingData)
				}
			}
			_, err = v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: padded(t, raw, attest.MaxTDXQuoteInput)})
			if err != nil {
				t.Fatalf("quote padded to exactly %d bytes: %v", attest.MaxTDXQuoteInput, err)
			}
			_, err = v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: padded(t, raw, attest.MaxTDXQuoteInput+1)})
			wantReason(t, err, attest.ErrMalformedReport)
		})
	}
}

// craftedTDX returns the quote with the little-endian field of width w at
// offset off set to val.
func craftedTDX(raw []byte, off, w int, val uint32) []byte {
	out := bytes.Clone(raw)
	switch w {
	case 2:
		binary.LittleEndian.PutUint16(out[off:], uint16(val))
	case 4:
		binary.LittleEndian.PutUint32(out[off:], val)
	}
	return out
}

// tdxCrashInputs are quotes whose length fields lie, with the refusal each
// must get. The crash input of issue 21 comes first; it, the other two
// short signed-data cases, the 10-byte certification data padded to the
// minimum and the QE auth data past the end panic go-tdx-guest's parser
// when it sees them unchecked (slice bounds out of range); the others
// reach its own checks.
func tdxCrashInputs(t testing.TB) []struct {
	name string
	raw  []byte
	want error
} {
	v4, v5, crash := readTDXFile(t, "quote_v4.dat"), readTDXFile(t, "quote_v5.dat"), readTDXFile(t, "crash_v5_signed48.dat")
	const v4Signed, v5Signed = 632, 702 // offset of the signed data size
	v4Cert, v5Cert := v4Signed+4+128, v5Signed+4+128
	qeAuth := func(cert int) int { return cert + 6 + 384 + 64 }
	return []struct {
		name string
		raw  []byte
		want error
	}{
		{"issue 21: v5, signed data of 48 bytes (1026 bytes in all)", crash, attest.ErrMalformed},
		{"v4, signed data of 48 bytes padded to the v4 minimum", append(craftedTDX(v4[:v4Signed+4], v4Signed, 4, 48), make([]byte, 1020-v4Signed-4)...), attest.ErrMalformed},
		{"v5, signed data size negative as int32", craftedTDX(v5, v5Signed, 4, 0xffffff00), attest.ErrMalformed},
		{"v5, signed data size past the end", craftedTDX(v5, v5Signed, 4, uint32(len(v5))), attest.ErrMalformed},
		{"v5, body size lying", craftedTDX(v5, 50, 4, 100), attest.ErrMalformed},
		{"v5, body type 1", craftedTDX(v5, 48, 2, 1), attest.ErrMalformedReport},
		{"v5, cut inside the body", v5[:600], attest.ErrMalformed},
		{"v4, certification data size lying", craftedTDX(v4, v4Cert+2, 4, 10), attest.ErrMalformed},
		{"v4, certification data of 10 bytes", craftedTDX(craftedTDX(v4[:v4Cert+16], v4Cert+2, 4, 10), v4Signed, 4, 128+16), attest.ErrMalformed},
		{"v4, certification data of 10 bytes, zero-padded to the v4 minimum", append(craftedTDX(craftedTDX(v4[:v4Cert+16], v4Cert+2, 4, 10), v4Signed, 4, 128+16), make([]byte, 1020-v4Cert-16)...), attest.ErrMalformed},
		{"v5, QE auth data past the end", craftedTDX(v5, qeAuth(v5Cert), 2, 0xffff), attest.ErrMalformed},
		{"v4, PCK chain size lying", craftedTDX(v4, qeAuth(v4Cert)+2+32+2, 4, 7), attest.ErrMalformed},
		{"v4, certification data type 5", craftedTDX(v4, v4Cert, 2, 5), attest.ErrMalformedReport},
	}
}

func readTDXFile(t testing.TB, name string) []byte {
	t.Helper()
	return readTDX(t, name)
}

// TestTDXCrashInputsRefused: every quote in tdxCrashInputs is refused with
// its reason by ParseTDXQuote and by the verifier, and nothing panics.
func TestTDXCrashInputsRefused(t *testing.T) {
	raw := readTDX(t, "quote_v5.dat")
	v := tdxVerifier(t, tdxPolicy(t, raw, ""), tdxV5At, nil)
	for _, tc := range tdxCrashInputs(t) {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := attest.ParseTDXQuote(tc.raw); !errors.Is(err, tc.want) {
				t.Fatalf("ParseTDXQuote: %v (reason %s), want %v", err, attest.Reason(err), tc.want)
			}
			_, err := v.VerifyUnbound(&attestv1.Evidence{Tee: attest.TEETDX, Report: tc.raw})
			wantReason(t, err, tc.want)
		})
	}
}
