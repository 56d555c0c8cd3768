package bench

import (
	"testing"
	"time"
)

// BenchmarkVerify measures one full Verify (report signature, cached chain
// verdict, policy, binding) of a simulated node's bound evidence.
func BenchmarkVerify(b *testing.B) {
	s, err := NewVerifySetup(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := s.VerifyOnce(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestRunVerify(t *testing.T) {
	s, err := NewVerifySetup(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := RunVerify(s, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Verifications < 1 || r.PerSecond <= 0 || r.Elapsed < 50*time.Millisecond {
		t.Fatalf("implausible result %+v", r)
	}
}

// TestInterleavedAndCold: interleaved windows give both rates, every
// window ran at least once, and a cold set verifies every node once, then
// refuses to run again (its chains are cached by then).
func TestInterleavedAndCold(t *testing.T) {
	s, err := NewVerifySetup(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	warm, base, err := RunInterleaved(s, 100*time.Millisecond, 4)
	if err != nil {
		t.Fatal(err)
	}
	if warm.Verifications < 4 || base.Verifications < 4 || warm.PerSecond <= 0 || base.PerSecond <= 0 {
		t.Fatalf("implausible interleaved result: warm %+v base %+v", warm, base)
	}
	// Four windows of 25 ms each per kind: each kind ran about 100 ms.
	for _, r := range []VerifyResult{warm, base} {
		if r.Elapsed < 100*time.Millisecond || r.Elapsed > 10*time.Second {
			t.Fatalf("a kind ran %s in total, want about 100 ms", r.Elapsed)
		}
	}
	cold, err := s.NewColdSet(3)
	if err != nil {
		t.Fatal(err)
	}
	r, err := RunCold(cold)
	if err != nil {
		t.Fatal(err)
	}
	if r.Verifications != 3 || r.PerSecond <= 0 {
		t.Fatalf("cold result %+v, want 3 verifications", r)
	}
	if _, err := RunCold(cold); err == nil {
		t.Fatal("a used cold set ran again")
	}
}
