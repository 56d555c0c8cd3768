package attest_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

type flakyPCS struct {
	calls []string
	fail  bool
}

func (f *flakyPCS) Get(u string) (map[string][]string, []byte, error) {
	f.calls = append(f.calls, u)
	if f.fail {
		return nil, nil, errors.New("503 from PCS")
	}
	return map[string][]string{"Tcb-Info-Issuer-Chain": {"chain"}}, []byte("body"), nil
}

// TestPCSGetterCachesAndServesStale: a PCCS base URL replaces Intel's; a
// fresh entry is served from disk, a stale one when PCS fails, and without
// a cached copy the failure is an error.
func TestPCSGetterCachesAndServesStale(t *testing.T) {
	up := &flakyPCS{}
	now := time.Unix(1_800_000_000, 0)
	g := &attest.PCSGetter{BaseURL: "https://pccs.example:8081/", Upstream: up, Dir: t.TempDir(), TTL: time.Hour, Now: func() time.Time { return now }}
	const u = "https://api.trustedservices.intel.com/tdx/certification/v4/qe/identity"
	h, b, err := g.Get(u)
	if err != nil || string(b) != "body" || h["Tcb-Info-Issuer-Chain"][0] != "chain" {
		t.Fatalf("first get: %v %q %v", h, b, err)
	}
	if up.calls[0] != "https://pccs.example:8081/tdx/certification/v4/qe/identity" {
		t.Errorf("fetched %q, want the PCCS URL", up.calls[0])
	}
	if _, _, err := g.Get(u); err != nil || len(up.calls) != 1 {
		t.Fatalf("fresh entry not served from cache: %v, %d calls", err, len(up.calls))
	}
	now = now.Add(2 * time.Hour)
	up.fail = true
	if _, b, err := g.Get(u); err != nil || string(b) != "body" || len(up.calls) != 2 {
		t.Fatalf("stale entry not served when PCS fails: %q %v, %d calls", b, err, len(up.calls))
	}
	if _, _, err := g.Get(u + "?other"); err == nil || !strings.Contains(err.Error(), "no cached copy") {
		t.Fatalf("uncached failure: %v", err)
	}
}

// TestParseCollateralErrors: malformed collateral is refused naming the field.
func TestParseCollateralErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{}`, "tcb_info_issuer_chain: missing"},
		{`{"bogus":1}`, `unknown field "bogus"`},
		{`{"tcb_info_issuer_chain":"x","tcb_info":"{}","tcb_info_signature":"zz","qe_identity_issuer_chain":"x","qe_identity":"{}","qe_identity_signature":"00"}`, "tcb_info_signature: not hex"},
		{`{"tcb_info_issuer_chain":"x","tcb_info":"{","tcb_info_signature":"00","qe_identity_issuer_chain":"x","qe_identity":"{}","qe_identity_signature":"00"}`, "tcb_info: not a JSON object"},
		{`{"tcb_info_issuer_chain":"x","tcb_info":"{}","tcb_info_signature":"00","qe_identity_issuer_chain":"x","qe_identity":"{}","qe_identity_signature":"00","pck_crl":"00"}`, "give all three"},
	} {
		if _, err := attest.ParseCollateral([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseCollateral(%s) = %v, want %q", tc.in, err, tc.want)
		}
	}
}
