//go:build linux

package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/confmesh/confmesh/cni/cnitest"
	"github.com/confmesh/confmesh/netlab"
)

// TestBenchCNISmoke runs a small `bench cni` with the real plugin and the
// reference ptp + host-local built from the pinned module version, and
// checks that every figure is there and sane.
func TestBenchCNISmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("bench cni needs root (network namespaces, veths)")
	}
	t.Parallel()
	root, err := netlab.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	plugin, err := netlab.BuildCNI(root, dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(dir, "reference")
	if err := cnitest.BuildReference(root, ref); err != nil {
		t.Fatal(err)
	}
	results := resultSet(t)
	r := run(t, "bench", "cni", "--plugin", plugin, "--reference", ref, "--serial-pods", "3", "--pods", "4", "-c", "2", "-o", "json", "--results", results)
	r.want(t, 0)
	var got map[string]float64
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	checkResultSet(t, results, "cni", got)
	for _, p := range []string{"", "reference_"} {
		for _, k := range []string{"add_cpu_ms", "del_cpu_ms", "add_c1_p50_ms", "add_c1_p99_ms", "del_c1_p99_ms", "add_p50_ms", "add_p99_ms", "del_p99_ms"} {
			if v := got[p+k]; v <= 0 || v > 60000 {
				t.Errorf("%s%s = %v, want 0..60000 ms", p, k, v)
			}
		}
		// CPU is part of the wall time of the same exec.
		if got[p+"add_c1_p99_ms"] < got[p+"add_c1_p50_ms"] {
			t.Errorf("%s ADD percentiles out of order: %s", p, r.stdout)
		}
	}
	if got["add_cpu_ratio"] <= 0 || got["concurrency"] != 2 {
		t.Errorf("ratio or concurrency missing: %s", r.stdout)
	}
	run(t, "bench", "cni", "--plugin", plugin, "--reference", filepath.Join(dir, "nope")).want(t, 1, "reference plugin ptp not in")
	run(t, "bench", "cni", "--serial-pods", "-1").want(t, 2, "must not be negative")
}
