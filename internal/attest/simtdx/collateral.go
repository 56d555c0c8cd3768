package simtdx

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

// CollateralConfig shapes the collateral the simulated chain signs.
type CollateralConfig struct {
	// FMSPC the TCB info is for; DefaultFMSPC when empty.
	FMSPC []byte
	// UpToDateTeeTCBSVN is the lowest TEE TCB SVN rated UpToDate; a TD
	// below it (component-wise) is rated OutOfDate. DefaultTeeTCBSVN when empty.
	UpToDateTeeTCBSVN []byte
	// UpToDateStatus replaces UpToDate as the rating of the top level
	// (SWHardeningNeeded, ...), to test a policy's accepted statuses.
	UpToDateStatus string
	// MinQESVN is the lowest QE SVN rated UpToDate.
	MinQESVN uint16
	// QEMrSigner replaces the quoting enclave signer the QE identity names
	// (to test that a QE report not matching Intel's identity is refused).
	QEMrSigner []byte
	// Issued and NextUpdate bound the collateral's validity; now and 30
	// days on when zero.
	Issued, NextUpdate time.Time
}

type tcbComp struct {
	SVN byte `json:"svn"`
}

type tcb struct {
	SGX    []tcbComp `json:"sgxtcbcomponents,omitempty"`
	PCESVN *uint16   `json:"pcesvn,omitempty"`
	TDX    []tcbComp `json:"tdxtcbcomponents,omitempty"`
	ISVSVN *uint32   `json:"isvsvn,omitempty"`
}

type tcbLevel struct {
	TCB         tcb      `json:"tcb"`
	TCBDate     string   `json:"tcbDate"`
	TCBStatus   string   `json:"tcbStatus"`
	AdvisoryIDs []string `json:"advisoryIDs,omitempty"`
}

func comps(b []byte) []tcbComp {
	out := make([]tcbComp, len(b))
	for i, v := range b {
		out[i].SVN = v
	}
	return out
}

