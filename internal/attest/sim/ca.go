// Package sim is the simulated SEV-SNP TEE (tee type "sim-snp"): a locally
// generated ARK/ASK, a VCEK per simulated node, and reports in the genuine
// SNP ABI signed by that VCEK. Verification runs the same code as for real
// hardware; only the trusted root differs, and the AMD roots refuse it.
package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"
)

// DefaultProduct is the product the simulated CA certifies.
const DefaultProduct = "Milan-B1"

// Files a CA directory holds. RootFile is what a policy names.
const (
	RootFile   = "root.pem" // ASK then ARK, the KDS cert_chain format
	arkKeyFile = "ark.key"
	askKeyFile = "ask.key"
	metaFile   = "ca.json"
)

// CA is a simulated AMD root: ARK and ASK keys and certificates.
type CA struct {
	dir     string
	product string
	created time.Time
	arkKey  *rsa.PrivateKey
	askKey  *rsa.PrivateKey
	ark     *x509.Certificate
	ask     *x509.Certificate
}

type caMeta struct {
	Product string    `json:"product"`
	Created time.Time `json:"created"`
}

// NewCA generates a fresh ARK/ASK pair (RSA-4096, as AMD's) in memory.
func NewCA(product string) (*CA, error) { return newCA(product, 4096) }

// NewTestCA is NewCA with RSA-2048 keys, which generate in a fraction of
// the time. For tests only: the chain verifies the same way.
func NewTestCA(product string) (*CA, error) { return newCA(product, 2048) }

func newCA(product string, bits int) (*CA, error) {
	if product == "" {
		product = DefaultProduct
	}
	if _, err := kds.ParseProductName(product, abi.VcekReportSigner); err != nil {
		return nil, fmt.Errorf("simulated product %q: %w (want e.g. Milan-B1, Genoa-B1, Turin-B0)", product, err)
	}
	ca := &CA{product: product, created: time.Now().Add(-time.Hour).Truncate(time.Second)}
	var err error
	if ca.arkKey, err = rsa.GenerateKey(rand.Reader, bits); err != nil {
		return nil, fmt.Errorf("generate ARK key: %w", err)
	}
	if ca.askKey, err = rsa.GenerateKey(rand.Reader, bits); err != nil {
		return nil, fmt.Errorf("generate ASK key: %w", err)
	}
	if err := ca.certify(); err != nil {
		return nil, err
	}
	return ca, nil
}

// OpenCA loads the CA kept in dir, or creates and saves one when dir holds none.
func OpenCA(dir, product string) (*CA, error) {
	meta, err := os.ReadFile(filepath.Join(dir, metaFile))
	if errors.Is(err, os.ErrNotExist) {
		ca, err := NewCA(product)
		if err != nil {
			return nil, err
		}
		if err := ca.Save(dir); err != nil {
			return nil, err
		}
		return ca, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read simulated CA: %w", err)
	}
	var m caMeta
	if err := json.Unmarshal(meta, &m); err != nil {
		return nil, fmt.Errorf("simulated CA %s: %w", filepath.Join(dir, metaFile), err)
	}
	if product != "" && product != m.Product {
		return nil, fmt.Errorf("simulated CA in %s certifies %s, not %s", dir, m.Product, product)
	}
	ca := &CA{dir: dir, product: m.Product, created: m.Created}
	if ca.arkKey, err = readRSAKey(filepath.Join(dir, arkKeyFile)); err != nil {
		return nil, err
	}
	if ca.askKey, err = readRSAKey(filepath.Join(dir, askKeyFile)); err != nil {
		return nil, err
	}
	if err := ca.certify(); err != nil {
		return nil, err
	}
	return ca, nil
}

// certify builds the ARK and ASK certificates from the keys with
// go-sev-guest's signer builder (the VCEK it also makes is discarded).
func (ca *CA) certify() error {
	throwaway, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	s, err := ca.builder(throwaway, nil).TestOnlyCertChain()
	if err != nil {
		return fmt.Errorf("certify simulated ARK/ASK: %w", err)
	}
	ca.ark, ca.ask = s.Ark, s.Ask
	return nil
}

// Save writes the keys (0600), the root PEM and the metadata into dir.
func (ca *CA) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create simulated CA dir: %w", err)
	}
	m, _ := json.MarshalIndent(caMeta{Product: ca.product, Created: ca.created}, "", "  ")
	files := []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{arkKeyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(ca.arkKey)}), 0o600},
		{askKeyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(ca.askKey)}), 0o600},
		{RootFile, ca.RootPEM(), 0o644},
		{metaFile, m, 0o644},
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("write simulated CA: %w", err)
		}
	}
	ca.dir = dir
	return nil
}

// RootPEM is the ASK then the ARK, PEM: the file a policy names to trust this CA.
func (ca *CA) RootPEM() []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.ask.Raw})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.ark.Raw})...)
}

// RootPath is the path of the root PEM, once the CA is saved.
func (ca *CA) RootPath() string { return filepath.Join(ca.dir, RootFile) }

// Dir is where the CA is saved ("" when in memory only).
func (ca *CA) Dir() string { return ca.dir }

// Product is the product name the CA certifies (e.g. Milan-B1).
func (ca *CA) Product() string { return ca.product }

// ARK returns the root certificate.
func (ca *CA) ARK() *x509.Certificate { return ca.ark }

// ASK returns the intermediate certificate.
func (ca *CA) ASK() *x509.Certificate { return ca.ask }

// builder prepares go-sev-guest's signer builder with this CA's keys and,
// when vcekKey is set, a VCEK with the given extensions. The ASK key stands
// in for the ASVK, which confmesh does not use.
func (ca *CA) builder(vcekKey *ecdsa.PrivateKey, exts *vcekSpec) *sevtest.AmdSignerBuilder {
	keys := &sevtest.AmdKeys{Ark: ca.arkKey, Ask: ca.askKey, Asvk: ca.askKey, Vcek: vcekKey}
	b := &sevtest.AmdSignerBuilder{
		Keys:             keys,
		ProductName:      ca.product,
		ArkCreationTime:  ca.created,
		AskCreationTime:  ca.created,
		AsvkCreationTime: ca.created,
		VcekCreationTime: ca.created,
	}
	if exts != nil {
		b.ProductName = exts.product
		b.VcekCreationTime = exts.issued
		b.VcekCustom.Extensions = exts.extensions
		copy(b.HWID[:], exts.chipID)
	}
	return b
}

func readRSAKey(path string) (*rsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read simulated CA key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}
