package config

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

func policyYAML(ms ...byte) []byte {
	var b strings.Builder
	b.WriteString("trustDomain: cluster.test\nmeasurements:\n")
	for _, m := range ms {
		fmt.Fprintf(&b, "  - %q\n", strings.Repeat(fmt.Sprintf("%02x", m), 48))
	}
	return []byte(b.String())
}

// fixture is a policy file, a reloader on it and a record of what it applied.
type fixture struct {
	path     string
	r        *PolicyReloader
	logs     *bytes.Buffer
	applied  []*attest.Policy
	checkErr error
	applyErr error
}

func newFixture(t *testing.T, initial []byte) *fixture {
	t.Helper()
	f := &fixture{path: filepath.Join(t.TempDir(), "policy.yaml"), logs: &bytes.Buffer{}}
	f.write(t, initial, time.Now().Add(-time.Hour))
	f.r = &PolicyReloader{
		Path:   f.path,
		Logger: slog.New(slog.NewTextHandler(f.logs, nil)),
		Check:  func(*attest.Policy) error { return f.checkErr },
		Apply: func(p *attest.Policy) error {
			f.applied = append(f.applied, p)
			return f.applyErr
		},
	}
	if err := f.r.Prime(); err != nil {
		t.Fatal(err)
	}
	return f
}

// write replaces the file atomically and sets its modification time.
func (f *fixture) write(t *testing.T, data []byte, mtime time.Time) {
	t.Helper()
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) poll(t *testing.T, want Outcome) error {
	t.Helper()
	got, err := f.r.Poll()
	if got != want {
		t.Fatalf("Poll = %s (err %v), want %s\nlogs:\n%s", got, err, want, f.logs)
	}
	return err
}

func (f *fixture) lastMeasurement(t *testing.T) byte {
	t.Helper()
	if len(f.applied) == 0 {
		t.Fatal("nothing applied")
	}
	p := f.applied[len(f.applied)-1]
	return p.Measurements[len(p.Measurements)-1][0]
}

func TestReloadDetectsChanges(t *testing.T) {
	f := newFixture(t, policyYAML(1))
	f.poll(t, Unchanged) // primed: the version in force is not reloaded
	f.poll(t, Unchanged)

	// A new size is a change.
	t0 := time.Now().Add(-30 * time.Minute).Truncate(time.Second)
	f.write(t, policyYAML(1, 2), t0)
	f.poll(t, Applied)
	if len(f.applied) != 1 || len(f.applied[0].Measurements) != 2 {
		t.Fatalf("applied %v", f.applied)
	}
	f.poll(t, Unchanged)

	// Same size, new modification time: a change.
	f.write(t, policyYAML(1, 3), t0.Add(time.Second))
	f.poll(t, Applied)
	if m := f.lastMeasurement(t); m != 3 {
		t.Fatalf("applied measurement %x, want 03…", m)
	}

	// Same size and time: not seen (only SIGHUP picks it up).
	f.write(t, policyYAML(1, 4), t0.Add(time.Second))
	f.poll(t, Unchanged)
	if out, err := f.r.Reload("SIGHUP"); out != Applied || err != nil {
		t.Fatalf("Reload = %s, %v", out, err)
	}
	if m := f.lastMeasurement(t); m != 4 {
		t.Fatalf("applied measurement %x, want 04…", m)
	}
	if !strings.Contains(f.logs.String(), "trigger=SIGHUP") {
		t.Fatalf("log does not name the trigger:\n%s", f.logs)
	}
	// Reload records the stamp, so the poller does not apply it again.
	f.poll(t, Unchanged)
	if len(f.applied) != 3 {
		t.Fatalf("%d applications, want 3", len(f.applied))
	}
}

func TestReloadInvalidPolicyKeepsTheOldOne(t *testing.T) {
	f := newFixture(t, policyYAML(1))
	f.write(t, []byte("trustDomain: cluster.test\nbogus: 1\n"), time.Now())
	err := f.poll(t, Kept)
	if err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("err = %v", err)
	}
	if len(f.applied) != 0 {
		t.Fatal("an invalid policy was applied")
	}
	logs := f.logs.String()
	if !strings.Contains(logs, "previous policy stays in force") || !strings.Contains(logs, "bogus") {
		t.Fatalf("logs do not report the refusal and its error:\n%s", logs)
	}
	// The broken version is reported once, not at every poll.
	f.poll(t, Unchanged)
	if n := strings.Count(f.logs.String(), "refused"); n != 1 {
		t.Fatalf("refusal logged %d times", n)
	}

	// A policy that parses but fails Check is refused the same way.
	f.checkErr = errors.New("trustDomain differs")
	f.write(t, policyYAML(5), time.Now().Add(time.Second))
	if err := f.poll(t, Kept); err == nil || !strings.Contains(err.Error(), "trustDomain differs") {
		t.Fatalf("err = %v", err)
	}
	if len(f.applied) != 0 {
		t.Fatal("a refused policy was applied")
	}

	// Fixed: applied.
	f.checkErr = nil
	f.write(t, policyYAML(6), time.Now().Add(2*time.Second))
	f.poll(t, Applied)
	if m := f.lastMeasurement(t); m != 6 {
		t.Fatalf("applied %x", m)
	}
}

func TestReloadValidPolicyApplied(t *testing.T) {
	f := newFixture(t, policyYAML(1))
	f.write(t, policyYAML(7, 8), time.Now())
	f.poll(t, Applied)
	p := f.applied[0]
	if p.TrustDomain != "cluster.test" || len(p.Measurements) != 2 || p.Measurements[0][0] != 7 {
		t.Fatalf("applied %+v", p)
	}
	if !strings.Contains(f.logs.String(), "policy reloaded") {
		t.Fatalf("logs:\n%s", f.logs)
	}
	// An Apply error after Check passed: the policy is in force, the error is reported.
	f.applyErr = errors.New("sweep failed")
	f.write(t, policyYAML(9), time.Now().Add(time.Second))
	if err := f.poll(t, Applied); err == nil {
		t.Fatal("Apply error lost")
	}
	if !strings.Contains(f.logs.String(), "sweep failed") {
		t.Fatalf("logs:\n%s", f.logs)
	}
}

func TestReloadFileMissing(t *testing.T) {
	f := newFixture(t, policyYAML(1))
	if err := os.Remove(f.path); err != nil {
		t.Fatal(err)
	}
	f.poll(t, Kept)
	f.poll(t, Kept)
	if n := strings.Count(f.logs.String(), "policy file unreadable"); n != 1 {
		t.Fatalf("missing file logged %d times:\n%s", n, f.logs)
	}
	if len(f.applied) != 0 {
		t.Fatal("applied without a file")
	}
	// Back (even with an old stamp): read again and applied.
	f.write(t, policyYAML(1), time.Now().Add(-time.Hour))
	f.poll(t, Applied)
	if !strings.Contains(f.logs.String(), "policy file is back") {
		t.Fatalf("logs:\n%s", f.logs)
	}
	// SIGHUP with the file missing: refused, nothing applied.
	os.Remove(f.path)
	if out, err := f.r.Reload("SIGHUP"); out != Kept || err == nil {
		t.Fatalf("Reload = %s, %v", out, err)
	}
	if len(f.applied) != 1 {
		t.Fatalf("%d applications", len(f.applied))
	}
}
