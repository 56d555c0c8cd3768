//go:build linux

package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

func TestDemoNodesBounds(t *testing.T) {
	for _, n := range []string{"1", "7"} {
		var out, errb bytes.Buffer
		if code := Execute([]string{"demo", "--nodes", n}, &out, &errb); code != ExitUsage {
			t.Errorf("demo --nodes %s: exit %d, want %d (stderr %q)", n, code, ExitUsage, errb.String())
		}
	}
	for _, args := range [][]string{
		{"demo", "--keep", "--cleanup"},
		{"demo", "1a2b"},                       // a run ID without --cleanup
		{"demo", "--all"},                      // --all without --cleanup
		{"demo", "--cleanup", "--all", "1a2b"}, // both
		{"demo", "--cleanup", "1a2b", "3c4d"},
		{"demo", "exec", "node-1"},         // no command
		{"demo", "exec", "node-1", "true"}, // no --
		{"demo", "--tee", "sev-snp"},       // only simulated TEEs
	} {
		var out, errb bytes.Buffer
		if code := Execute(args, &out, &errb); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (stderr %q)", args, code, ExitUsage, errb.String())
		}
	}
}

// TestDemo runs the built binary's `confmesh demo` (root only): it must exit
// 0 with every step's check narrated as held, leave nothing behind, and an
// unprivileged run must be refused with exit 1.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("confmesh demo needs root (network namespaces, TUN, nftables)")
	}
	if err := netlab.CheckHost(); err != nil {
		t.Fatalf("%v (make deps installs it)", err)
	}
	bin := buildDemoBinaries(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, bin, "demo")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	t.Logf("confmesh demo took %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("confmesh demo: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	text := out.String()
	for _, want := range []string{
		"node-1: attested=true tee=sim-snp datapath=userspace strict=on verified peers: node-2, node-3",
		"(confmesh-cni ADD through libcni)",
		"pod node-1/frontend: Kubernetes pod shop/frontend, service account frontend",
		"pod node-2/payments: Kubernetes pod shop/payments, service account payments",
		"PASS (a)",
		"PASS (b)",
		"IS seen by the capture",
		"frames holding the payload in clear: 0; frames other than WireGuard, ARP or control-plane TLS: 0",
		"PASS (c)",
		// (d): the pod's own identity, mTLS across nodes authorised by ID
		// and claims, the wrong service account refused, the underlay clean.
		"$ confmesh demo exec node-1/frontend -- confmesh demo svid\n    SPIFFE ID:   spiffe://confmesh.local/ns/shop/sa/frontend\n    node:        spiffe://confmesh.local/confmesh/node/node-1\n    TEE:         sim-snp",
		"mTLS ok: I am spiffe://confmesh.local/ns/shop/sa/frontend; server spiffe://confmesh.local/ns/shop/sa/payments (node node-2, sim-snp, measurement 0000",
		"accepted spiffe://confmesh.local/ns/shop/sa/frontend (node node-1, sim-snp, measurement 0000",
		"mTLS: frontend -> payments ok",
		"remote error: tls: bad certificate",
		"refused spiffe://confmesh.local/ns/shop/sa/catalog (node node-3, sim-snp, measurement 0000000000000000…): unexpected ID",
		"other than WireGuard, ARP or control-plane TLS: 0; holding the messages or SPIFFE IDs in clear: 0; WireGuard frames between node-1 and node-2: ",
		"PASS (d)",
		"agent started with --sim-debug",
		"the policy forbids debug",
		"PASS (e)",
		"node-5 joined for this step and is meshed with every node; node-1/frontend -> node-5/legacy: delivered",
		"$ confmesh nodes revoke node-5",
		"node-1/frontend -> node-5/legacy: 0 of 20 datagrams arrived",
		"strict_out_drop on node-1:",
		"node-1, node-2, node-3: still a full mesh of each other",
		"PASS (f)",
		"== teardown",
		"demo: all 6 steps held",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q", want)
		}
	}
	if strings.Contains(text, "sa/default") {
		t.Errorf("a pod got the default service account")
	}
	// Pod CIDRs follow join order, which varies: match the shape, not the numbers.
	if !regexp.MustCompile(`node-1/frontend \(10\.244\.\d+\.\d+\) -> node-2/payments \(10\.244\.\d+\.\d+\): delivered`).MatchString(text) {
		t.Errorf("the narration lacks node-1/frontend -> node-2/payments delivered")
	}
	if t.Failed() {
		t.Logf("stdout:\n%s", text)
	}

	// Nothing of this run is left.
	m := regexp.MustCompile(`names start with (cmdemo-[0-9a-f]{4}-)`).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("no name prefix in the narration")
	}
	left, _ := filepath.Glob(filepath.Join(netlab.NetnsDir, m[1]+"*"))
	socks, _ := filepath.Glob(filepath.Join(netlab.WireGuardSocketDir, m[1]+"*"))
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), m[1]+"*"))
	if left = append(append(left, socks...), dirs...); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}

	// Without root it refuses, exit 1, saying why.
	for dir := filepath.Dir(bin); dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd = exec.CommandContext(ctx, bin, "demo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	outb, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != ExitRejected || !strings.Contains(string(outb), "needs root") {
		t.Errorf("unprivileged confmesh demo: %v, output %q; want exit %d naming root", err, outb, ExitRejected)
	}
}

// TestDemoMixed runs `confmesh demo --tee mixed` (root only): node-1 and
// node-3 on sim-snp, node-2 on sim-tdx verify each other and mesh, and the
// cross-TEE mTLS call is authorised by the claims of both TEEs.
func TestDemoMixed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("confmesh demo needs root (network namespaces, TUN, nftables)")
	}
	if err := netlab.CheckHost(); err != nil {
		t.Fatalf("%v (make deps installs it)", err)
	}
	bin := buildDemoBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "demo", "--tee", "mixed")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("confmesh demo --tee mixed: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	text := out.String()
	for _, want := range []string{
		"attesting with the SIMULATED TEE sim-snp and sim-tdx (a mixed cluster)",
		"node-1: attested=true tee=sim-snp datapath=userspace strict=on verified peers: node-2, node-3",
		"node-2: attested=true tee=sim-tdx datapath=userspace strict=on verified peers: node-1, node-3",
		"mTLS ok: I am spiffe://confmesh.local/ns/shop/sa/frontend; server spiffe://confmesh.local/ns/shop/sa/payments (node node-2, sim-tdx, measurement 0000",
		"accepted spiffe://confmesh.local/ns/shop/sa/frontend (node node-1, sim-snp, measurement 0000",
		"PASS (a)", "PASS (c)", "PASS (d)", "PASS (e)", "PASS (f)",
		"demo: all 6 steps held",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("stdout:\n%s", text)
	}
}
