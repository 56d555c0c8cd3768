package attest_test

// Tests that keep docs/attestation.md and docs/examples/ true: the example
// policies parse, the worked binding example shows the numbers the code
// computes, and the policy reference and reason table name every field and
// every reason label.

import (
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
)

const (
	docsPage      = "../../docs/attestation.md"
	docsPolicy    = "../../docs/examples/policy.yaml"
	docsPolicySim = "../../docs/examples/policy-sim.yaml"
)

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDocsExamplePolicy: the production example parses, and its roots load
// (they are the AMD roots pinned in the binary).
func TestDocsExamplePolicy(t *testing.T) {
	p, err := attest.LoadPolicy(docsPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if p.TrustsSimulated() {
		t.Error("the production example trusts a simulated root")
	}
	if p.AllowDebug {
		t.Error("the production example allows debug guests")
	}
	if _, err := attest.LoadTrustedRoots(p); err != nil {
		t.Fatalf("LoadTrustedRoots: %v", err)
	}
	// The page quotes the file verbatim.
	if !strings.Contains(readDoc(t, docsPage), readDoc(t, docsPolicy)) {
		t.Errorf("%s does not quote %s verbatim; update the page", docsPage, docsPolicy)
	}
}

// TestDocsExamplePolicySim: the simulated example parses and trusts a
// simulated root. Its root file does not exist in the repository, so
// LoadTrustedRoots is not called.
func TestDocsExamplePolicySim(t *testing.T) {
	p, err := attest.LoadPolicy(docsPolicySim)
	if err != nil {
		t.Fatal(err)
	}
	if !p.TrustsSimulated() {
		t.Error("the simulated example does not trust a simulated root")
	}
}

// TestDocsBindingExample: the worked example on the page shows what
// Nonce and ReportData compute for its inputs.
func TestDocsBindingExample(t *testing.T) {
	b := newExampleBinding()
	nonce, err := attest.Nonce(b.purpose, b.challenge, b.keyHash, b.name)
	if err != nil {
		t.Fatal(err)
	}
	rd, err := attest.ReportData(nonce[:], b.wgKey)
	if err != nil {
		t.Fatal(err)
	}
	doc := readDoc(t, docsPage)
	for what, v := range map[string][]byte{
		"challenge":          b.challenge,
		"identity SPKI":      b.identitySPKI,
		"identity key hash":  b.keyHash,
		"wireguard key":      b.wgKey,
		"nonce32":            nonce[:],
		"REPORT_DATA[0:32]":  rd[:32],
		"REPORT_DATA[32:64]": rd[32:],
	} {
		if !strings.Contains(doc, hex.EncodeToString(v)) {
			t.Errorf("%s does not show the %s %x", docsPage, what, v)
		}
	}
}

// TestDocsPolicyReference: every policy field appears in the page, in
// backticks, under its YAML name.
func TestDocsPolicyReference(t *testing.T) {
	doc := readDoc(t, docsPage)
	var walk func(prefix string, typ reflect.Type)
	walk = func(prefix string, typ reflect.Type) {
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			full := prefix + name
			if !strings.Contains(doc, "`"+full+"`") {
				t.Errorf("%s does not document policy field `%s`", docsPage, full)
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Slice {
				if ft.Elem().Kind() == reflect.Struct {
					walk(full+"[].", ft.Elem())
				}
				continue
			}
			if ft.Kind() == reflect.Struct {
				walk(full+".", ft)
			}
		}
	}
	walk("", reflect.TypeOf(attest.Policy{}))
}

// TestDocsReasonTable: every rejection reason label appears in the page.
func TestDocsReasonTable(t *testing.T) {
	doc := readDoc(t, docsPage)
	for _, sentinel := range []error{
		attest.ErrMalformed, attest.ErrMalformedEvidence, attest.ErrUnsupportedTEE, attest.ErrMalformedReport,
		attest.ErrUnsupportedVersion, attest.ErrMissingChain, attest.ErrMalformedChain,
		attest.ErrBrokenChain, attest.ErrUntrustedRoot, attest.ErrWrongProduct,
		attest.ErrCertExpired, attest.ErrChain, attest.ErrSignature, attest.ErrDebug,
		attest.ErrVMPL, attest.ErrMeasurement, attest.ErrTCBBootloader, attest.ErrTCBTEE,
		attest.ErrTCBSNP, attest.ErrTCBMicrocode, attest.ErrChipID, attest.ErrWrongChip, attest.ErrSMT,
		attest.ErrMigrationAgent, attest.ErrValidation, attest.ErrMalformedBinding,
		attest.ErrBinding, attest.ErrWrongNonce, attest.ErrWrongKey,
		attest.ErrEvidenceTooOld, attest.ErrEvidenceFromFuture, attest.ErrStaleChallenge,
		attest.ErrTrailingData, attest.ErrCollateral, attest.ErrNoCollateral, attest.ErrTCBStatus,
		attest.ErrQESVN, attest.ErrPCESVN, attest.ErrRTMR, attest.ErrMRConfigID, attest.ErrXFAM,
		attest.ErrTDAttributes, attest.ErrPlatform, attest.ErrNoControlPlaneTrust,
	} {
		label := attest.Reason(sentinel)
		if label == "other" {
			t.Errorf("%v has no reason label", sentinel)
			continue
		}
		if !strings.Contains(doc, "`"+label+"`") {
			t.Errorf("%s does not list reason `%s` (%v)", docsPage, label, sentinel)
		}
	}
	if attest.Reason(errors.New("x")) != "other" || !strings.Contains(doc, "`other`") {
		t.Errorf("%s should explain the `other` label", docsPage)
	}
}
