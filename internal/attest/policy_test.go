package attest_test

import (
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

const m1 = "a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5"

func TestParsePolicyDefaults(t *testing.T) {
	p, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.TrustDomain != attest.DefaultTrustDomain {
		t.Errorf("trustDomain = %q", p.TrustDomain)
	}
	if time.Duration(p.MaxEvidenceAge) != attest.DefaultMaxEvidenceAge {
		t.Errorf("maxEvidenceAge = %v", time.Duration(p.MaxEvidenceAge))
	}
	if len(p.AllowedVMPLs) != 1 || p.AllowedVMPLs[0] != 0 {
		t.Errorf("allowedVMPLs = %v, want [0]", p.AllowedVMPLs)
	}
	if len(p.TrustedRoots) != 1 || p.TrustedRoots[0].Kind != attest.RootAMD {
		t.Errorf("trustedRoots = %v, want [amd]", p.TrustedRoots)
	}
	if p.AllowDebug || p.AllowMigrationAgent || p.AllowSMT || p.TrustsSimulated() {
		t.Errorf("a default must not allow debug, migration agent, SMT or simulated roots: %+v", p)
	}
	// The normalised form parses back to the same policy.
	y, err := p.YAML()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := attest.ParsePolicy(y)
	if err != nil {
		t.Fatalf("normalised policy does not parse: %v\n%s", err, y)
	}
	y2, _ := p2.YAML()
	if string(y) != string(y2) {
		t.Errorf("normalised form not stable:\n%s\n---\n%s", y, y2)
	}
}

func TestParsePolicyFull(t *testing.T) {
	doc := `
trustDomain: prod.example
measurements:
  - ` + m1 + `
  - 0x` + strings.ToUpper(m1) + `
minimumTCB: {bootloader: 3, tee: 0, snp: 14, microcode: 209}
allowDebug: false
allowSMT: true
allowMigrationAgent: false
allowedVMPLs: [0, 1]
chipIDs: [` + strings.Repeat("ab", 64) + `]
maxEvidenceAge: 45m
trustedRoots:
  - kind: amd
  - kind: simulated
    file: /etc/confmesh/sim-root.pem
`
	p, err := attest.ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if p.TrustDomain != "prod.example" || len(p.Measurements) != 2 || p.MinimumTCB.Microcode != 209 ||
		!p.AllowSMT || len(p.AllowedVMPLs) != 2 || len(p.ChipIDs) != 1 ||
		time.Duration(p.MaxEvidenceAge) != 45*time.Minute || !p.TrustsSimulated() {
		t.Errorf("parsed %+v", p)
	}
	if p.Measurements[1].String() != m1 {
		t.Errorf("upper-case 0x hex not normalised: %s", p.Measurements[1])
	}
}

func TestParsePolicyErrors(t *testing.T) {
	for _, c := range []struct{ name, doc, want string }{
		{"empty", "", "policy is empty"},
		{"unknown field", "measurements: [" + m1 + "]\nallowDebugg: true\n", `unknown field "allowDebugg"`},
		{"no measurements", "allowDebug: false\n", "measurements: at least one"},
		{"short measurement", "measurements: [abcd]\n", "measurements[0]: 2 bytes, want 48"},
		{"bad hex", "measurements: [zz]\n", "invalid hex"},
		{"chip id length", "measurements: [" + m1 + "]\nchipIDs: [abcd]\n", "chipIDs[0]: 2 bytes, want 64"},
		{"vmpl range", "measurements: [" + m1 + "]\nallowedVMPLs: [4]\n", "allowedVMPLs[0]: 4 is not a VMPL"},
		{"vmpl empty", "measurements: [" + m1 + "]\nallowedVMPLs: []\n", "allowedVMPLs: empty list"},
		{"bad duration", "measurements: [" + m1 + "]\nmaxEvidenceAge: soon\n", "invalid duration"},
		{"negative age", "measurements: [" + m1 + "]\nmaxEvidenceAge: -5m\n", "maxEvidenceAge: -5m0s: must be positive"},
		{"tcb range", "measurements: [" + m1 + "]\nminimumTCB: {snp: 200}\n", "minimumTCB.snp: 200 exceeds 127"},
		{"sim without file", "measurements: [" + m1 + "]\ntrustedRoots: [{kind: simulated}]\n", "simulated root is trusted only when named by file"},
		{"amd with file", "measurements: [" + m1 + "]\ntrustedRoots: [{kind: amd, file: /x}]\n", "kind amd takes no file"},
		{"unknown root kind", "measurements: [" + m1 + "]\ntrustedRoots: [{kind: nvidia}]\n", `unknown kind "nvidia"`},
		{"duplicate root", "measurements: [" + m1 + "]\ntrustedRoots: [{kind: amd}, {kind: amd}]\n", "listed twice"},
		{"trust domain with scheme", "trustDomain: spiffe://x\nmeasurements: [" + m1 + "]\n", "trustDomain"},
		{"wrong type", "measurements: " + m1 + "\n", "decode policy"},
		{"case-variant key overriding", "measurements: [" + m1 + "]\nallowDebug: false\nallowdebug: true\n", `unknown field "allowdebug"`},
		{"case-variant nested key", "measurements: [" + m1 + "]\nminimumTCB: {SNP: 3}\n", `unknown field "minimumTCB.SNP"`},
		{"case-variant root key", "measurements: [" + m1 + "]\ntrustedRoots: [{Kind: amd}]\n", `unknown field "trustedRoots[0].Kind"`},
		{"unquoted digits", "measurements: [" + strings.Repeat("12", 48) + "]\n", "quote it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := attest.ParsePolicy([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

func TestLoadTrustedRootsMissingFile(t *testing.T) {
	p, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\ntrustedRoots: [{kind: simulated, file: /nonexistent/root.pem}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.NewVerifier(p, attest.Options{}); err == nil || !strings.Contains(err.Error(), "/nonexistent/root.pem") {
		t.Fatalf("err = %v, want it to name the missing root file", err)
	}
}

func TestParseRootPEMRejectsNonRoot(t *testing.T) {
	f := getFixture(t)
	if _, err := attest.ParseRootPEM([]byte("garbage")); err == nil {
		t.Fatal("garbage accepted as a root")
	}
	if r, err := attest.ParseRootPEM(f.ca.RootPEM()); err != nil || r.GetProductLine() != "Milan" {
		t.Fatalf("the CA's own root PEM: line %v err %v", r, err)
	}
	// ARK first, then ASK: the wrong order must not be accepted as a root.
	arkFirst := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.ARK().Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.ASK().Raw})...)
	if _, err := attest.ParseRootPEM(arkFirst); err == nil {
		t.Fatal("ARK-then-ASK PEM accepted as a root")
	}
	// An ASK from another CA under this ARK does not link.
	mixed := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.otherCA.ASK().Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.ARK().Raw})...)
	if _, err := attest.ParseRootPEM(mixed); err == nil || !strings.Contains(err.Error(), "ASK is not signed by the ARK") {
		t.Fatalf("mixed root: err = %v", err)
	}
}

