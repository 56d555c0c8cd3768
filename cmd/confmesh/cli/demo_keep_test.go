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
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// buildDemoBinaries builds confmesh and, next to it, confmesh-cni (the
// demo makes its pods with the plugin found there).
func buildDemoBinaries(t *testing.T) string {
	t.Helper()
	bin, _, err := netlab.BuildBinaries(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// run runs bin with args and stdin, returning stdout, stderr and the exit
// code.
func runBin(t *testing.T, bin, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), errb.String(), 0
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	}
	t.Fatalf("%s %v: %v", bin, args, err)
	return "", "", -1
}

// TestDemoKeepExecCleanup: `demo --keep --nodes 2` leaves both nodes
// attested and meshed (the revoked node was an extra one), prints each
// pod's SPIFFE ID and socket; `demo exec` runs in a pod with the pod's own
// identity (not sa/default) and passes stdin, stdout, stderr and the exit
// code through; `demo --cleanup RUN` removes the run and nothing is left.
func TestDemoKeepExecCleanup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("confmesh demo needs root (network namespaces, TUN, nftables)")
	}
	if err := netlab.CheckHost(); err != nil {
		t.Fatalf("%v (make deps installs it)", err)
	}
	bin := buildDemoBinaries(t)
	text, stderr, code := runBin(t, bin, "", "demo", "--keep", "--nodes", "2")
	m := regexp.MustCompile(`== kept running \(--keep\): run ([0-9a-f]{4})`).FindStringSubmatch(text)
	if m != nil {
		run := m[1]
		t.Cleanup(func() { runBin(t, bin, "", "demo", "--cleanup", run) }) // also when a check below fails
	}
	if code != 0 || m == nil {
		t.Fatalf("confmesh demo --keep: exit %d\nstdout:\n%s\nstderr:\n%s", code, text, stderr)
	}
	run := m[1]
	prefix := "cmdemo-" + run + "-"
	for _, want := range []string{
		"PASS (d)",
		"nodes (2, meshed; node-3 was refused, node-4 revoked):",
		"node-1/frontend  10.244.",
		"spiffe://confmesh.local/ns/shop/sa/frontend\n        Workload API: unix:///",
		"node-2/payments  10.244.",
		"node-1/catalog   10.244.",
		"demo exec node-1/frontend -- " + bin + " demo svid",
		"demo --cleanup " + run,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the --keep narration lacks %q", want)
		}
	}

	// The kept nodes are whole: attested, ready, the other one verified.
	for _, n := range []string{"node-1", "node-2"} {
		out, errOut, code := runBin(t, bin, "", "demo", "exec", "--run", run, n, "--", bin, "status", "--socket",
			filepath.Join(keptStateDir(t, prefix), "n"+n[len(n)-1:], "agent.sock"))
		if code != 0 || !strings.Contains(out, "attested:    true") || !strings.Contains(out, "verified") || strings.Contains(out, "node-4  verified") {
			t.Errorf("%s status in the kept cluster: exit %d\n%s%s", n, code, out, errOut)
		}
	}

	// A SPIFFE client in a pod gets the pod's own identity.
	out, errOut, code := runBin(t, bin, "", "demo", "exec", "--run", run, "node-2/payments", "--", bin, "demo", "svid")
	if code != 0 || !strings.Contains(out, "SPIFFE ID:   spiffe://confmesh.local/ns/shop/sa/payments\n") {
		t.Errorf("demo exec node-2/payments -- confmesh demo svid: exit %d\n%s%s", code, out, errOut)
	}
	// Standard streams and the exit code pass through; the pod's socket is set.
	out, errOut, code = runBin(t, bin, "from stdin\n", "demo", "exec", "--run", run, "shop/frontend", "--",
		"sh", "-c", `cat; echo "socket=$SPIFFE_ENDPOINT_SOCKET"; echo to-stderr >&2; exit 7`)
	if code != 7 || !strings.HasPrefix(out, "from stdin\nsocket=unix:///") || !strings.Contains(out, "/n1/workload.sock") || errOut != "to-stderr\n" {
		t.Errorf("demo exec shop/frontend -- sh: exit %d, stdout %q, stderr %q; want 7, stdin echoed with the socket, to-stderr", code, out, errOut)
	}
	// It runs in the pod's network namespace: the pod's address is there.
	out, _, code = runBin(t, bin, "", "demo", "exec", "--run", run, "frontend", "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if code != 0 || !strings.Contains(out, "10.244.") {
		t.Errorf("demo exec frontend -- ip addr: exit %d, %q", code, out)
	}
	// Unknown and revoked targets are usage errors naming the targets.
	for _, target := range []string{"nosuch", "node-4", "node-4/legacy"} {
		_, errOut, code = runBin(t, bin, "", "demo", "exec", "--run", run, target, "--", "true")
		if code != ExitUsage || !strings.Contains(errOut, target) {
			t.Errorf("demo exec %s: exit %d, stderr %q; want %d naming it", target, code, errOut, ExitUsage)
		}
	}

	out, errOut, code = runBin(t, bin, "", "demo", "--cleanup", run)
	if code != 0 || !strings.Contains(out, "removed run "+run) {
		t.Fatalf("demo --cleanup %s: exit %d\n%s%s", run, code, out, errOut)
	}
	left, _ := filepath.Glob(filepath.Join(netlab.NetnsDir, prefix+"*"))
	socks, _ := filepath.Glob(filepath.Join(netlab.WireGuardSocketDir, prefix+"*"))
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	if left = append(append(left, socks...), dirs...); len(left) > 0 {
		t.Errorf("left behind after --cleanup: %v", left)
	}
	if _, errOut, code = runBin(t, bin, "", "demo", "exec", "--run", run, "node-1", "--", "true"); code != ExitRejected || !strings.Contains(errOut, "no kept demo run") {
		t.Errorf("demo exec on a removed run: exit %d, %q", code, errOut)
	}
}

func keptStateDir(t *testing.T, prefix string) string {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"state-*"))
	if len(dirs) != 1 {
		t.Fatalf("state directories of %s: %v", prefix, dirs)
	}
	return dirs[0]
}
