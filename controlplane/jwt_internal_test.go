package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"
)

func TestJWTTTLCappedAtWorkloadTTL(t *testing.T) {
	for _, tc := range []struct{ jwt, workload, want time.Duration }{
		{0, time.Hour, DefaultJWTTTL},
		{time.Minute, time.Hour, time.Minute},
		{2 * time.Hour, time.Hour, time.Hour},
		{0, 2 * time.Minute, 2 * time.Minute},
	} {
		s := &Server{cfg: Config{JWTTTL: tc.jwt, WorkloadTTL: tc.workload}}
		if got := s.jwtTTL(); got != tc.want {
			t.Errorf("JWTTTL %v WorkloadTTL %v: got %v, want %v", tc.jwt, tc.workload, got, tc.want)
		}
	}
}

func TestJWTSignerRefusesOtherCurves(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newJWTSigner(k); err == nil {
		t.Fatal("P-384 key accepted for ES256")
	}
	k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	a, err := newJWTSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newJWTSigner(k)
	if err != nil {
		t.Fatal(err)
	}
	if a.kid == "" || a.kid != b.kid {
		t.Fatalf("key ID %q / %q is not a stable thumbprint", a.kid, b.kid)
	}
}
