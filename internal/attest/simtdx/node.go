package simtdx

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	tdxabi "github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
)

// Defaults of a simulated TD: the FMSPC and SVNs its PCK certificate and
// quotes carry, XFAM and TD attributes as a typical Linux TD has them.
var (
	DefaultFMSPC     = []byte{0x90, 0xc0, 0x6f, 0x00, 0x00, 0x00}
	DefaultXFAM      = []byte{0xe7, 0x02, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00}
	DefaultTDAttrs   = []byte{0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00} // SEPT_VE_DISABLE
	DefaultTeeTCBSVN = []byte{3, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	// QEVendorID is Intel's quoting enclave vendor ID.
	QEVendorID = []byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}
	// qeMrSigner is the simulated quoting enclave's signer.
	qeMrSigner = sha256.Sum256([]byte("confmesh simulated TDX quoting enclave"))
	// qeAttributes is the QE report's ATTRIBUTES (INIT, MODE64BIT), as Intel's QE.
	qeAttributes = []byte{0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
)

// qeProdID is the TDX quoting enclave's ISVPRODID.
const qeProdID = 2

// NodeConfig is what a simulated TD reports. Zero values take the defaults
// above; the MRTD defaults to all zero.
type NodeConfig struct {
	MRTD       []byte   // 48 bytes
	RTMRs      [][]byte // 4 x 48 bytes
	MRConfigID []byte   // 48 bytes
	Debug      bool     // sets the DEBUG TD attribute
	TeeTCBSVN  []byte   // 16 bytes
	XFAM       []byte   // 8 bytes
	TDAttrs    []byte   // 8 bytes (DEBUG is added when Debug is set)
	QESVN      uint16
	PCESVN     uint16
	FMSPC      []byte // 6 bytes, in the PCK certificate
	// PPID identifies the simulated platform (16 bytes); random when empty.
	PPID []byte
}

func (c *NodeConfig) fill() error {
	def := func(v *[]byte, d []byte, n int, field string) error {
		if len(*v) == 0 {
			*v = append([]byte(nil), d...)
		}
		if len(*v) != n {
			return fmt.Errorf("simulated TDX %s: %d bytes, want %d", field, len(*v), n)
		}
		return nil
	}
	if err := def(&c.MRTD, make([]byte, 48), 48, "MRTD"); err != nil {
		return err
	}
	if err := def(&c.MRConfigID, make([]byte, 48), 48, "MRCONFIGID"); err != nil {
		return err
	}
	if err := def(&c.TeeTCBSVN, DefaultTeeTCBSVN, 16, "TEE TCB SVN"); err != nil {
		return err
	}
	if err := def(&c.XFAM, DefaultXFAM, 8, "XFAM"); err != nil {
		return err
	}
	if err := def(&c.TDAttrs, DefaultTDAttrs, 8, "TD attributes"); err != nil {
		return err
	}
	if err := def(&c.FMSPC, DefaultFMSPC, 6, "FMSPC"); err != nil {
		return err
	}
	if len(c.PPID) == 0 {
		c.PPID = make([]byte, 16)
		if _, err := rand.Read(c.PPID); err != nil {
			return err
		}
	}
	if len(c.PPID) != 16 {
		return fmt.Errorf("simulated TDX PPID: %d bytes, want 16", len(c.PPID))
	}
	if len(c.RTMRs) == 0 {
		c.RTMRs = [][]byte{make([]byte, 48), make([]byte, 48), make([]byte, 48), make([]byte, 48)}
	}
	if len(c.RTMRs) != 4 {
		return fmt.Errorf("simulated TDX RTMRs: %d, want 4", len(c.RTMRs))
	}
	for i, r := range c.RTMRs {
		if len(r) != 48 {
			return fmt.Errorf("simulated TDX RTMR%d: %d bytes, want 48", i, len(r))
		}
	}
	c.TDAttrs = append([]byte(nil), c.TDAttrs...)
	if c.Debug {
		c.TDAttrs[0] |= 1
	}
	return nil
}

// Node is one simulated TD: its platform's PCK key and certificate, its
// quoting enclave's attestation key and signed QE report.
type Node struct {
	ca        *CA
	cfg       NodeConfig
	pckKey    *ecdsa.PrivateKey
	pck       *x509.Certificate
	attestKey *ecdsa.PrivateKey
	certData  *tdxpb.CertificationData
}

// NewNode makes a simulated TD with fresh keys.
func (ca *CA) NewNode(cfg NodeConfig) (*Node, error) {
	pckKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return ca.node(cfg, pckKey, ak)
}

func (ca *CA) node(cfg NodeConfig, pckKey, ak *ecdsa.PrivateKey) (*Node, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	n := &Node{ca: ca, cfg: cfg, pckKey: pckKey, attestKey: ak}
	ext, err := sgxExtension(cfg)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour).Truncate(time.Second)
	if n.pck, err = createCert(&x509.Certificate{
		Subject: name(pckCN), NotBefore: now, NotAfter: now.AddDate(7, 0, 0),
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment,
		CRLDistributionPoints: []string{pcs.PckCrlURL("platform")},
		ExtraExtensions:       []pkix.Extension{{Id: pcs.OidSgxExtension, Value: ext}},
	}, ca.pca, &pckKey.PublicKey, ca.pcaKey); err != nil {
		return nil, err
	}
	if err := n.certify(); err != nil {
		return nil, err
	}
	return n, nil
}

