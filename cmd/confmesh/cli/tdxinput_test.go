package cli

import (
	"os"
	"testing"
)

const tdxCrafted = "../../../internal/attest/testdata/tdx/crash_v5_signed48.dat"

// padTo returns raw followed by zero bytes up to n bytes, the way quote
// generation stacks hand a quote over in a fixed-size buffer.
func padTo(t *testing.T, raw []byte, n int) []byte {
	t.Helper()
	if len(raw) > n {
		t.Fatalf("quote is %d bytes, longer than the %d-byte buffer", len(raw), n)
	}
	return append(append([]byte(nil), raw...), make([]byte, n-len(raw))...)
}

// TestVerifyCraftedTDXQuote: the crash input of issue 21 (a v5 quote whose
// signed data is too short for its signature) is refused with a clear
// error and exit code 1, not a panic.
func TestVerifyCraftedTDXQuote(t *testing.T) {
	t.Parallel()
	r := run(t, "attest", "verify", "--report", tdxCrafted, "--at", tdxV5At)
	r.want(t, 1, "rejected: malformed:", "signed data")
	t.Logf("stderr: %s", r.stderr)
}

// TestVerifyPaddedTDXQuotes: real quote stacks pad the quote with zeros
// to a fixed buffer (5006 bytes from QGS, more from configfs-tsm). Padded
// v4 and v5 quotes verify, with the claims of the quote itself; one
// non-zero byte in the padding is trailing data; an input past the 64 KiB
// bound is refused before it is parsed.
func TestVerifyPaddedTDXQuotes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v4, err := os.ReadFile(tdxV4Quote)
	if err != nil {
		t.Fatal(err)
	}
	v5, err := os.ReadFile(tdxV5Quote)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		at   string
	}{{"v4", v4, "2023-07-01T01:00:00Z"}, {"v5", v5, tdxV5At}} {
		for _, size := range []int{5006, 8000} {
			if size < len(tc.raw) {
				continue
			}
			padded := padTo(t, tc.raw, size)
			f := writeFile(t, dir, tc.name+"-padded.dat", padded)
			run(t, "attest", "verify", "--report", f, "--at", tc.at).want(t, 0)
			if size == len(tc.raw) {
				continue // the v5 quote fills QGS's 5006-byte buffer exactly
			}
			padded[len(padded)-1] = 1
			f = writeFile(t, dir, tc.name+"-dirty.dat", padded)
			run(t, "attest", "verify", "--report", f, "--at", tc.at).want(t, 1, "rejected: trailing_data:", "non-zero byte 0x01")
		}
	}
	// The v5 quote with 8000-byte padding verifies with its own MRTD and
	// report data pinned, as the unpadded quote does.
	f := writeFile(t, dir, "v5-8000.dat", padTo(t, v5, 8000))
	run(t, "attest", "verify", "--report", f, "--at", tdxV5At, "--measurement", tdxV5MRTD, "--report-data", tdxV5ReportData).want(t, 0)
	huge := writeFile(t, dir, "huge.dat", padTo(t, v5, 64<<10+1))
	run(t, "attest", "verify", "--report", huge, "--at", tdxV5At).want(t, 1, "rejected: malformed_report:", "65537 bytes", "at most 65536")
}
