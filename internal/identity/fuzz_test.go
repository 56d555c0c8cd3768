package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net/url"
	"testing"
)

// FuzzParseCSR: a CSR arrives in an unauthenticated Join; ParseCSR never
// panics, refuses anything over MaxCSRSize, and what it accepts carries a
// valid self-signature over an allowed key.
func FuzzParseCSR(f *testing.F) {
	_, good, err := NewKeyAndCSR()
	if err != nil {
		f.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 1024)
	u, _ := url.Parse("spiffe://cluster.test/confmesh/node/node-a")
	for _, key := range []any{p384, ed, rsaKey} {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}, DNSNames: []string{"x.example"}}, key)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	bad := append([]byte(nil), good...)
	bad[len(bad)-1] ^= 1
	for _, s := range [][]byte{good, bad, good[:len(good)/2], nil, {0x30, 0x82, 0xff, 0xff}, make([]byte, MaxCSRSize+1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			if csr != nil {
				t.Fatalf("ParseCSR returned a CSR with error %v", err)
			}
			return
		}
		if len(der) > MaxCSRSize {
			t.Fatalf("accepted a %d-byte CSR, limit %d", len(der), MaxCSRSize)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose self-signature fails: %v", err)
		}
		if err := checkPublicKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted a CSR with a refused key: %v", err)
		}
	})
}
