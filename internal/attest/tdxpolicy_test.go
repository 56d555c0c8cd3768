package attest_test

import (
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
)

// TestTDXPolicyErrors: every malformed tdx field is refused naming it.
func TestTDXPolicyErrors(t *testing.T) {
	m := `"` + strings.Repeat("ab", 48) + `"`
	z := `"` + strings.Repeat("00", 48) + `"`
	for _, tc := range []struct{ name, in, want string }{
		{"no mrtds", "measurements: [" + m + "]\ntdx: {}\n", "tdx.mrtds: at least one"},
		{"short mrtd", "tdx: {mrtds: [\"abcd\"]}\n", "tdx.mrtds[0]: 2 bytes"},
		{"placeholder mrtd", "tdx: {mrtds: [" + z + "]}\n", "all-zero placeholder"},
		{"rtmr count", "tdx: {mrtds: [" + m + "], rtmrs: [" + m + "]}\n", "tdx.rtmrs: 1 entries"},
		{"rtmr short", "tdx: {mrtds: [" + m + "], rtmrs: [\"\", \"abcd\", \"\", \"\"]}\n", "tdx.rtmrs[1] (RTMR1): 2 bytes"},
		{"rtmrs and rtmrSets", "tdx: {mrtds: [" + m + "], rtmrs: [" + m + ", \"\", \"\", \"\"], rtmrSets: [[" + m + ", \"\", \"\", \"\"]]}\n",
			"tdx.rtmrs and tdx.rtmrSets: both set"},
		{"rtmrSets empty", "tdx: {mrtds: [" + m + "], rtmrSets: []}\n", "tdx.rtmrSets: empty list"},
		{"rtmrSets set count", "tdx: {mrtds: [" + m + "], rtmrSets: [[" + m + ", \"\", \"\", \"\"], [" + m + "]]}\n",
			"tdx.rtmrSets[1]: 1 entries, want exactly 4"},
		{"rtmrSets short register", "tdx: {mrtds: [" + m + "], rtmrSets: [[\"\", " + m + ", \"\", \"\"], [\"\", " + m + ", \"abcd\", \"\"]]}\n",
			"tdx.rtmrSets[1][2] (RTMR2): 2 bytes, want 48"},
		{"rtmrSets unchecked set", "tdx: {mrtds: [" + m + "], rtmrSets: [[\"\", " + m + ", \"\", \"\"], [\"\", \"\", \"\", \"\"]]}\n",
			"tdx.rtmrSets[1]: every register is \"\""},
		{"rtmrSets not a list of lists", "tdx: {mrtds: [" + m + "], rtmrSets: [" + m + "]}\n", "decode policy"},
		{"mask without value", "tdx: {mrtds: [" + m + "], xfamMask: \"ffffffffffffffff\"}\n", "set both or neither"},
		{"value outside mask", "tdx: {mrtds: [" + m + "], xfamMask: \"00000000000000ff\", xfam: \"0100000000000000\"}\n", "no quote can match"},
		{"debug required", "tdx: {mrtds: [" + m + "], tdAttributesMask: \"0100000000000000\", tdAttributes: \"0100000000000000\"}\n", "DEBUG bit"},
		{"bad status", "tdx: {mrtds: [" + m + "], acceptedTCBStatuses: [Fine]}\n", `unknown status "Fine"`},
		{"revoked status", "tdx: {mrtds: [" + m + "], acceptedTCBStatuses: [Revoked]}\n", "never accepted"},
		{"empty statuses", "tdx: {mrtds: [" + m + "], acceptedTCBStatuses: []}\n", "empty list accepts no platform"},
		{"short svn", "tdx: {mrtds: [" + m + "], minimumTeeTCBSVN: \"01\"}\n", "tdx.minimumTeeTCBSVN: 1 bytes"},
		{"short fmspc", "tdx: {mrtds: [" + m + "], fmspcs: [\"01\"]}\n", "tdx.fmspcs[0]"},
		{"short ppid", "tdx: {mrtds: [" + m + "], ppids: [\"01\"]}\n", "tdx.ppids[0]"},
		{"no tdx root", "trustedRoots: [{kind: amd}]\ntdx: {mrtds: [" + m + "]}\n", "names no TDX root"},
		{"cp mrtds without tdx", "measurements: [" + m + "]\ncontrolPlane: {mrtds: [" + m + "]}\n", "no tdx section"},
		{"misspelt key", "tdx: {mrtds: [" + m + "], MRTDs: [" + m + "]}\n", `unknown field "tdx.MRTDs"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := attest.ParsePolicy([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// TestTDXPolicyDefaults: a tdx section brings Intel's root and UpToDate;
// the control plane gets its own MRTD list, never the nodes'.
func TestTDXPolicyDefaults(t *testing.T) {
	m1, m2 := strings.Repeat("ab", 48), strings.Repeat("cd", 48)
	p, err := attest.ParsePolicy([]byte("tdx: {mrtds: [\"" + m1 + "\"]}\ncontrolPlane: {mrtds: [\"" + m2 + "\"]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.TrustedRoots) != 2 || p.TrustedRoots[1].Kind != attest.RootIntel {
		t.Errorf("roots %v, want amd and intel", p.TrustedRoots)
	}
	if len(p.TDX.AcceptedTCBStatuses) != 1 || p.TDX.AcceptedTCBStatuses[0] != attest.TCBStatusUpToDate {
		t.Errorf("statuses %v", p.TDX.AcceptedTCBStatuses)
	}
	cp, err := p.ForControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.TDX.MRTDs) != 1 || cp.TDX.MRTDs[0].String() != m2 || len(cp.Measurements) != 0 {
		t.Errorf("control-plane policy mrtds %v measurements %v", cp.TDX.MRTDs, cp.Measurements)
	}
	if p.TDX.MRTDs[0].String() != m1 {
		t.Error("ForControlPlane changed the node policy")
	}
}

// TestTDXPolicyRTMRSets: rtmrSets holds several accepted RTMR tuples;
// the single rtmrs is one tuple; AcceptedRTMRSets gives either.
func TestTDXPolicyRTMRSets(t *testing.T) {
	m := strings.Repeat("ab", 48)
	a1, a2, b1, b2 := strings.Repeat("a1", 48), strings.Repeat("a2", 48), strings.Repeat("b1", 48), strings.Repeat("b2", 48)
	p, err := attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + m + "\"]\n  rtmrSets:\n    - [\"\", \"" + a1 + "\", \"" + a2 + "\", \"\"]\n    - [\"\", \"" + b1 + "\", \"" + b2 + "\", \"\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	sets := p.TDX.AcceptedRTMRSets()
	if len(sets) != 2 || len(sets[0]) != 4 || len(sets[0][0]) != 0 || sets[0][1].String() != a1 || sets[1][2].String() != b2 || len(sets[1][3]) != 0 {
		t.Fatalf("sets %v", sets)
	}
	p, err = attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + m + "\"]\n  rtmrs: [\"\", \"" + a1 + "\", \"\", \"\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sets := p.TDX.AcceptedRTMRSets(); len(sets) != 1 || sets[0][1].String() != a1 {
		t.Fatalf("rtmrs as one set: %v", sets)
	}
	p, err = attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + m + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if sets := p.TDX.AcceptedRTMRSets(); sets != nil {
		t.Fatalf("no RTMR fields, sets %v", sets)
	}
}