func TestLoadPolicyRelativeRoot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte("measurements: ["+m1+"]\ntrustedRoots: [{kind: simulated, file: sim/root.pem}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := attest.LoadPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "sim/root.pem"); p.TrustedRoots[0].File != want {
		t.Fatalf("root file = %q, want %q", p.TrustedRoots[0].File, want)
	}
}

func TestRequireMeasurements(t *testing.T) {
	p := attest.DefaultPolicy().RequireMeasurements(attest.HexBytes(make([]byte, 48)))
	if p.AcceptsAnyMeasurement() || len(p.Measurements) != 1 || !attest.DefaultPolicy().AcceptsAnyMeasurement() {
		t.Fatalf("RequireMeasurements did not narrow a copy: %+v", p)
	}
}

// TestPolicySilentDefaultsRefused: a value written in the file is never
// silently replaced by a default, and implausible values are errors.
func TestPolicySilentDefaultsRefused(t *testing.T) {
	zero := strings.Repeat("00", 48)
	sim := "trustedRoots: [{kind: simulated, file: /etc/confmesh/sim-root.pem}]\n"
	for _, c := range []struct{ name, doc, want string }{
		{"zero age", "measurements: [" + m1 + "]\nmaxEvidenceAge: 0s\n", "maxEvidenceAge: 0s"},
		{"negative age", "measurements: [" + m1 + "]\nmaxEvidenceAge: -1m\n", "maxEvidenceAge: -1m0s"},
		{"implausible age", "measurements: [" + m1 + "]\nmaxEvidenceAge: 876000h\n", "longer than 24h"},
		{"25h age", "measurements: [" + m1 + "]\nmaxEvidenceAge: 25h\n", "longer than 24h"},
		{"zero placeholder, default AMD roots", "measurements: [\"" + zero + "\"]\n", "all-zero placeholder"},
		{"zero placeholder, AMD root", "measurements: [\"" + zero + "\"]\ntrustedRoots: [{kind: amd}]\n", "all-zero placeholder"},
		{"zero placeholder, AMD and simulated", "measurements: [\"" + zero + "\"]\ntrustedRoots: [{kind: amd}, {kind: simulated, file: /x.pem}]\n", "all-zero placeholder"},
		{"empty roots", "measurements: [" + m1 + "]\ntrustedRoots: []\n", "trustedRoots: empty"},
		{"empty trust domain", "trustDomain: \"\"\nmeasurements: [" + m1 + "]\n", "trustDomain: empty"},
		{"null VMPLs", "measurements: [" + m1 + "]\nallowedVMPLs:\n", "allowedVMPLs: empty"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := attest.ParsePolicy([]byte(c.doc))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				var got string
				if p != nil {
					y, _ := p.YAML()
					got = string(y)
				}
				t.Fatalf("err = %v, want it to mention %q; parsed as:\n%s", err, c.want, got)
			}
		})
	}
	// The placeholder is fine where only the simulated TEE is trusted: it is
	// what a simulated node reports by default.
	if _, err := attest.ParsePolicy([]byte("measurements: [\"" + zero + "\"]\n" + sim)); err != nil {
		t.Fatalf("simulated-only policy with the placeholder: %v", err)
	}
	// 24 h is the largest age accepted.
	if _, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\nmaxEvidenceAge: 24h\n")); err != nil {
		t.Fatalf("24h: %v", err)
	}
	// A programmatic policy is held to the same rules.
	p := &attest.Policy{TrustDomain: "x.test", Measurements: []attest.HexBytes{attest.HexBytes(make([]byte, 48))}, AllowedVMPLs: []uint32{0},
		MaxEvidenceAge: attest.Duration(time.Hour), TrustedRoots: []attest.RootRef{{Kind: attest.RootAMD}}}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "all-zero placeholder") {
		t.Fatalf("programmatic AMD policy with the placeholder: err = %v", err)
	}
	p.MaxEvidenceAge = 0
	p.Measurements = []attest.HexBytes{attest.HexBytes(strings.Repeat("a", 48))}
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "maxEvidenceAge") {
		t.Fatalf("programmatic policy with no maxEvidenceAge: err = %v", err)
	}
}

