// Package simtdx is the simulated Intel TDX TEE (tee type "sim-tdx"): a
// locally generated Intel-shaped chain (root CA, PCK platform CA, a PCK
// leaf per node carrying the SGX extensions FMSPC, PCE ID, PPID and TCB),
// a quoting-enclave report and attestation key per node, and v4 quotes in
// the genuine ABI signed by that key. go-tdx-guest's verifier accepts them
// with the simulated root as trusted root and refuses them with Intel's.
// Collateral (TCB info, QE identity, CRLs) is signed by the simulated chain.
// Every key comes from crypto/rand.
package simtdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files a CA directory holds. RootFile is what a policy names (kind
// simulated-tdx).
const (
	RootFile        = "root.pem"
	rootKeyFile     = "root.key"
	platformFile    = "platform-ca.pem"
	platformKeyFile = "platform-ca.key"
	tcbFile         = "tcb-signing.pem"
	tcbKeyFile      = "tcb-signing.key"
)

// Subject common names go-tdx-guest requires of a PCK chain and of the
// collateral signer. The organisation says what the chain really is.
const (
	rootCN     = "Intel SGX Root CA"
	platformCN = "Intel SGX PCK Platform CA"
	pckCN      = "Intel SGX PCK Certificate"
	tcbCN      = "Intel SGX TCB Signing"
	simOrg     = "confmesh SIMULATED TDX (not Intel)"
	// RootCRLURL is the CRL distribution point the simulated root names.
	RootCRLURL = "https://sim-tdx.invalid/IntelSGXRootCA.der"
)

// CA is a simulated Intel root with its PCK platform CA and TCB signing key.
type CA struct {
	dir                     string
	rootKey, pcaKey, tcbKey *ecdsa.PrivateKey
	root, pca, tcb          *x509.Certificate
}

// NewCA generates a fresh chain (ECDSA P-256, as Intel's) in memory.
func NewCA() (*CA, error) {
	ca := &CA{}
	var err error
	for _, k := range []**ecdsa.PrivateKey{&ca.rootKey, &ca.pcaKey, &ca.tcbKey} {
		if *k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
	}
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	if ca.root, err = createCert(&x509.Certificate{
		Subject: name(rootCN), NotBefore: now, NotAfter: now.AddDate(30, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{RootCRLURL},
	}, nil, &ca.rootKey.PublicKey, ca.rootKey); err != nil {
		return nil, err
	}
	if ca.pca, err = createCert(&x509.Certificate{
		Subject: name(platformCN), NotBefore: now, NotAfter: now.AddDate(25, 0, 0),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: []string{RootCRLURL},
	}, ca.root, &ca.pcaKey.PublicKey, ca.rootKey); err != nil {
		return nil, err
	}
	if ca.tcb, err = createCert(&x509.Certificate{
		Subject: name(tcbCN), NotBefore: now, NotAfter: now.AddDate(7, 0, 0),
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature,
	}, ca.root, &ca.tcbKey.PublicKey, ca.rootKey); err != nil {
		return nil, err
	}
	return ca, nil
}

func name(cn string) pkix.Name {
	return pkix.Name{CommonName: cn, Organization: []string{simOrg}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}, Country: []string{"US"}}
}

func createCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 159))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.SignatureAlgorithm = x509.ECDSAWithSHA256
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	ski := sha256.Sum256(pubDER)
	tmpl.SubjectKeyId = ski[:20]
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("create %s certificate: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

// Root is the simulated root CA certificate.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// RootPEM is the root in the form a policy's simulated-tdx root file holds.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.root.Raw})
}

// RootPath is where Save put the root, for a policy to name.
func (ca *CA) RootPath() string { return filepath.Join(ca.dir, RootFile) }

// Save writes the chain (certificates 0644, keys 0600) to dir.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("simulated TDX CA: %w", err)
	}
	for _, f := range []struct {
		file string
		cert *x509.Certificate
		key  *ecdsa.PrivateKey
		kf   string
	}{{RootFile, ca.root, ca.rootKey, rootKeyFile}, {platformFile, ca.pca, ca.pcaKey, platformKeyFile}, {tcbFile, ca.tcb, ca.tcbKey, tcbKeyFile}} {
		if err := os.WriteFile(filepath.Join(dir, f.file), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.cert.Raw}), 0o644); err != nil {
			return err
		}
		if err := writeKey(filepath.Join(dir, f.kf), f.key); err != nil {
			return err
		}
	}
	ca.dir = dir
	return nil
}

// OpenCA loads the CA kept in dir, or creates and saves one when dir holds none.
func OpenCA(dir string) (*CA, error) {
	if _, err := os.Stat(filepath.Join(dir, rootKeyFile)); errors.Is(err, os.ErrNotExist) {
		ca, err := NewCA()
		if err != nil {
			return nil, err
		}
		return ca, ca.Save(dir)
	}
	ca := &CA{dir: dir}
	var err error
	for _, f := range []struct {
		file, kf string
		cert     **x509.Certificate
		key      **ecdsa.PrivateKey
	}{{RootFile, rootKeyFile, &ca.root, &ca.rootKey}, {platformFile, platformKeyFile, &ca.pca, &ca.pcaKey}, {tcbFile, tcbKeyFile, &ca.tcb, &ca.tcbKey}} {
		if *f.cert, err = readCert(filepath.Join(dir, f.file)); err != nil {
			return nil, err
		}
		if *f.key, err = readKey(filepath.Join(dir, f.kf)); err != nil {
			return nil, err
		}
	}
	return ca, nil
}

func writeKey(path string, k *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulated TDX CA: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("simulated TDX CA: %s: no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("simulated TDX CA: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("simulated TDX CA: %s: not an ECDSA key", path)
	}
	return ek, nil
}

func readCert(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("simulated TDX CA: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, fmt.Errorf("simulated TDX CA: %s: no PEM certificate", path)
	}
	return x509.ParseCertificate(b.Bytes)
}

// IsCADir reports whether dir holds a simulated TDX CA.
func IsCADir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, rootKeyFile))
	return err == nil
}