// certify builds the QE report (binding the attestation key) signed by the
// PCK key, and the certification data every quote carries.
func (n *Node) certify() error {
	akRaw := rawPub(&n.attestKey.PublicKey)
	authData := make([]byte, 32)
	if _, err := rand.Read(authData); err != nil {
		return err
	}
	h := sha256.Sum256(append(append([]byte(nil), akRaw...), authData...))
	rd := make([]byte, 64)
	copy(rd, h[:])
	qe := &tdxpb.EnclaveReport{
		CpuSvn: make([]byte, 16), Reserved1: make([]byte, 28), Attributes: append([]byte(nil), qeAttributes...),
		MrEnclave: make([]byte, 32), Reserved2: make([]byte, 32), MrSigner: qeMrSigner[:], Reserved3: make([]byte, 96),
		IsvProdId: qeProdID, IsvSvn: uint32(n.cfg.QESVN), Reserved4: make([]byte, 60), ReportData: rd,
	}
	raw, err := tdxabi.EnclaveReportToAbiBytes(qe)
	if err != nil {
		return fmt.Errorf("QE report: %w", err)
	}
	sig, err := signRaw(n.pckKey, raw)
	if err != nil {
		return err
	}
	chain := append(append(append([]byte(nil), pemCert(n.pck)...), pemCert(n.ca.pca)...), pemCert(n.ca.root)...)
	qrc := &tdxpb.QEReportCertificationData{
		QeReport: qe, QeReportSignature: sig,
		QeAuthData:              &tdxpb.QeAuthData{ParsedDataSize: uint32(len(authData)), Data: authData},
		PckCertificateChainData: &tdxpb.PCKCertificateChainData{CertificateDataType: 5, Size: uint32(len(chain)), PckCertChain: chain},
	}
	size := 384 + 64 + 2 + len(authData) + 6 + len(chain)
	n.certData = &tdxpb.CertificationData{CertificateDataType: 6, Size: uint32(size), QeReportCertificationData: qrc}
	return nil
}

// Config is what the node reports.
func (n *Node) Config() NodeConfig { return n.cfg }

// PCK is the node's PCK certificate.
func (n *Node) PCK() *x509.Certificate { return n.pck }

// TEE implements attest.Provider.
func (n *Node) TEE() string { return attest.TEESimTDX }

// Report implements attest.Provider: a v4 quote carrying reportData.
func (n *Node) Report(reportData [64]byte) (*attestv1.Evidence, error) {
	q, err := n.Quote(reportData)
	if err != nil {
		return nil, err
	}
	return &attestv1.Evidence{Tee: attest.TEESimTDX, Report: q}, nil
}

// Quote returns a raw v4 quote whose REPORTDATA is reportData.
func (n *Node) Quote(reportData [64]byte) ([]byte, error) {
	c := n.cfg
	le16 := func(v uint16) []byte { b := make([]byte, 2); binary.LittleEndian.PutUint16(b, v); return b }
	header := &tdxpb.Header{
		Version: tdxabi.QuoteVersionV4, AttestationKeyType: tdxabi.AttestationKeyType, TeeType: tdxabi.TeeTDX,
		QeSvn: le16(c.QESVN), PceSvn: le16(c.PCESVN), QeVendorId: QEVendorID, UserData: make([]byte, 20),
	}
	seam := sha512.Sum384([]byte("confmesh simulated TDX module"))
	body := &tdxpb.TDQuoteBody{
		TeeTcbSvn: c.TeeTCBSVN, MrSeam: seam[:], MrSignerSeam: make([]byte, 48), SeamAttributes: make([]byte, 8),
		TdAttributes: c.TDAttrs, Xfam: c.XFAM, MrTd: c.MRTD, MrConfigId: c.MRConfigID,
		MrOwner: make([]byte, 48), MrOwnerConfig: make([]byte, 48), Rtmrs: c.RTMRs, ReportData: reportData[:],
	}
	hb, err := tdxabi.HeaderToAbiBytes(header)
	if err != nil {
		return nil, err
	}
	bb, err := tdxabi.TdQuoteBodyToAbiBytes(body)
	if err != nil {
		return nil, err
	}
	sig, err := signRaw(n.attestKey, append(hb, bb...))
	if err != nil {
		return nil, err
	}
	q := &tdxpb.QuoteV4{
		Header: header, TdQuoteBody: body,
		SignedDataSize: uint32(64 + 64 + 6 + n.certData.GetSize()),
		SignedData: &tdxpb.Ecdsa256BitQuoteV4AuthData{
			Signature: sig, EcdsaAttestationKey: rawPub(&n.attestKey.PublicKey), CertificationData: n.certData,
		},
	}
	return tdxabi.QuoteToAbiBytes(q)
}

