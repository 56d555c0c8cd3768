package cli

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
)

// TestTDXCollateralFlags: the agent's and control plane's collateral flags
// build a source, and conflicting or malformed ones are usage errors.
func TestTDXCollateralFlags(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	coll := "../../../internal/attest/testdata/tdx/collateral_v4.json"
	for _, tc := range []struct {
		f    tdxCollateralFlags
		want string
	}{
		{tdxCollateralFlags{file: coll, pcsURL: "https://pccs.example"}, "give one source"},
		{tdxCollateralFlags{pcsCache: "/tmp/x"}, "--pcs-cache needs --pcs-url"},
		{tdxCollateralFlags{pcsURL: "http://pccs.example"}, "want an https URL"},
		{tdxCollateralFlags{file: filepath.Join(t.TempDir(), "none.json")}, "no such file"},
	} {
		if _, err := tc.f.source(t.TempDir(), log); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.f, err, tc.want)
		}
	}
	none, err := (&tdxCollateralFlags{}).source(t.TempDir(), log)
	if err != nil || none != nil {
		t.Errorf("no flags: %v %v", none, err)
	}
	fromFile, err := (&tdxCollateralFlags{file: coll}).source(t.TempDir(), log)
	if err != nil || fromFile == nil || !fromFile.CheckRevocations {
		t.Errorf("file: %+v %v", fromFile, err)
	}
	state := t.TempDir()
	pcs, err := (&tdxCollateralFlags{pcsURL: "https://pccs.example:8081/sgx"}).source(state, log)
	if err != nil {
		t.Fatal(err)
	}
	g, ok := pcs.Getter.(*attest.PCSGetter)
	if !ok || g.Dir != filepath.Join(state, "pcs-cache") || g.BaseURL != "https://pccs.example:8081/sgx" {
		t.Errorf("PCS getter %+v", pcs.Getter)
	}
	// The agent refuses conflicting flags before doing anything.
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", []byte("measurements: [\""+strings.Repeat("ab", 48)+"\"]\n"))
	run(t, "agent", "--name", "n", "--control-plane", "127.0.0.1:1", "--policy", pol, "--endpoint", "127.0.0.1:1",
		"--state-dir", filepath.Join(dir, "state"), "--sim-dir", filepath.Join(dir, "sim"), "--sim-tee", "sim-tdx",
		"--tdx-collateral", coll, "--pcs-url", "https://pccs.example").want(t, 2, "give one source")
}
