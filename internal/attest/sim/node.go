package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// NodeConfig is what a simulated node's reports say. The zero value is a
// compliant guest: VMPL 0, no debug, no SMT, no migration agent, TCB 0.
type NodeConfig struct {
	// ChipID is the 64-byte chip ID; random when nil (for Turin 8 random
	// bytes, the hardware ID its VCEK names, then zeros).
	ChipID []byte
	// Measurement is the 48-byte launch measurement.
	Measurement []byte
	// HostData is the 32-byte host data field (optional).
	HostData []byte
	// TCB is the reported (and current, committed, launch) TCB, laid out
	// for the node's product (FMC only on Turin); the VCEK certifies it.
	TCB attest.TCBParts
	// Debug sets the guest policy's debug bit.
	Debug bool
	// SMT sets the guest policy's SMT bit and the platform's SMT-enabled bit.
	SMT bool
	// MigrationAgent sets the guest policy's migration agent bit.
	MigrationAgent bool
	// VMPL is the privilege level the report comes from (0-3).
	VMPL uint32
	// ReportVersion is the report format version; 3 when zero (v3 carries the CPUID).
	ReportVersion uint32
	// Product overrides the product named in the VCEK (default: the CA's).
	Product string
	// VCEKIssued overrides when the VCEK was issued; it is valid 7 years from then.
	VCEKIssued time.Time
}

type vcekSpec struct {
	product    string
	chipID     []byte
	issued     time.Time
	extensions []pkix.Extension // the VCEK's KDS extensions
}

// vcekExtensions are the KDS extensions of a VCEK for chipID at the raw
// tcb, in the layout AMD issues for the product line: structVersion 1 for
// Turin (fmcSPL, an 8-byte hwID: the chip ID's first 8 bytes), 0 for Milan
// and Genoa (a 64-byte hwID).
func vcekExtensions(product, line string, chipID []byte, tcb uint64) ([]pkix.Extension, error) {
	e := &kdscert.Extensions{ProductName: product, HWID: chipID, TCB: tcb}
	if line == attest.ProductTurin {
		e.StructVersion = 1
		e.HWID = chipID[:kdscert.HWIDSizeV1]
	}
	return kdscert.Encode(e)
}

// Node is one simulated confidential VM: its own chip ID and VCEK.
type Node struct {
	ca      *CA
	cfg     NodeConfig
	tcb     uint64 // raw TCB_VERSION in the product's layout
	vcekKey *ecdsa.PrivateKey
	vcek    *x509.Certificate
}

// NewNode creates a node with a fresh VCEK key certified by the CA.
func (ca *CA) NewNode(cfg NodeConfig) (*Node, error) {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate VCEK key: %w", err)
	}
	return ca.node(cfg, key)
}

func (ca *CA) node(cfg NodeConfig, key *ecdsa.PrivateKey) (*Node, error) {
	if cfg.Product == "" {
		cfg.Product = ca.product
	}
	product, err := kds.ParseProductName(cfg.Product, abi.VcekReportSigner)
	if err != nil {
		return nil, fmt.Errorf("product %q: %w", cfg.Product, err)
	}
	if cfg.ChipID == nil {
		cfg.ChipID = make([]byte, abi.ChipIDSize)
		// A Turin CHIP_ID is its 8-byte hardware ID followed by zeros.
		n := abi.ChipIDSize
		if kds.ProductLine(product) == attest.ProductTurin {
			n = kdscert.HWIDSizeV1
		}
		if _, err := rand.Read(cfg.ChipID[:n]); err != nil {
			return nil, fmt.Errorf("generate chip ID: %w", err)
		}
	}
	if len(cfg.ChipID) != abi.ChipIDSize {
		return nil, fmt.Errorf("chip ID is %d bytes, want %d", len(cfg.ChipID), abi.ChipIDSize)
	}
	if cfg.Measurement == nil {
		cfg.Measurement = make([]byte, abi.MeasurementSize)
	}
	if len(cfg.Measurement) != abi.MeasurementSize {
		return nil, fmt.Errorf("measurement is %d bytes, want %d", len(cfg.Measurement), abi.MeasurementSize)
	}
	if cfg.HostData == nil {
		cfg.HostData = make([]byte, abi.HostDataSize)
	}
	if len(cfg.HostData) != abi.HostDataSize {
		return nil, fmt.Errorf("host data is %d bytes, want %d", len(cfg.HostData), abi.HostDataSize)
	}
	if cfg.VMPL > 3 {
		return nil, fmt.Errorf("VMPL %d is not 0-3", cfg.VMPL)
	}
	if cfg.ReportVersion == 0 {
		cfg.ReportVersion = 3
	}
	tcb, err := attest.EncodeTCB(kds.ProductLine(product), cfg.TCB)
	if err != nil {
		return nil, fmt.Errorf("TCB: %w", err)
	}
	if cfg.VCEKIssued.IsZero() {
		cfg.VCEKIssued = ca.created
	}
	exts, err := vcekExtensions(cfg.Product, kds.ProductLine(product), cfg.ChipID, tcb)
	if err != nil {
		return nil, fmt.Errorf("VCEK extensions: %w", err)
	}
	spec := &vcekSpec{product: cfg.Product, chipID: cfg.ChipID, issued: cfg.VCEKIssued, extensions: exts}
	s, err := ca.builder(key, spec).TestOnlyCertChain()
	if err != nil {
		return nil, fmt.Errorf("certify simulated VCEK: %w", err)
	}
	return &Node{ca: ca, cfg: cfg, tcb: tcb, vcekKey: key, vcek: s.Vcek}, nil
}

