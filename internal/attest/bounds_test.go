package attest_test

import (
	"bytes"
	"strings"
	"testing"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"google.golang.org/protobuf/proto"
)

// TestEvidenceBoundsRefused: a shipped certificate or a report larger than
// any genuine one is refused by size before a parser sees it, and a policy
// file over MaxPolicySize before it is decoded.
func TestEvidenceBoundsRefused(t *testing.T) {
	fix := fzSetup(t)
	for _, tc := range []struct {
		name   string
		mutate func(ev *attestv1.Evidence)
		want   error
	}{
		{"VCEK over the bound", func(ev *attestv1.Evidence) { ev.Chain.Vcek = make([]byte, attest.MaxCertSize+1) }, attest.ErrMalformedChain},
		{"ARK over the bound", func(ev *attestv1.Evidence) { ev.Chain.Ark = make([]byte, attest.MaxCertSize+1) }, attest.ErrMalformedChain},
		{"report over the bound", func(ev *attestv1.Evidence) { ev.Report = make([]byte, attest.MaxTDXQuoteInput+1) }, attest.ErrMalformedReport},
	} {
		ev := proto.Clone(fix.evidence).(*attestv1.Evidence)
		tc.mutate(ev)
		_, err := fix.verifier.Verify(ev, fix.want)
		wantReason(t, err, tc.want)
		if !strings.Contains(err.Error(), "limit") {
			t.Errorf("%s: %v does not name the limit", tc.name, err)
		}
	}
	big := append([]byte("measurements: [\""+strings.Repeat("ab", 48)+"\"]\n#"), bytes.Repeat([]byte("x"), attest.MaxPolicySize)...)
	if _, err := attest.ParsePolicy(big); err == nil || !strings.Contains(err.Error(), "limit 1048576") {
		t.Fatalf("policy of %d bytes: %v", len(big), err)
	}
	if _, err := attest.ParsePolicy(big[:attest.MaxPolicySize]); err != nil {
		t.Fatalf("policy of exactly %d bytes: %v", attest.MaxPolicySize, err)
	}
}
