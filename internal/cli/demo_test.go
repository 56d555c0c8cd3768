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

	"github.com/confmesh/confmesh/internal/netlab"
)

func TestDemoNodesBounds(t *testing.T) {
	for _, n := range []string{"1", "7"} {
		var out, errb bytes.Buffer
		if code := Execute([]string{"demo", "--nodes", n}, &out, &errb); code != ExitUsage {
			t.Errorf("demo --nodes %s: exit %d, want %d (stderr %q)", n, code, ExitUsage, errb.String())
		}
	}
	var out, errb bytes.Buffer
	if code := Execute([]string{"demo", "--keep", "--cleanup"}, &out, &errb); code != ExitUsage {
		t.Errorf("demo --keep --cleanup: exit %d, want %d", code, ExitUsage)
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
	bin := buildConfmesh(t)

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
		"PASS (a)",
		"PASS (b)",
		"IS seen by the capture",
		"frames holding the payload in clear: 0; frames other than WireGuard, ARP or control-plane TLS: 0",
		"PASS (c)",
		"agent started with --sim-debug",
		"the policy forbids debug",
		"PASS (d)",
		"$ confmesh nodes revoke node-3",
		"node-1/pod-1 -> node-3/pod-1: 0 of 20 datagrams arrived",
		"strict_out_drop on node-1:",
		"PASS (e)",
		"== teardown",
		"demo: all 5 steps held",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q", want)
		}
	}
	// Pod CIDRs follow join order, which varies: match the shape, not the numbers.
	if !regexp.MustCompile(`node-1/pod-1 \(10\.244\.\d+\.\d+\) -> node-2/pod-1 \(10\.244\.\d+\.\d+\): delivered`).MatchString(text) {
		t.Errorf("the narration lacks node-1/pod-1 -> node-2/pod-1 delivered")
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
