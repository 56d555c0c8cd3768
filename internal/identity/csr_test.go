package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
)

func TestNewKeyAndCSR(t *testing.T) {
	key, der, err := NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("key %T, want ECDSA P-256", key.Public())
	}
	csr, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	if !csr.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("CSR key is not the generated key")
	}
}

func TestParseCSR(t *testing.T) {
	_, good, err := NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	csrFor := func(key any) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, der := range map[string][]byte{"P-384": csrFor(p384), "Ed25519": csrFor(edKey)} {
		if _, err := ParseCSR(der); err != nil {
			t.Errorf("%s CSR refused: %v", name, err)
		}
	}

	// Flipping the last byte changes the signature's s value: still DER,
	// but the signature no longer verifies.
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0x01
	// Flipping a byte of the public key point breaks the proof of possession.
	badKey := bytes.Clone(good)
	csr, err := x509.ParseCertificateRequest(good)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(badKey, csr.RawSubjectPublicKeyInfo)
	if i < 0 {
		t.Fatal("SPKI not found in CSR")
	}
	badKey[i+len(csr.RawSubjectPublicKeyInfo)-1] ^= 0x01

	tests := []struct {
		name    string
		der     []byte
		wantErr string
	}{
		{"empty", nil, "parse CSR: empty"},
		{"garbage", []byte("definitely not a CSR"), "parse CSR:"},
		{"trailing bytes", append(bytes.Clone(good), 0), "parse CSR:"},
		{"tampered signature", badSig, "bad self-signature"},
		{"tampered key", badKey, "parse CSR:"},
		{"RSA key", csrFor(rsaKey), "*rsa.PublicKey is not supported"},
		{"P-224 key", csrFor(p224), "curve P-224 is not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCSR(tt.der)
			if got != nil {
				t.Fatal("got a CSR")
			}
			wantErr(t, err, tt.wantErr)
		})
	}
}

func TestSPKIHash(t *testing.T) {
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range map[string]any{"ECDSA": ecKey.Public(), "Ed25519": edPub} {
		spki, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		want := sha256.Sum256(spki)
		got, err := SPKIHash(pub)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, want[:]) || !bytes.Equal(got, attest.KeyHash(spki)) {
			t.Fatalf("%s: SPKIHash = %x, want %x", name, got, want)
		}
	}
	other, err := SPKIHash(edPub)
	if err != nil {
		t.Fatal(err)
	}
	if mine, _ := SPKIHash(ecKey.Public()); bytes.Equal(mine, other) {
		t.Fatal("different keys hash equal")
	}
	if _, err := SPKIHash(nil); err == nil {
		t.Error("SPKIHash(nil) succeeded")
	}
	if _, err := SPKIHash(struct{}{}); err == nil {
		t.Error("SPKIHash of an unsupported key succeeded")
	}
}
