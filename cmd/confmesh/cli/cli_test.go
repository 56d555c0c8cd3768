package cli

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/verify/testdata"
)

// simDir holds one simulated CA for the whole test binary: generating one
// is the slow part, so every test reuses it (attest report opens it with
// sim.OpenCA). It is created with test-sized keys and saved the same way
// OpenCA saves a new CA.
var simDir string

// execAsCLI, set in the environment, makes the test binary run the CLI
// (with its arguments) instead of the tests: commands that start this
// binary again (bench controlplane starts the control plane) work under
// `go test`.
const execAsCLI = "CONFMESH_CLI_TEST_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(execAsCLI) == "1" {
		os.Exit(Execute(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(func() int {
		if err := os.Setenv(execAsCLI, "1"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		dir, err := os.MkdirTemp("", "confmesh-cli-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		simDir = filepath.Join(dir, "ca")
		ca, err := sim.NewTestCA("")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if err := ca.Save(simDir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}())
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Execute(args, &out, &errOut)
	return result{code, out.String(), errOut.String()}
}

func (r result) want(t *testing.T, code int, stderrHas ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	for _, s := range stderrHas {
		if !strings.Contains(r.stderr, s) {
			t.Fatalf("stderr does not mention %q:\n%s", s, r.stderr)
		}
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func randHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// milanFiles writes go-sev-guest's example Milan report and its VCEK.
func milanFiles(t *testing.T) (report, vcek string) {
	dir := t.TempDir()
	return writeFile(t, dir, "report.bin", testdata.AttestationBytes), writeFile(t, dir, "vcek.der", testdata.VcekBytes)
}

func TestVerifyRealMilanReport(t *testing.T) {
	t.Parallel()
	report, vcek := milanFiles(t)
	r := run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--allow-debug", "-o", "json")
	r.want(t, 0)
	var c attest.Claims
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("stdout is not claims JSON: %v\n%s", err, r.stdout)
	}
	wantM := hex.EncodeToString(testdata.AttestationBytes[0x90:0xC0])
	if c.Product != "Milan" || !c.Debug || c.TEE != attest.TEESevSnp || c.Simulated || c.Root != attest.RootAMD {
		t.Fatalf("claims %+v", c)
	}
	if !strings.Contains(r.stdout, `"measurement": "`+wantM+`"`) {
		t.Fatalf("JSON does not carry the lower-case hex measurement %s:\n%s", wantM, r.stdout)
	}

	// Text output: aligned field lines.
	r = run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--allow-debug")
	r.want(t, 0)
	for _, s := range []string{"product:", "Milan", "measurement:", wantM, "binding:", "not checked"} {
		if !strings.Contains(r.stdout, s) {
			t.Fatalf("text output lacks %q:\n%s", s, r.stdout)
		}
	}

	// The same report, measurement pinned: right value passes, wrong is rejected.
	run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--allow-debug", "--measurement", wantM).want(t, 0)
	run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--allow-debug", "--measurement", randHex(t, 48)).
		want(t, 1, "rejected: measurement:", "measurement not allowed")
}

func TestVerifyRealMilanReportRejected(t *testing.T) {
	t.Parallel()
	report, vcek := milanFiles(t)
	r := run(t, "attest", "verify", "--report", report, "--vcek", vcek)
	r.want(t, 1, "rejected: debug:", "debug")
	if r.stdout != "" {
		t.Fatalf("rejection printed claims:\n%s", r.stdout)
	}
	if strings.Contains(r.stderr, "Usage:") {
		t.Fatalf("rejection dumped usage:\n%s", r.stderr)
	}
	run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--allow-debug",
		"--nonce", randHex(t, 32), "--key", randHex(t, 32)).want(t, 1, "rejected: binding:")
}

// simReport runs `attest report` against the shared simulated CA.
func simReport(t *testing.T, name, nonce, key, measurement string, extra ...string) string {
	t.Helper()
	out := t.TempDir()
	args := append([]string{"attest", "report", "--sim-dir", simDir, "--name", name,
		"--nonce", nonce, "--key", key, "--measurement", measurement, "-o", out}, extra...)
	r := run(t, args...)
	r.want(t, 0)
	for _, f := range []string{"report.bin", "vcek.pem", "chain.pem", "evidence.pb"} {
		if !strings.Contains(r.stdout, filepath.Join(out, f)) {
			t.Fatalf("output does not list %s:\n%s", f, r.stdout)
		}
	}
	if !strings.Contains(r.stdout, filepath.Join(simDir, sim.RootFile)) {
		t.Fatalf("output does not name the root to trust:\n%s", r.stdout)
	}
	return out
}

func simPolicy(t *testing.T, measurement string, extra string) string {
	t.Helper()
	y := fmt.Sprintf("measurements: [%q]\ntrustedRoots:\n- kind: simulated\n  file: %q\n%s", measurement, filepath.Join(simDir, sim.RootFile), extra)
	return writeFile(t, t.TempDir(), "policy.yaml", []byte(y))
}

func TestSimRoundTrip(t *testing.T) {
	nonce, key, m := randHex(t, 32), randHex(t, 32), randHex(t, 48)
	out := simReport(t, "round-trip", nonce, key, m)
	policy := simPolicy(t, m, "")
	verify := func(extra ...string) result {
		args := append([]string{"attest", "verify", "--report", filepath.Join(out, "report.bin"),
			"--vcek", filepath.Join(out, "vcek.pem"), "--chain", filepath.Join(out, "chain.pem")}, extra...)
		return run(t, args...)
	}

	r := verify("--nonce", nonce, "--key", key, "--policy", policy, "-o", "json")
	r.want(t, 0, "SIMULATED TEE ROOT")
	var c attest.Claims
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if c.TEE != attest.TEESimSnp || !c.Simulated || c.Measurement.String() != m || c.Debug {
		t.Fatalf("claims %+v", c)
	}
	verify("--nonce", nonce, "--key", key, "--policy", policy, "--measurement", m).want(t, 0)
	verify("--nonce", nonce, "--key", key, "--policy", policy, "--measurement", randHex(t, 48)).want(t, 1, "rejected: measurement:")

	verify("--nonce", nonce, "--key", key).want(t, 1, "rejected: untrusted_root:")
	verify("--nonce", nonce, "--key", randHex(t, 32), "--policy", policy).want(t, 1, "rejected: binding:")
	verify("--nonce", nonce, "--key", key, "--policy", simPolicy(t, randHex(t, 48), "")).want(t, 1, "rejected: measurement:")

	// evidence.pb is the same report and chain in the wire encoding.
	pb, err := os.ReadFile(filepath.Join(out, "evidence.pb"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := attest.UnmarshalEvidence(pb)
	if err != nil {
		t.Fatal(err)
	}
	p, err := attest.LoadPolicy(policy)
	if err != nil {
		t.Fatal(err)
	}
	v, err := attest.NewVerifier(p, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	n, _ := hex.DecodeString(nonce)
	k, _ := hex.DecodeString(key)
	if _, err := v.VerifyReportData(ev, n, k); err != nil {
		t.Fatalf("evidence.pb does not verify: %v", err)
	}
}

func TestSimDebugReportRejected(t *testing.T) {
	nonce, key, m := randHex(t, 32), randHex(t, 32), randHex(t, 48)
	out := simReport(t, "rogue", nonce, key, m, "--debug", "--vmpl", "1", "--tcb", "1,2,3,4", "--smt")
	verify := func(policy string) result {
		return run(t, "attest", "verify", "--report", filepath.Join(out, "report.bin"), "--vcek", filepath.Join(out, "vcek.pem"),
			"--chain", filepath.Join(out, "chain.pem"), "--nonce", nonce, "--key", key, "--policy", policy, "-o", "json")
	}
	verify(simPolicy(t, m, "allowDebug: false\n")).want(t, 1, "rejected: debug:")
	r := verify(simPolicy(t, m, "allowDebug: true\nallowSMT: true\nallowedVMPLs: [1]\nminimumTCB: {bootloader: 1, tee: 2, snp: 3, microcode: 4}\n"))
	r.want(t, 0)
	var c attest.Claims
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatal(err)
	}
	if !c.Debug || c.VMPL != 1 || !c.SMTEnabled || c.ReportedTCB.SNP != 3 || c.ReportedTCB.Microcode != 4 {
		t.Fatalf("flags not reflected in claims: %+v", c)
	}
}

func TestReportWithoutSimDir(t *testing.T) {
	saved := NewHardwareProvider
	t.Cleanup(func() { NewHardwareProvider = saved })
	NewHardwareProvider = func() (attest.Provider, error) {
		return nil, errors.New("no SEV-SNP device; pass --sim-dir")
	}
	out := t.TempDir()
	run(t, "attest", "report", "--nonce", randHex(t, 32), "--key", randHex(t, 32), "-o", out).want(t, 2, "--sim-dir")
	run(t, "attest", "report", "--nonce", randHex(t, 32), "--key", randHex(t, 32), "--debug", "-o", out).want(t, 2, "--debug", "needs --sim-dir")
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	report, vcek := milanFiles(t)
	dir := t.TempDir()
	garbage := writeFile(t, dir, "garbage", []byte("this is not a certificate"))
	short := writeFile(t, dir, "short.bin", []byte{2, 0, 0, 0})
	hex32 := randHex(t, 32)
	cases := []struct {
		name string
		args []string
		msg  string
	}{
		{"missing report file", []string{"--report", filepath.Join(dir, "nope.bin"), "--vcek", vcek}, "no such file"},
		{"short report", []string{"--report", short, "--vcek", vcek}, "1184"},
		{"garbage vcek", []string{"--report", report, "--vcek", garbage}, "not a PEM or DER certificate"},
		{"garbage chain", []string{"--report", report, "--vcek", vcek, "--chain", garbage}, "want 2"},
		{"nonce without key", []string{"--report", report, "--vcek", vcek, "--nonce", hex32}, "--nonce and --key"},
		{"key without nonce", []string{"--report", report, "--vcek", vcek, "--key", hex32}, "--nonce and --key"},
		{"bad hex", []string{"--report", report, "--vcek", vcek, "--nonce", "zz" + hex32[2:], "--key", hex32}, "not hex"},
		{"short nonce", []string{"--report", report, "--vcek", vcek, "--nonce", hex32[:62], "--key", hex32}, "want 32"},
		{"bad measurement", []string{"--report", report, "--vcek", vcek, "--measurement", "abcd"}, "want 48"},
		{"unknown output", []string{"--report", report, "--vcek", vcek, "-o", "yaml"}, "unknown output format"},
		{"unknown flag", []string{"--report", report, "--vcek", vcek, "--frobnicate"}, "unknown flag"},
		{"missing required flag", []string{"--report", report}, "vcek"},
		{"stray argument", []string{"--report", report, "--vcek", vcek, "extra"}, "unknown command"},
		{"missing policy file", []string{"--report", report, "--vcek", vcek, "--policy", filepath.Join(dir, "nope.yaml")}, "no such file"},
		{"allow-debug with policy", []string{"--report", report, "--vcek", vcek, "--policy", garbage, "--allow-debug"},
			"--allow-debug conflicts with --policy; set allowDebug in the policy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := run(t, append([]string{"attest", "verify"}, tc.args...)...)
			r.want(t, 2, tc.msg)
			if r.stdout != "" {
				t.Fatalf("stdout not empty:\n%s", r.stdout)
			}
		})
	}
	run(t, "no-such-verb").want(t, 2, "unknown command")
	run(t, "attest", "report", "--sim-dir", simDir, "--nonce", hex32, "--key", hex32, "--tcb", "1,2,3", "-o", dir).want(t, 2, "--tcb")
	run(t, "attest", "report", "--sim-dir", simDir, "--nonce", hex32, "--key", hex32, "--vmpl", "4", "-o", dir).want(t, 2, "--vmpl")
	run(t, "attest", "report", "--sim-dir", simDir, "--nonce", hex32, "--key", hex32).want(t, 2, "out")
}

func TestPolicyCheck(t *testing.T) {
	t.Parallel()
	m := randHex(t, 48)
	r := run(t, "policy", "check", simPolicy(t, m, "allowedVMPLs: [0, 1]\nchipIDs: ["+`"`+randHex(t, 64)+`"`+"]\n"))
	r.want(t, 0)
	for _, s := range []string{
		"measurements:", "1 accepted", m, "minimum TCB:", "debug guests:", "forbidden", "VMPLs:", "0, 1",
		"1 on the allowlist", "max evidence age:", "1h30m0s", "trusted roots:", filepath.Join(simDir, sim.RootFile),
		"WARNING: this policy trusts a SIMULATED TEE root", "trustDomain: confmesh.local",
	} {
		if !strings.Contains(r.stdout, s) {
			t.Fatalf("output lacks %q:\n%s", s, r.stdout)
		}
	}

	amd := writeFile(t, t.TempDir(), "amd.yaml", []byte(fmt.Sprintf("measurements: [%q]\n", m)))
	r = run(t, "policy", "check", amd)
	r.want(t, 0)
	if strings.Contains(r.stdout, "SIMULATED") || !strings.Contains(r.stdout, "any chip") || !strings.Contains(r.stdout, "amd (Milan, Genoa, Turin)") {
		t.Fatalf("AMD-only policy summary wrong:\n%s", r.stdout)
	}

	run(t, "policy", "check", simPolicy(t, m, "allowDebugg: true\n")).want(t, 1, "invalid policy", "allowDebugg")
	missingRoot := writeFile(t, t.TempDir(), "p.yaml", []byte(fmt.Sprintf(
		"measurements: [%q]\ntrustedRoots:\n- kind: simulated\n  file: /nonexistent/sim/root.pem\n", m)))
	run(t, "policy", "check", missingRoot).want(t, 1, "/nonexistent/sim/root.pem")
	run(t, "policy", "check", simPolicy(t, m, "allowedVMPLs: [5]\n")).want(t, 1, "allowedVMPLs")
	run(t, "policy", "check", filepath.Join(t.TempDir(), "nope.yaml")).want(t, 2, "no such file")
	run(t, "policy", "check").want(t, 2, "accepts 1 arg")

	// The same file drives verify: an invalid policy is exit 1 there too.
	report, vcek := milanFiles(t)
	run(t, "attest", "verify", "--report", report, "--vcek", vcek, "--policy", missingRoot).want(t, 1, "/nonexistent/sim/root.pem")
}

func TestBenchVerify(t *testing.T) {
	t.Parallel()
	results := resultSet(t)
	r := run(t, "bench", "verify", "-o", "json", "--duration", "300ms", "--cold", "5", "--results", results)
	r.want(t, 0)
	var got map[string]float64
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	checkResultSet(t, results, "verify", got)
	if n, ok := got["verifications_per_second"]; !ok || n <= 0 || got["signature_only_per_second"] <= 0 || got["ratio_to_signature_only_baseline"] <= 0 {
		t.Fatalf("bench output %s", r.stdout)
	}
	if got["cold_verifications_per_second"] <= 0 || got["cold_ms_per_verification"] <= 0 || got["cold_ratio_to_signature_only_baseline"] <= 0 {
		t.Fatalf("no cold-path figures: %s", r.stdout)
	}
	notJSON := writeFile(t, t.TempDir(), "results.json", []byte("[1, 2]\n"))
	run(t, "bench", "verify", "--duration", "50ms", "--rounds", "1", "--cold", "1", "--results", notJSON).want(t, 1, "not a JSON object")
	if b, _ := os.ReadFile(notJSON); string(b) != "[1, 2]\n" {
		t.Errorf("a refused result set was changed: %s", b)
	}
	run(t, "bench", "verify", "-o", "xml").want(t, 2, "unknown output format")
	run(t, "bench", "verify", "--duration", "0s").want(t, 2, "--duration")
	run(t, "bench", "verify", "--cold", "0").want(t, 2, "--cold")
}

// TestBenchControlPlaneSmoke runs a small control plane bench end to end
// (the control plane in its own process: this test binary re-executed as
// the CLI) and checks that every figure is there and sane.
func TestBenchControlPlaneSmoke(t *testing.T) {
	t.Parallel()
	results := resultSet(t)
	r := run(t, "bench", "controlplane", "--nodes", "6", "--fanout-joins", "3", "--renewals", "2", "--concurrency", "2", "-o", "json", "--results", results)
	r.want(t, 0)
	var got map[string]float64
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	checkResultSet(t, results, "controlplane", got)
	for _, k := range []string{"joins_per_second", "server_rss_mib", "server_peak_rss_mib"} {
		if got[k] <= 0 {
			t.Errorf("%s = %v, want > 0", k, got[k])
		}
	}
	for _, k := range []string{"server_cpu_ms_per_join", "server_cpu_ms_per_watch", "server_cpu_ms_per_watched_join", "server_cpu_ms_per_renewal",
		"server_cpu_ms_revoke", "fanout_p50_ms", "fanout_p99_ms", "renew_fanout_p99_ms", "revoke_fanout_p99_ms"} {
		if v, ok := got[k]; !ok || v < 0 || v > 60000 {
			t.Errorf("%s = %v (present %v), want 0..60000", k, v, ok)
		}
	}
	if got["fanout_p50_ms"] > got["fanout_p99_ms"] || got["fanout_p99_ms"] > got["fanout_max_ms"] {
		t.Errorf("fan-out percentiles out of order: %s", r.stdout)
	}
	// 3 joins to 6 watchers, 2 renewals to 5 others each, 1 revocation to 5.
	if got["nodes"] != 6 || got["fanout_joins"] != 3 || got["renewals"] != 2 || got["deliveries"] != 3*6+2*5+5 {
		t.Errorf("counts wrong: %s", r.stdout)
	}
	run(t, "bench", "controlplane", "--nodes", "1").want(t, 2, "--nodes")
	run(t, "bench", "controlplane", "--renewals", "-1").want(t, 2, "must not be negative")
}

// TestTurinVerifyShowsFMC: a simulated Turin report's TCB is shown with
// Turin's components (FMC first) by attest verify, and minimumTCB.tee is
// checked against Turin's TEE byte.
func TestTurinVerifyShowsFMC(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "turin-ca")
	ca, err := sim.NewTestCA("Turin-B0")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	nonce, key, m := randHex(t, 32), randHex(t, 32), randHex(t, 48)
	out := t.TempDir()
	run(t, "attest", "report", "--sim-dir", dir, "--sim-product", "Turin-B0", "--name", "turin", "--nonce", nonce, "--key", key,
		"--measurement", m, "--tcb", "4,5,0,7,8", "-o", out).want(t, 0)
	policy := func(extra string) string {
		y := fmt.Sprintf("measurements: [%q]\ntrustedRoots:\n- kind: simulated\n  file: %q\n%s", m, filepath.Join(dir, sim.RootFile), extra)
		return writeFile(t, t.TempDir(), "policy.yaml", []byte(y))
	}
	verify := func(p string) result {
		return run(t, "attest", "verify", "--report", filepath.Join(out, "report.bin"), "--vcek", filepath.Join(out, "vcek.pem"),
			"--chain", filepath.Join(out, "chain.pem"), "--nonce", nonce, "--key", key, "--policy", p)
	}
	r := verify(policy(""))
	r.want(t, 0)
	for _, s := range []string{"Turin", "fmc=4 bootloader=5 tee=0 snp=7 microcode=8"} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("attest verify output lacks %q:\n%s", s, r.stdout)
		}
	}
	verify(policy("minimumTCB: {tee: 3}\n")).want(t, 1, "tcb_tee", "Turin reported 0, minimum 3")
	verify(policy("minimumTCB: {fmc: 5}\n")).want(t, 1, "tcb_fmc", "Turin reported 4, minimum 5")
	// The CA certifies Turin; asking it for another product is an error.
	run(t, "attest", "report", "--sim-dir", dir, "--sim-product", "Milan-B1", "--nonce", nonce, "--key", key, "-o", out).want(t, 2, "certifies Turin-B0, not Milan-B1")
}

// TestPolicyCheckShowsDefaultsAndRefusesSilentValues: policy check marks
// every value the file leaves out as a default, shows the control-plane
// list, and refuses values that used to be replaced or accepted silently.
func TestPolicyCheckShowsDefaultsAndRefusesSilentValues(t *testing.T) {
	t.Parallel()
	m := randHex(t, 48)
	r := run(t, "policy", "check", writeFile(t, t.TempDir(), "amd.yaml", []byte(fmt.Sprintf("measurements: [%q]\n", m))))
	r.want(t, 0)
	for _, s := range []string{
		"max evidence age: 1h30m0s (default)", "trust domain:     confmesh.local (default)", "VMPLs:            0 (default)",
		"amd (Milan, Genoa, Turin) (default)", "debug guests:     forbidden (default)", "fmc 0 (Turin only",
		"control plane:    none trusted", "half the node SVID TTL",
	} {
		if !strings.Contains(r.stdout, s) {
			t.Errorf("output lacks %q:\n%s", s, r.stdout)
		}
	}
	r = run(t, "policy", "check", simPolicy(t, m, fmt.Sprintf("maxEvidenceAge: 45m\ncontrolPlane: {measurements: [%q]}\n", m)))
	r.want(t, 0)
	if !strings.Contains(r.stdout, "max evidence age: 45m0s;") || !strings.Contains(r.stdout, "control plane:    1 accepted") {
		t.Errorf("explicit values shown wrong:\n%s", r.stdout)
	}
	zero := strings.Repeat("00", 48)
	for _, c := range []struct{ doc, want string }{
		{fmt.Sprintf("measurements: [%q]\nmaxEvidenceAge: 0s\n", m), "maxEvidenceAge: 0s: must be positive"},
		{fmt.Sprintf("measurements: [%q]\nmaxEvidenceAge: 876000h\n", m), "longer than 24h"},
		{fmt.Sprintf("measurements: [%q]\n", zero), "all-zero placeholder"},
		{fmt.Sprintf("measurements: [%q]\ncontrolPlane: {measurements: [%q]}\n", m, zero), "controlPlane.measurements: only the all-zero placeholder"},
		{fmt.Sprintf("measurements: [%q]\ncontrolPlane: {measurements: []}\n", m), "controlPlane.measurements: empty"},
	} {
		run(t, "policy", "check", writeFile(t, t.TempDir(), "p.yaml", []byte(c.doc))).want(t, 1, "invalid policy", c.want)
	}
	// The placeholder is accepted where only a simulated root is trusted.
	run(t, "policy", "check", simPolicy(t, zero, "")).want(t, 0)
}

// tdxQuoteFile is go-tdx-guest's real v5 quote (copied into internal/attest/testdata).
const (
	tdxV5Quote      = "../../../internal/attest/testdata/tdx/quote_v5.dat"
	tdxV4Quote      = "../../../internal/attest/testdata/tdx/quote_v4.dat"
	tdxV4Collateral = "../../../internal/attest/testdata/tdx/collateral_v4.json"
	tdxV5At         = "2026-02-03T01:00:00Z"
	tdxV5MRTD       = "7348651a34b2d2d3462822e3a750ec6110125f36757c78480bbfc69cc0d21fb001a1ced3ee19747dda8f750c3bc8f876"
	tdxV5ReportData = "945eaacf5abc1f719d8666a942fda03d1edcb4490277396093dc5a5289ab9f1e094aed63060cd4a4933a4dd537ed1255c9c79ecb3ed82cd1b486233e31c25c3a"
)

// TestVerifyRealTDXQuote: attest verify recognises a TDX quote by its
// header, pins MRTD and report data, and exits 0/1/2 as for SEV-SNP.
func TestVerifyRealTDXQuote(t *testing.T) {
	t.Parallel()
	r := run(t, "attest", "verify", "--report", tdxV5Quote, "--at", tdxV5At, "--measurement", tdxV5MRTD, "--report-data", tdxV5ReportData, "-o", "json")
	r.want(t, 0)
	var c struct {
		TEE string `json:"tee"`
		TDX struct {
			MRTD  string   `json:"mrtd"`
			FMSPC string   `json:"fmspc"`
			RTMRs []string `json:"rtmrs"`
		} `json:"tdx"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &c); err != nil {
		t.Fatal(err)
	}
	if c.TEE != "tdx" || c.TDX.MRTD != tdxV5MRTD || c.TDX.FMSPC != "90c06f000000" || len(c.TDX.RTMRs) != 4 {
		t.Fatalf("json claims %+v", c)
	}
	run(t, "attest", "verify", "--report", tdxV5Quote, "--at", tdxV5At, "--measurement", randHex(t, 48)).want(t, 1, "rejected: measurement")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--at", tdxV5At, "--report-data", randHex(t, 64)).want(t, 1, "rejected: binding")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--at", tdxV5At, "--nonce", randHex(t, 32), "--key", randHex(t, 32)).want(t, 1, "rejected: binding")
	run(t, "attest", "verify", "--report", tdxV4Quote, "--at", "2023-07-01T01:00:00Z", "--collateral", tdxV4Collateral).want(t, 1, "rejected: tcb_status")
	run(t, "attest", "verify", "--report", tdxV4Quote, "--at", "2023-07-01T01:00:00Z").want(t, 0)

	dir := t.TempDir()
	data, err := os.ReadFile(tdxV5Quote)
	if err != nil {
		t.Fatal(err)
	}
	trailing := writeFile(t, dir, "trailing.dat", append(data, 0xff))
	run(t, "attest", "verify", "--report", trailing, "--at", tdxV5At).want(t, 1, "rejected: trailing_data")
	badColl := writeFile(t, dir, "coll.json", []byte(`{"x":1}`))
	run(t, "attest", "verify", "--report", tdxV5Quote, "--collateral", badColl).want(t, 1, "unknown field")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--at", "yesterday").want(t, 2, "--at")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--vcek", tdxV5Quote).want(t, 2, "--vcek and --chain do not apply")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--report-data", "abcd").want(t, 2, "want 64")
	run(t, "attest", "verify", "--report", tdxV5Quote, "--collateral", filepath.Join(dir, "nope.json")).want(t, 2, "no such file")
}

// TestPolicyCheckTDX: policy check explains the tdx section.
func TestPolicyCheckTDX(t *testing.T) {
	t.Parallel()
	m, cp := randHex(t, 48), randHex(t, 48)
	p := writeFile(t, t.TempDir(), "tdx.yaml", []byte(fmt.Sprintf(
		"tdx:\n  mrtds: [%q]\n  minimumQESVN: 3\n  acceptedTCBStatuses: [UpToDate, SWHardeningNeeded]\n  fmspcs: [\"90c06f000000\"]\ncontrolPlane:\n  mrtds: [%q]\n", m, cp)))
	r := run(t, "policy", "check", p)
	r.want(t, 0)
	for _, s := range []string{"TDX MRTDs:", "1 accepted", m, "control plane (TDX):", cp, "3 / 0",
		"UpToDate, SWHardeningNeeded", "1 FMSPCs", "intel (TDX)", "TDX RTMRs:"} {
		if !strings.Contains(r.stdout, s) {
			t.Fatalf("output lacks %q:\n%s", s, r.stdout)
		}
	}
	bad := writeFile(t, t.TempDir(), "bad.yaml", []byte(fmt.Sprintf("tdx:\n  mrtds: [%q]\n  acceptedTCBStatuses: [Fine]\n", m)))
	run(t, "policy", "check", bad).want(t, 1, "tdx.acceptedTCBStatuses[0]", "Fine")
}

// TestSimTDXReportAndVerify: attest report makes a sim-tdx quote; attest
// verify accepts it only under a policy naming the simulated TDX root (as
// sim-tdx), refuses it under Intel's root, and refuses the debug TD.
func TestSimTDXReportAndVerify(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := filepath.Join(dir, "tdx-ca")
	nonce, key, m := randHex(t, 32), randHex(t, 32), randHex(t, 48)
	out := filepath.Join(dir, "out")
	r := run(t, "attest", "report", "--sim-dir", ca, "--sim-tee", "sim-tdx", "--nonce", nonce, "--key", key, "--measurement", m, "-o", out)
	r.want(t, 0)
	if !strings.Contains(r.stdout, "sim-tdx report") || !strings.Contains(r.stdout, "kind simulated-tdx") {
		t.Fatalf("report output:\n%s", r.stdout)
	}
	quote := filepath.Join(out, "quote.dat")
	pol := writeFile(t, dir, "p.yaml", []byte(fmt.Sprintf("trustedRoots: [{kind: simulated-tdx, file: %s}]\ntdx:\n  mrtds: [%q]\n", filepath.Join(ca, "root.pem"), m)))
	r = run(t, "attest", "verify", "--report", quote, "--policy", pol, "--nonce", nonce, "--key", key, "-o", "json")
	r.want(t, 0)
	if !strings.Contains(r.stdout, `"tee": "sim-tdx"`) || !strings.Contains(r.stdout, `"simulated": true`) {
		t.Fatalf("claims:\n%s", r.stdout)
	}
	run(t, "attest", "verify", "--report", quote, "--nonce", nonce, "--key", key).want(t, 1, "rejected: untrusted_root")
	// The same directory is recognised as sim-tdx without --sim-tee.
	debugOut := filepath.Join(dir, "debug")
	run(t, "attest", "report", "--sim-dir", ca, "--nonce", nonce, "--key", key, "--measurement", m, "--debug", "-o", debugOut).want(t, 0)
	run(t, "attest", "verify", "--report", filepath.Join(debugOut, "quote.dat"), "--policy", pol).want(t, 1, "rejected: debug")
	run(t, "attest", "report", "--sim-dir", ca, "--nonce", nonce, "--key", key, "--smt", "-o", debugOut).want(t, 2, "--smt")
}

// resultSet is a result file that already holds another bench's figures.
func resultSet(t *testing.T) string {
	t.Helper()
	return writeFile(t, t.TempDir(), "results.json", []byte(`{"other": {"x": 1}}`+"\n"))
}

// checkResultSet checks that --results stored the figures a bench printed
// under key and kept what the file held before.
func checkResultSet(t *testing.T, path, key string, printed map[string]float64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var set map[string]map[string]float64
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatalf("result set: %v\n%s", err, b)
	}
	if set["other"]["x"] != 1 {
		t.Errorf("result set lost the other bench's figures: %s", b)
	}
	if !maps.Equal(set[key], printed) {
		t.Errorf("stored %q figures %v, printed %v", key, set[key], printed)
	}
}
