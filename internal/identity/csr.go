package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"

	"github.com/confmesh/confmesh/internal/attest"
)

// MaxCSRSize bounds a CSR, checked before it is parsed; a P-256 or P-384
// request is well under 1 KiB.
const MaxCSRSize = 8 << 10

// ParseCSR parses a DER PKCS#10 certificate signing request, checks its
// self-signature (proof of possession of the key) and requires an ECDSA
// P-256/P-384 or Ed25519 public key. Only the key of the returned request
// matters to the CA; its subject and requested extensions are ignored.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("parse CSR: empty")
	}
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("parse CSR: %d bytes, limit %d", len(der), MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("parse CSR: bad self-signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("parse CSR: %w", err)
	}
	return csr, nil
}

// NewKeyAndCSR generates an ECDSA P-256 SVID key and a DER CSR for it, as an
// agent does before joining or renewing.
func NewKeyAndCSR() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate SVID key: %w", err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{Organization: []string{"confmesh"}}}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return key, der, nil
}

// SPKIHash returns SHA-256 of the DER SubjectPublicKeyInfo of pub: the
// identity key hash of the attestation binding (attest.KeyHash).
func SPKIHash(pub crypto.PublicKey) ([]byte, error) {
	if pub == nil {
		return nil, errors.New("SPKI hash: public key is missing")
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("SPKI hash: %w", err)
	}
	return attest.KeyHash(spki), nil
}
