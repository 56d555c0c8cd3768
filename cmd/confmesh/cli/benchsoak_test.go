//go:build linux

package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchSoakRefusesBadFlags: a soak with flags it cannot run is a usage
// error naming the flag, before anything is built (the soak itself runs
// only in make bench: docs/benchmarks.md).
func TestBenchSoakRefusesBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--duration", "30s"}, "--duration must be at least 1m"},
		{[]string{"--probe-interval", "0s"}, "--probe-interval"},
		{[]string{"--nodes", "1"}, "--nodes must be 2 to 20"},
		{[]string{"--churn-pods", "0"}, "--churn-pods"},
		{[]string{"-o", "yaml"}, "yaml"},
		{[]string{"--control-planes", "etcd"}, `--control-planes "etcd": want auto, kubernetes or standalone`},
	} {
		run(t, append([]string{"bench", "soak"}, c.args...)...).want(t, 2, c.says)
	}
}

// TestBenchSoakK8sTools: a tools directory without etcd and kube-apiserver
// is refused with the command that builds them (auto then falls back to
// the standalone mode, --control-planes kubernetes fails); one holding
// both is taken, with the checkout whose manifests/base the lab installs.
func TestBenchSoakK8sTools(t *testing.T) {
	empty := t.TempDir()
	if _, _, err := k8sTools(empty); err == nil || !strings.Contains(err.Error(), "make k8s-tools") {
		t.Fatalf("empty tools directory: %v, want an error naming make k8s-tools", err)
	}
	full := t.TempDir()
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if err := os.WriteFile(filepath.Join(full, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	root, tools, err := k8sTools(full)
	if err != nil || tools != full {
		t.Fatalf("k8sTools(%s) = %q, %v", full, tools, err)
	}
	if _, err := os.Stat(filepath.Join(root, "manifests", "base", "crds.yaml")); err != nil {
		t.Errorf("repository root %s: %v", root, err)
	}
}
