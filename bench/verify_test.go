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