// VCEK returns the node's endorsement certificate.
func (n *Node) VCEK() *x509.Certificate { return n.vcek }

// ChipID returns the node's chip ID.
func (n *Node) ChipID() []byte { return n.cfg.ChipID }

// Config returns the node's settings (with defaults filled in).
func (n *Node) Config() NodeConfig { return n.cfg }

// TEE implements attest.Provider.
func (n *Node) TEE() string { return attest.TEESimSnp }

// Report implements attest.Provider: a signed report carrying reportData,
// with the VCEK, ASK and ARK shipped alongside.
func (n *Node) Report(reportData [64]byte) (*attestv1.Evidence, error) {
	raw, err := n.RawReport(reportData)
	if err != nil {
		return nil, err
	}
	return &attestv1.Evidence{
		Tee:    attest.TEESimSnp,
		Report: raw,
		Chain:  &attestv1.CertChain{Vcek: n.vcek.Raw, Ask: n.ca.ask.Raw, Ark: n.ca.ark.Raw},
	}, nil
}

// RawReport builds and signs a report in the SNP ABI. The signature uses
// crypto/rand (go-sev-guest's test signer uses a predictable RNG).
func (n *Node) RawReport(reportData [64]byte) ([]byte, error) {
	tcb := n.tcb
	product, _ := kds.ParseProductName(n.cfg.Product, abi.VcekReportSigner)
	reportID := make([]byte, abi.ReportIDSize)
	if _, err := rand.Read(reportID); err != nil {
		return nil, err
	}
	var platformInfo uint64
	if n.cfg.SMT {
		platformInfo |= 1 // SMT_EN
	}
	platformInfo |= 1 << 1 // TSME_EN
	r := &spb.Report{
		Version:         n.cfg.ReportVersion,
		Policy:          abi.SnpPolicyToBytes(abi.SnpPolicy{ABIMajor: 1, ABIMinor: 55, SMT: n.cfg.SMT, Debug: n.cfg.Debug, MigrateMA: n.cfg.MigrationAgent}),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		Vmpl:            n.cfg.VMPL,
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		CurrentTcb:      uint64(tcb),
		PlatformInfo:    platformInfo,
		ReportData:      reportData[:],
		Measurement:     n.cfg.Measurement,
		HostData:        n.cfg.HostData,
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        reportID,
		ReportIdMa:      ffs(abi.ReportIDMASize),
		ReportedTcb:     uint64(tcb),
		ChipId:          n.cfg.ChipID,
		CommittedTcb:    uint64(tcb),
		CurrentBuild:    21, CurrentMinor: 55, CurrentMajor: 1,
		CommittedBuild: 21, CommittedMinor: 55, CommittedMajor: 1,
		LaunchTcb: uint64(tcb),
		Signature: make([]byte, abi.SignatureSize),
	}
	if r.Version >= 3 {
		r.Cpuid1EaxFms = abi.MaskedCpuid1EaxFromSevProduct(product)
	}
	raw, err := abi.ReportToAbiBytes(r)
	if err != nil {
		return nil, fmt.Errorf("encode simulated report: %w", err)
	}
	h := crypto.SHA384.New()
	h.Write(abi.SignedComponent(raw))
	rs, ss, err := ecdsa.Sign(rand.Reader, n.vcekKey, h.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("sign simulated report: %w", err)
	}
	if err := abi.SetSignature(rs, ss, raw); err != nil {
		return nil, err
	}
	return raw, nil
}

func ffs(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xff
	}
	return b
}

// nodeState is what a saved node keeps: its VCEK key and chip ID. The rest
// of its configuration comes from the caller each time, so a "rogue" node
// is one flag away.
type nodeState struct {
	ChipID string `json:"chipID"`
}

// OpenNode loads (or creates and saves) the node called name under the CA's
// directory, keeping its chip ID and VCEK key; cfg supplies everything else.
func (ca *CA) OpenNode(name string, cfg NodeConfig) (*Node, error) {
	if ca.dir == "" {
		return nil, fmt.Errorf("simulated CA is not saved; cannot keep node %q", name)
	}
	if name == "" || filepath.Base(name) != name {
		return nil, fmt.Errorf("simulated node name %q must be a plain file name", name)
	}
	dir := filepath.Join(ca.dir, "nodes", name)
	keyPath, statePath := filepath.Join(dir, "vcek.key"), filepath.Join(dir, "node.json")
	data, err := os.ReadFile(keyPath)
	if errors.Is(err, os.ErrNotExist) {
		n, err := ca.NewNode(cfg)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalECPrivateKey(n.vcekKey)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create simulated node dir: %w", err)
		}
		if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
			return nil, fmt.Errorf("write simulated VCEK key: %w", err)
		}
		st, _ := json.Marshal(nodeState{ChipID: hex.EncodeToString(n.cfg.ChipID)})
		if err := os.WriteFile(statePath, st, 0o644); err != nil {
			return nil, fmt.Errorf("write simulated node state: %w", err)
		}
		return n, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read simulated VCEK key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", keyPath)
	}
	key, err := x509.ParseECPrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	stData, err := os.ReadFile(statePath)
	if err != nil {
		return nil, fmt.Errorf("read simulated node state: %w", err)
	}
	var st nodeState
	if err := json.Unmarshal(stData, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath, err)
	}
	if cfg.ChipID == nil {
		if cfg.ChipID, err = hex.DecodeString(st.ChipID); err != nil {
			return nil, fmt.Errorf("%s: chip ID: %w", statePath, err)
		}
	}
	return ca.node(cfg, key)
}