// signRaw signs SHA-256(msg) and returns r||s, 32 bytes each.
func signRaw(k *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, k, h[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

func rawPub(p *ecdsa.PublicKey) []byte {
	out := make([]byte, 64)
	p.X.FillBytes(out[:32])
	p.Y.FillBytes(out[32:])
	return out
}

// sgxExtension encodes the SGX extension of a PCK certificate: PPID, TCB
// (16 component SVNs, PCESVN, CPUSVN), PCE ID, FMSPC, SGX type.
func sgxExtension(c NodeConfig) ([]byte, error) {
	type attr struct {
		Type  asn1.ObjectIdentifier
		Value any
	}
	type tcbSeq struct {
		Type  asn1.ObjectIdentifier
		Comps []attr
	}
	cpusvn := make([]byte, 16)
	var comps []attr
	for i := 1; i <= 16; i++ {
		comps = append(comps, attr{append(append(asn1.ObjectIdentifier(nil), pcs.OidTCB...), i), int64(cpusvn[i-1])})
	}
	comps = append(comps, attr{pcs.OidPCESvn, int64(c.PCESVN)}, attr{pcs.OidCPUSvn, cpusvn})
	tcb, err := asn1.Marshal(tcbSeq{pcs.OidTCB, comps})
	if err != nil {
		return nil, err
	}
	var parts []asn1.RawValue
	for _, a := range []attr{
		{pcs.OidPPID, c.PPID},
		{pcs.OidPCEID, []byte{0, 0}},
		{pcs.OidFMSPC, c.FMSPC},
		{asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}, asn1.Enumerated(0)},
	} {
		b, err := asn1.Marshal(a)
		if err != nil {
			return nil, err
		}
		parts = append(parts, asn1.RawValue{FullBytes: b})
	}
	parts = append([]asn1.RawValue{parts[0], {FullBytes: tcb}}, parts[1:]...)
	return asn1.Marshal(parts)
}

var nodeName = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

type nodeState struct {
	PCKKey    []byte `json:"pckKey"`
	AttestKey []byte `json:"attestKey"`
	PPID      []byte `json:"ppid"`
}

// OpenNode returns the simulated TD name, keeping its platform identity
// (PCK key, PPID) and attestation key under the CA directory across runs;
// everything else comes from cfg each time.
func (ca *CA) OpenNode(nodeNameStr string, cfg NodeConfig) (*Node, error) {
	if ca.dir == "" {
		return nil, errors.New("simulated TDX CA has no directory: Save it first")
	}
	if !nodeName.MatchString(nodeNameStr) {
		return nil, fmt.Errorf("simulated TDX node name %q: want a lower-case DNS label", nodeNameStr)
	}
	path := filepath.Join(ca.dir, "nodes", nodeNameStr+".json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		pckKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		ak, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		if len(cfg.PPID) == 0 {
			cfg.PPID = make([]byte, 16)
			if _, err := rand.Read(cfg.PPID); err != nil {
				return nil, err
			}
		}
		st := nodeState{PPID: cfg.PPID}
		if st.PCKKey, err = x509.MarshalPKCS8PrivateKey(pckKey); err != nil {
			return nil, err
		}
		if st.AttestKey, err = x509.MarshalPKCS8PrivateKey(ak); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(st)
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
		return ca.node(cfg, pckKey, ak)
	}
	if err != nil {
		return nil, fmt.Errorf("simulated TDX node: %w", err)
	}
	var st nodeState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("simulated TDX node %s: %w", path, err)
	}
	keys := make([]*ecdsa.PrivateKey, 2)
	for i, der := range [][]byte{st.PCKKey, st.AttestKey} {
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("simulated TDX node %s: %w", path, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("simulated TDX node %s: not an ECDSA key", path)
		}
		keys[i] = ek
	}
	cfg.PPID = st.PPID
	return ca.node(cfg, keys[0], keys[1])
}
