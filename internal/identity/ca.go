package identity

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CA validity and clock-skew allowance.
const (
	caValidity = 10 * 365 * 24 * time.Hour
	clockSkew  = time.Minute
)

// CA is a SPIFFE X.509 certificate authority for one trust domain: a
// self-signed root whose key signs X.509-SVIDs directly (no intermediates).
// A CA is immutable after construction and safe for concurrent use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA creates a CA for trust domain td with a fresh ECDSA P-256 key: a
// self-signed root (subject O=confmesh, CN=confmesh CA <td>; URI SAN
// spiffe://<td>; CertSign|CRLSign; path length 0, so it can sign only
// leaves), valid from now-1m for 10 years, with a random 128-bit serial.
func NewCA(td spiffeid.TrustDomain, now time.Time) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("new CA: trust domain is empty")
	}
	if now.IsZero() {
		return nil, errors.New("new CA: time is zero")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA: generate key: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"confmesh"},
			CommonName:   "confmesh CA " + td.Name(),
		},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: parse certificate: %w", err)
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

// LoadCA rebuilds a CA from the DER certificate and PKCS#8 DER private key
// that Marshal returned. It checks that the certificate is a self-signed CA
// allowed to sign certificates, that its single URI SAN is a SPIFFE trust
// domain ID, and that the key matches the certificate.
func LoadCA(certDER, keyDER []byte) (*CA, error) {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("load CA: certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, errors.New("load CA: certificate is not a CA certificate")
	}
	if cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("load CA: certificate lacks the certSign key usage")
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("load CA: certificate has %d URI SANs, want exactly 1 (spiffe://<trust-domain>)", len(cert.URIs))
	}
	id, err := spiffeid.FromURI(cert.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("load CA: URI SAN %q: %w", cert.URIs[0], err)
	}
	if id.Path() != "" {
		return nil, fmt.Errorf("load CA: URI SAN %q is not a trust domain ID (it has a path)", id)
	}
	if err := cert.CheckSignatureFrom(cert); err != nil {
		return nil, fmt.Errorf("load CA: certificate is not validly self-signed: %w", err)
	}
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("load CA: private key: %w", err)
	}
	key, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA: private key type %T cannot sign", k)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, errors.New("load CA: private key does not match the certificate")
	}
	return &CA{td: id.TrustDomain(), cert: cert, key: key}, nil
}

// Marshal returns the CA certificate (DER) and private key (PKCS#8 DER), the
// inputs of LoadCA. The key is secret: store it accordingly.
func (ca *CA) Marshal() (certDER, keyDER []byte, err error) {
	keyDER, err = x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal CA key: %w", err)
	}
	return bytes.Clone(ca.cert.Raw), keyDER, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Certificate returns the CA's root certificate. Callers must not modify it.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// Bundle returns a new X.509 trust bundle for the CA's trust domain holding
// the CA certificate; callers may modify it.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}