// Collateral returns collateral for the simulated platform, signed by the
// simulated TCB signing key and CAs, in the JSON exchange form.
func (ca *CA) Collateral(c CollateralConfig) (*attest.Collateral, error) {
	if len(c.FMSPC) == 0 {
		c.FMSPC = DefaultFMSPC
	}
	if len(c.UpToDateTeeTCBSVN) == 0 {
		c.UpToDateTeeTCBSVN = DefaultTeeTCBSVN
	}
	if len(c.UpToDateTeeTCBSVN) != 16 {
		return nil, fmt.Errorf("UpToDateTeeTCBSVN: %d bytes, want 16", len(c.UpToDateTeeTCBSVN))
	}
	if c.UpToDateStatus == "" {
		c.UpToDateStatus = attest.TCBStatusUpToDate
	}
	if c.Issued.IsZero() {
		c.Issued = time.Now()
	}
	if c.NextUpdate.IsZero() {
		c.NextUpdate = c.Issued.AddDate(0, 0, 30)
	}
	issued, next := c.Issued.UTC().Truncate(time.Second), c.NextUpdate.UTC().Truncate(time.Second)
	zero16, zeroPCE := make([]byte, 16), uint16(0)
	date := issued.Format(time.RFC3339)
	// TDX 1.5 TEE TCB SVNs with byte 1 set are rated by the TDX module
	// identity named after that byte; give one for the configured level.
	top := append([]byte(nil), c.UpToDateTeeTCBSVN...)
	floor := make([]byte, 16)
	floor[1] = top[1]
	var modules []map[string]any
	if top[1] > 0 {
		up, low := uint32(top[0]), uint32(0)
		modules = append(modules, map[string]any{
			"id": fmt.Sprintf("TDX_%02X", top[1]), "mrsigner": strings.Repeat("00", 48),
			"attributes": "0000000000000000", "attributesMask": "FFFFFFFF00000000",
			"tcbLevels": []tcbLevel{
				{TCB: tcb{ISVSVN: &up}, TCBDate: date, TCBStatus: c.UpToDateStatus},
				{TCB: tcb{ISVSVN: &low}, TCBDate: date, TCBStatus: attest.TCBStatusOutOfDate},
			},
		})
	}
	info := map[string]any{
		"id": "TDX", "version": 3, "issueDate": issued, "nextUpdate": next,
		"fmspc": hex.EncodeToString(c.FMSPC), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 1,
		"tdxModule": map[string]string{"mrsigner": strings.Repeat("00", 48), "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
		"tcbLevels": []tcbLevel{
			{TCB: tcb{SGX: comps(zero16), PCESVN: &zeroPCE, TDX: comps(top)}, TCBDate: date, TCBStatus: c.UpToDateStatus},
			{TCB: tcb{SGX: comps(zero16), PCESVN: &zeroPCE, TDX: comps(floor)}, TCBDate: date, TCBStatus: attest.TCBStatusOutOfDate, AdvisoryIDs: []string{"SIM-SA-00001"}},
		},
	}
	if modules != nil {
		info["tdxModuleIdentities"] = modules
	}
	qeSigner := qeMrSigner[:]
	if len(c.QEMrSigner) > 0 {
		qeSigner = c.QEMrSigner
	}
	minQE, low := uint32(c.MinQESVN), uint32(0)
	qeLevels := []tcbLevel{{TCB: tcb{ISVSVN: &minQE}, TCBDate: date, TCBStatus: attest.TCBStatusUpToDate}}
	if minQE > 0 {
		qeLevels = append(qeLevels, tcbLevel{TCB: tcb{ISVSVN: &low}, TCBDate: date, TCBStatus: attest.TCBStatusOutOfDate})
	}
	qe := map[string]any{
		"id": "TD_QE", "version": 2, "issueDate": issued, "nextUpdate": next, "tcbEvaluationDataNumber": 1,
		"miscselect": "00000000", "miscselectMask": "FFFFFFFF",
		"attributes": hex.EncodeToString(qeAttributes), "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
		"mrsigner": hex.EncodeToString(qeSigner), "isvprodid": qeProdID, "tcbLevels": qeLevels,
	}
	infoJSON, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	qeJSON, err := json.Marshal(qe)
	if err != nil {
		return nil, err
	}
	infoSig, err := signRaw(ca.tcbKey, infoJSON)
	if err != nil {
		return nil, err
	}
	qeSig, err := signRaw(ca.tcbKey, qeJSON)
	if err != nil {
		return nil, err
	}
	rootCRL, err := ca.crl(ca.root, ca.rootKey, issued, next)
	if err != nil {
		return nil, err
	}
	pckCRL, err := ca.crl(ca.pca, ca.pcaKey, issued, next)
	if err != nil {
		return nil, err
	}
	tcbChain := string(pemCert(ca.tcb)) + string(pemCert(ca.root))
	return &attest.Collateral{
		PCKCRLIssuerChain:     string(pemCert(ca.pca)) + string(pemCert(ca.root)),
		RootCACRL:             hex.EncodeToString(rootCRL),
		PCKCRL:                hex.EncodeToString(pckCRL),
		TCBInfoIssuerChain:    tcbChain,
		TCBInfo:               string(infoJSON),
		TCBInfoSignature:      hex.EncodeToString(infoSig),
		QEIdentityIssuerChain: tcbChain,
		QEIdentity:            string(qeJSON),
		QEIdentitySignature:   hex.EncodeToString(qeSig),
	}, nil
}

// crl is an empty CRL (DER) by issuer, valid from issued to next.
func (ca *CA) crl(issuer *x509.Certificate, key *ecdsa.PrivateKey, issued, next time.Time) ([]byte, error) {
	num, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		return nil, err
	}
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: num, ThisUpdate: issued, NextUpdate: next, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, issuer, key)
}

func pemCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}
