//go:build linux

package netlab

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestSweepOnlyDeadRuns: Sweep removes the namespaces and temporary
// directories of a run that has ended, and leaves those of a live run (and
// of another family) alone.
func TestSweepOnlyDeadRuns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if err := CheckHost(); err != nil {
		t.Fatalf("%v (make deps installs it)", err)
	}
	rs := Runs{NamePrefix: "cmnltest-", LockDir: t.TempDir()}
	other := Runs{NamePrefix: "cmnlother-", LockDir: t.TempDir()}
	dead, err := rs.Start()
	if err != nil {
		t.Fatal(err)
	}
	live, err := rs.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer live.Release()
	foreign, err := other.Start()
	if err != nil {
		t.Fatal(err)
	}
	foreign.Release() // dead, but of another family
	var names []string
	for _, r := range []*Run{dead, live, foreign} {
		ns := r.Prefix + "01-ul"
		if err := AddNetns(ns); err != nil {
			t.Fatal(err)
		}
		names = append(names, ns)
		t.Cleanup(func() { _ = DelNetns(ns) })
		dir, err := r.TempDir("state")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		names = append(names, dir)
	}
	dead.Release()

	removed, errs := rs.Sweep(live)
	if len(errs) > 0 {
		t.Fatalf("sweep: %v", errs)
	}
	exists := func(name string) bool {
		if filepath.IsAbs(name) {
			_, err := os.Stat(name)
			return err == nil
		}
		_, err := os.Stat(filepath.Join(NetnsDir, name))
		return err == nil
	}
	for i, name := range names {
		wantGone := i < 2 // the dead run's namespace and directory
		if exists(name) == wantGone {
			t.Errorf("%s: exists=%v after the sweep, want %v (removed: %v)", name, !wantGone, !wantGone, removed)
		}
	}
	if !slices.Contains(removed, "netns "+names[0]) {
		t.Errorf("removed %v does not report netns %s", removed, names[0])
	}
}