// TestPolicyDefaultedFields: the policy knows which fields took a default,
// so policy check can say so.
func TestPolicyDefaultedFields(t *testing.T) {
	p, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\nallowedVMPLs: [0, 1]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"trustDomain", "maxEvidenceAge", "trustedRoots", "minimumTCB", "allowDebug", "allowSMT", "allowMigrationAgent", "chipIDs"} {
		if !p.Defaulted(f) {
			t.Errorf("%s not reported as defaulted", f)
		}
	}
	for _, f := range []string{"measurements", "allowedVMPLs"} {
		if p.Defaulted(f) {
			t.Errorf("%s reported as defaulted though the file sets it", f)
		}
	}
}

// TestForControlPlane: the control-plane policy swaps in the control-plane
// list and shares the rest; without a list there is an error, never the
// node list.
func TestForControlPlane(t *testing.T) {
	cp := strings.Repeat("c3", 48)
	p, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\nminimumTCB: {snp: 8}\ncontrolPlane: {measurements: [\"" + cp + "\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.ForControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Measurements) != 1 || c.Measurements[0].String() != cp || c.MinimumTCB.SNP != 8 || len(p.Measurements) != 1 || p.Measurements[0].String() != m1 {
		t.Fatalf("control-plane policy %+v (from %+v)", c, p)
	}
	v, err := attest.NewVerifier(p, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cv, err := v.ForControlPlane()
	if err != nil || cv.Policy().Measurements[0].String() != cp {
		t.Fatalf("verifier for the control plane: %v", err)
	}
	if again, err := cv.ForControlPlane(); err != nil || again != cv {
		t.Fatalf("ForControlPlane of the control-plane verifier: %v %v", again, err)
	}
	noCP, err := attest.ParsePolicy([]byte("measurements: [" + m1 + "]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := noCP.ForControlPlane(); !errors.Is(err, attest.ErrNoControlPlaneTrust) || attest.Reason(err) != "no_controlplane_policy" {
		t.Fatalf("no list: err = %v", err)
	}
	if _, err := attest.DefaultPolicy().ForControlPlane(); !errors.Is(err, attest.ErrNoControlPlaneTrust) {
		t.Fatalf("the any-measurement CLI policy trusts a control plane: %v", err)
	}
}
