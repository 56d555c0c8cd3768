package attest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	tdxabi "github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	tdxpb "github.com/google/go-tdx-guest/proto/tdx"
	tdxvalidate "github.com/google/go-tdx-guest/validate"
	tdxverify "github.com/google/go-tdx-guest/verify"
	tdxtrust "github.com/google/go-tdx-guest/verify/trust"
)

// TDXCollateral is where the verifier gets Intel's collateral for a quote:
// a Getter answering Intel PCS URLs (a file, PCS or a PCCS, see
// CollateralFile and PCSGetter).
type TDXCollateral struct {
	Getter tdxtrust.HTTPSGetter
	// CheckRevocations also fetches and checks the PCK and root CA CRLs.
	CheckRevocations bool
}

// tdxHeaderSize is the size of a TDX quote header.
const tdxHeaderSize = 48

// IsTDXQuote reports whether raw starts with a TDX quote header: version 4
// or 5, ECDSA P-256 attestation key, TEE type TDX.
func IsTDXQuote(raw []byte) bool {
	if len(raw) < tdxHeaderSize {
		return false
	}
	version := binary.LittleEndian.Uint16(raw[0:2])
	keyType := binary.LittleEndian.Uint16(raw[2:4])
	tee := binary.LittleEndian.Uint32(raw[4:8])
	return (version == tdxabi.QuoteVersionV4 || version == tdxabi.QuoteVersionV5) &&
		keyType == tdxabi.AttestationKeyType && tee == tdxabi.TeeTDX
}

// tdBody is what the v4 TD quote body and the v5 body have in common.
type tdBody interface {
	GetTeeTcbSvn() []byte
	GetMrSeam() []byte
	GetMrSignerSeam() []byte
	GetSeamAttributes() []byte
	GetTdAttributes() []byte
	GetXfam() []byte
	GetMrTd() []byte
	GetMrConfigId() []byte
	GetMrOwner() []byte
	GetMrOwnerConfig() []byte
	GetRtmrs() [][]byte
	GetReportData() []byte
}

// TDXQuote is a parsed TDX quote (v4 or v5).
type TDXQuote struct {
	// Quote is *tdxpb.QuoteV4 or *tdxpb.QuoteV5, as go-tdx-guest wants it.
	Quote  any
	Header *tdxpb.Header
	Body   tdBody
	Signed *tdxpb.Ecdsa256BitQuoteV4AuthData
	// Raw is the quote's bytes without padding; the report digest is
	// computed over them, so a padded and an unpadded copy are one quote.
	Raw []byte
}

// ParseTDXQuote decodes a raw TDX quote, naming what is wrong with it. The
// quote's length fields are checked before go-tdx-guest sees a byte (its
// parser trusts them), and a panic in that parser is a refusal
// (ErrMalformed), never a crash. Zero padding after the quote's signed
// data (quote-generation stacks hand quotes over in fixed-size buffers) is
// dropped; any other byte there is refused (ErrTrailingData):
// go-tdx-guest ignores those bytes, so two different blobs would verify as
// the same quote.
func ParseTDXQuote(raw []byte) (*TDXQuote, error) {
	if len(raw) > MaxTDXQuoteInput {
		return nil, fmt.Errorf("%w: %d bytes is more than the %d a TDX quote may take, padding included", ErrMalformedReport, len(raw), MaxTDXQuoteInput)
	}
	if len(raw) < tdxHeaderSize {
		return nil, fmt.Errorf("%w: %d bytes is shorter than a TDX quote header", ErrMalformedReport, len(raw))
	}
	if version := binary.LittleEndian.Uint16(raw[0:2]); version != tdxabi.QuoteVersionV4 && version != tdxabi.QuoteVersionV5 {
		return nil, fmt.Errorf("%w: TDX quote version %d (supported 4 and 5)", ErrUnsupportedVersion, version)
	}
	if !IsTDXQuote(raw) {
		return nil, fmt.Errorf("%w: header is not a TDX quote with an ECDSA P-256 attestation key", ErrMalformedReport)
	}
	quote, err := TrimTDXQuote(raw)
	if err != nil {
		return nil, err
	}
	q, err := guardParse("the TDX quote parser", func() (any, error) { return quoteToProto(quote) })
	if err != nil {
		if errors.Is(err, ErrMalformed) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformedReport, err)
	}
	out := &TDXQuote{Quote: q, Raw: quote}
	var extra []byte
	switch q := q.(type) {
	case *tdxpb.QuoteV4:
		out.Header, out.Body, out.Signed, extra = q.GetHeader(), q.GetTdQuoteBody(), q.GetSignedData(), q.GetExtraBytes()
	case *tdxpb.QuoteV5:
		d := q.GetTdQuoteBodyDescriptor()
		b := d.GetTdQuoteBodyV5()
		if b == nil {
			return nil, fmt.Errorf("%w: v5 quote body type %d is not a TD quote body", ErrMalformedReport, d.GetTdQuoteBodyType())
		}
		out.Header, out.Body, out.Signed, extra = q.GetHeader(), b, q.GetSignedData(), q.GetExtraBytes()
	default:
		return nil, fmt.Errorf("%w: unsupported quote type %T", ErrMalformedReport, q)
	}
	if len(extra) > 0 {
		// TrimTDXQuote ended the input at the signed data; a parser that
		// sees more disagrees with it about the layout.
		return nil, fmt.Errorf("%w: %d bytes after the quote's signed data", ErrTrailingData, len(extra))
	}
	return out, nil
}

func (q *TDXQuote) v5Body() *tdxpb.TDQuoteBodyV5 {
	b, _ := q.Body.(*tdxpb.TDQuoteBodyV5)
	return b
}

func (v *Verifier) verifyTDX(ev *attestv1.Evidence) (*Claims, []byte, error) {
	p := v.policy.TDX
	if p == nil {
		return nil, nil, fmt.Errorf("%w: %s evidence, but the policy has no tdx section (add one to accept TDX nodes)", ErrUnsupportedTEE, ev.GetTee())
	}
	q, err := ParseTDXQuote(ev.GetReport())
	if err != nil {
		return nil, nil, err
	}
	chain, err := tdxverify.ExtractChainFromQuote(q.Quote)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: PCK chain in the quote: %v", ErrMalformedChain, err)
	}
	var root *TrustedRoot
	for _, r := range v.roots {
		if r.Intel != nil && signedBy(chain.IntermediateCertificate, r.Intel) {
			root = r
			break
		}
	}
	if root == nil {
		return nil, nil, fmt.Errorf("%w: PCK chain (root %q, platform CA %q) is not signed by any root this policy trusts (%s)",
			ErrUntrustedRoot, chain.RootCertificate.Subject.CommonName, chain.IntermediateCertificate.Subject.CommonName, v.rootNames())
	}
	if root.Simulated != (ev.GetTee() == TEESimTDX) {
		return nil, nil, fmt.Errorf("%w: evidence says tee %q but its chain ends at %s", ErrUntrustedRoot, ev.GetTee(), root.Name)
	}
	now := v.now()
	for _, c := range []struct {
		name string
		cert *x509.Certificate
	}{{"PCK", chain.PCKCertificate}, {"platform CA", chain.IntermediateCertificate}, {"root CA", chain.RootCertificate}} {
		if now.Before(c.cert.NotBefore) || now.After(c.cert.NotAfter) {
			return nil, nil, fmt.Errorf("%w: %s certificate valid %s to %s, now %s", ErrCertExpired, c.name,
				c.cert.NotBefore.UTC().Format(time.RFC3339), c.cert.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
		}
	}
	exts, err := pcs.PckCertificateExtensions(chain.PCKCertificate)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: PCK certificate SGX extensions: %v", ErrMalformedChain, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Intel)
	ts := &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now}
	if err := tdxverify.TdxQuote(q.Quote, &tdxverify.Options{TrustedRoots: pool, Now: ts}); err != nil {
		return nil, nil, classifyTDXVerifyError(err)
	}

	tc := tdxClaims(q, exts)
	if v.tdxColl != nil {
		if err := v.checkTDXCollateral(q, pool, ts, tc); err != nil {
			return nil, nil, err
		}
	} else if p.RequireCollateral {
		return nil, nil, fmt.Errorf("%w: the policy requires a TCB status (tdx.requireCollateral) and this verifier has no collateral source", ErrNoCollateral)
	}
	if err := v.checkTDXPolicy(q, tc); err != nil {
		return nil, nil, err
	}
	digest := sha256.Sum256(q.Raw)
	return &Claims{
		TEE:           ev.GetTee(),
		Product:       ProductTDX,
		Root:          root.Name,
		Simulated:     root.Simulated,
		ReportVersion: q.Header.GetVersion(),
		Measurement:   tc.MRTD,
		ReportData:    q.Body.GetReportData(),
		ChipID:        tc.PPID,
		Debug:         tdDebug(q.Body.GetTdAttributes()),
		ReportDigest:  digest[:],
		Signer:        "PCK",
		TDX:           tc,
	}, q.Body.GetReportData(), nil
}

// classifyTDXVerifyError maps go-tdx-guest's verdict on chain and
// signatures to a named reason.
func classifyTDXVerifyError(err error) error {
	msg := err.Error()
	switch {
	case errors.Is(err, tdxverify.ErrHashVerificationFail), strings.Contains(msg, "QE report"), strings.Contains(msg, "QE Report"):
		return fmt.Errorf("%w: %v", ErrSignature, err)
	case errors.Is(err, tdxverify.ErrPckLeafCertExpired), errors.Is(err, tdxverify.ErrIntermediateCaCertExpired), errors.Is(err, tdxverify.ErrRootCaCertExpired):
		return fmt.Errorf("%w: %v", ErrCertExpired, err)
	case strings.Contains(msg, "quote invalid"):
		return fmt.Errorf("%w: %v", ErrMalformedReport, err)
	default:
		return fmt.Errorf("%w: %v", ErrChain, err)
	}
}

func tdDebug(attrs []byte) bool { return len(attrs) > 0 && attrs[0]&1 != 0 }

func tdxClaims(q *TDXQuote, exts *pcs.PckExtensions) *TDXClaims {
	b := q.Body
	tc := &TDXClaims{
		QuoteVersion:   q.Header.GetVersion(),
		MRTD:           b.GetMrTd(),
		MRConfigID:     b.GetMrConfigId(),
		MROwner:        b.GetMrOwner(),
		MROwnerConfig:  b.GetMrOwnerConfig(),
		MRSeam:         b.GetMrSeam(),
		MRSignerSeam:   b.GetMrSignerSeam(),
		SeamAttributes: b.GetSeamAttributes(),
		TDAttributes:   b.GetTdAttributes(),
		XFAM:           b.GetXfam(),
		TeeTCBSVN:      b.GetTeeTcbSvn(),
		QESVN:          le16(q.Header.GetQeSvn()),
		PCESVN:         le16(q.Header.GetPceSvn()),
		QEVendorID:     q.Header.GetQeVendorId(),
		PCKCertPCESVN:  exts.TCB.PCESvn,
		PCKCertCPUSVN:  exts.TCB.CPUSvn,
	}
	for _, r := range b.GetRtmrs() {
		tc.RTMRs = append(tc.RTMRs, r)
	}
	if v5 := q.v5Body(); v5 != nil {
		tc.TeeTCBSVN2, tc.MRServiceTD = v5.GetTeeTcbSvn2(), v5.GetMrServiceTd()
	}
	tc.FMSPC, _ = hex.DecodeString(exts.FMSPC)
	tc.PCEID, _ = hex.DecodeString(exts.PCEID)
	tc.PPID, _ = hex.DecodeString(exts.PPID)
	return tc
}

func le16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

// checkTDXCollateral verifies the collateral (signatures by the trusted
// root, expiry, FMSPC/PCE ID/TDX module match, QE identity) through
// go-tdx-guest, computes the TCB statuses and checks them against the
// policy. go-tdx-guest refuses anything but UpToDate; a status the policy
// accepts besides is recognised from its error, and the QE identity checks
// go-tdx-guest then skipped are done here.
func (v *Verifier) checkTDXCollateral(q *TDXQuote, pool *x509.CertPool, ts *tdxverify.TimeSet, tc *TDXClaims) error {
	// Record what go-tdx-guest fetched and verified, so the QE identity
	// checked below is those bytes, not a second fetch.
	rec := &recordingGetter{upstream: v.tdxColl.Getter, bodies: map[string][]byte{}}
	opts := &tdxverify.Options{
		TrustedRoots: pool, Now: ts, GetCollateral: true,
		CheckRevocations: v.tdxColl.CheckRevocations, Getter: rec,
	}
	verr := tdxverify.TdxQuote(q.Quote, opts)
	statusFailure := verr != nil && strings.Contains(verr.Error(), "failed TCB status check")
	if verr != nil && !statusFailure {
		msg := verr.Error()
		switch {
		case strings.Contains(msg, "revoked"):
			return fmt.Errorf("%w: %v", ErrTCBStatus, verr)
		case strings.Contains(msg, "unable to receive"), strings.Contains(msg, "could not fetch"):
			return fmt.Errorf("%w: fetching collateral: %v", ErrNoCollateral, verr)
		default:
			return fmt.Errorf("%w: %v", ErrCollateral, verr)
		}
	}
	tcbLevel, qeLevel, lerr := tdxverify.SupportedTcbLevelsFromCollateral(q.Quote, opts)
	if lerr != nil {
		if statusFailure {
			return fmt.Errorf("%w: no TCB level in Intel's collateral matches this platform (%v): it is older than every level listed", ErrTCBStatus, lerr)
		}
		return fmt.Errorf("%w: %v", ErrCollateral, lerr)
	}
	tc.TCBStatus, tc.QETCBStatus = string(tcbLevel.TcbStatus), string(qeLevel.TcbStatus)
	tc.AdvisoryIDs, tc.TCBDate = tcbLevel.AdvisoryIDs, tcbLevel.TcbDate
	if statusFailure && strings.Contains(verr.Error(), "TDX TCB info") {
		// go-tdx-guest stopped at the platform status, before the QE identity.
		if err := checkQEIdentity(q, rec); err != nil {
			return err
		}
	}
	p := v.policy.TDX
	if !p.acceptsStatus(tc.TCBStatus) {
		return fmt.Errorf("%w: platform TCB status %s (advisories %s), policy accepts %s", ErrTCBStatus, tc.TCBStatus, strings.Join(tc.AdvisoryIDs, ","), strings.Join(p.AcceptedTCBStatuses, ", "))
	}
	if !p.acceptsStatus(tc.QETCBStatus) {
		return fmt.Errorf("%w: quoting enclave TCB status %s, policy accepts %s", ErrTCBStatus, tc.QETCBStatus, strings.Join(p.AcceptedTCBStatuses, ", "))
	}
	return nil
}

// checkQEIdentity applies the identity part of Intel's QE identity
// (MISCSELECT, attributes, MRSIGNER, ISVPRODID) to the quote's QE report.
func checkQEIdentity(q *TDXQuote, rec *recordingGetter) error {
	id, err := rec.qeIdentity()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCollateral, err)
	}
	r := q.Signed.GetCertificationData().GetQeReportCertificationData().GetQeReport()
	if len(id.MiscselectMask.Bytes) != 4 || len(id.Miscselect.Bytes) != 4 {
		return fmt.Errorf("%w: QE identity MISCSELECT fields are not 4 bytes", ErrCollateral)
	}
	if r.GetMiscSelect()&binary.LittleEndian.Uint32(id.MiscselectMask.Bytes) != binary.LittleEndian.Uint32(id.Miscselect.Bytes) {
		return fmt.Errorf("%w: QE report MISCSELECT does not match Intel's QE identity", ErrSignature)
	}
	attrs := r.GetAttributes()
	if len(id.AttributesMask.Bytes) != len(attrs) || len(id.Attributes.Bytes) != len(attrs) {
		return fmt.Errorf("%w: QE identity attributes are not %d bytes", ErrCollateral, len(attrs))
	}
	for i := range attrs {
		if attrs[i]&id.AttributesMask.Bytes[i] != id.Attributes.Bytes[i] {
			return fmt.Errorf("%w: QE report attributes do not match Intel's QE identity", ErrSignature)
		}
	}
	if !bytes.Equal(r.GetMrSigner(), id.Mrsigner.Bytes) {
		return fmt.Errorf("%w: QE report MRSIGNER %x is not Intel's quoting enclave signer", ErrSignature, r.GetMrSigner())
	}
	if r.GetIsvProdId() != uint32(id.IsvProdID) {
		return fmt.Errorf("%w: QE report ISVPRODID %d is not the quoting enclave's %d", ErrSignature, r.GetIsvProdId(), id.IsvProdID)
	}
	return nil
}

// recordingGetter passes requests to upstream and keeps each response body.
type recordingGetter struct {
	upstream tdxtrust.HTTPSGetter
	mu       sync.Mutex
	bodies   map[string][]byte
}

func (g *recordingGetter) Get(u string) (map[string][]string, []byte, error) {
	h, b, err := tdxtrust.GetWith(context.Background(), g.upstream, u)
	if err == nil {
		g.mu.Lock()
		g.bodies[u] = b
		g.mu.Unlock()
	}
	return h, b, err
}

// qeIdentity is the QE identity go-tdx-guest fetched and verified.
func (g *recordingGetter) qeIdentity() (*pcs.EnclaveIdentity, error) {
	g.mu.Lock()
	body, ok := g.bodies[pcs.QeIdentityURL()]
	g.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("the QE identity was not fetched")
	}
	var id pcs.QeIdentity
	if err := json.Unmarshal(body, &id); err != nil {
		return nil, err
	}
	return &id.EnclaveIdentity, nil
}

// checkTDXPolicy applies the tdx section, one named check at a time, then
// go-tdx-guest's validate (v4 quotes) as a second line.
func (v *Verifier) checkTDXPolicy(q *TDXQuote, tc *TDXClaims) error {
	pol := v.policy
	p := pol.TDX
	if tdDebug(tc.TDAttributes) && !pol.AllowDebug {
		return fmt.Errorf("%w: the TD has the DEBUG attribute (its memory and state are readable by the host) and the policy forbids debug", ErrDebug)
	}
	if !pol.anyMeasurement && !containsBytes(p.MRTDs, tc.MRTD) {
		return fmt.Errorf("%w: MRTD %s is not one of the %d accepted tdx.mrtds", ErrMeasurement, tc.MRTD, len(p.MRTDs))
	}
	if err := p.checkRTMRs(tc.RTMRs); err != nil {
		return err
	}
	if len(p.MRConfigIDs) > 0 && !containsBytes(p.MRConfigIDs, tc.MRConfigID) {
		return fmt.Errorf("%w: MRCONFIGID %s is not one of the %d accepted", ErrMRConfigID, tc.MRConfigID, len(p.MRConfigIDs))
	}
	if p.XFAMMask != nil && !maskedEqual(tc.XFAM, p.XFAMMask, p.XFAM) {
		return fmt.Errorf("%w: XFAM %s & mask %s is not %s", ErrXFAM, tc.XFAM, p.XFAMMask, p.XFAM)
	}
	if p.TDAttributesMask != nil && !maskedEqual(tc.TDAttributes, p.TDAttributesMask, p.TDAttributes) {
		return fmt.Errorf("%w: TD_ATTRIBUTES %s & mask %s is not %s", ErrTDAttributes, tc.TDAttributes, p.TDAttributesMask, p.TDAttributes)
	}
	if m := p.MinimumTeeTCBSVN; m != nil {
		for i := range m {
			if i >= len(tc.TeeTCBSVN) || tc.TeeTCBSVN[i] < m[i] {
				return fmt.Errorf("%w: TEE_TCB_SVN %s is below the minimum %s (component %d)", ErrTCBTEE, tc.TeeTCBSVN, m, i)
			}
		}
	}
	if tc.QESVN < p.MinimumQESVN {
		return fmt.Errorf("%w: QE SVN %d, minimum %d", ErrQESVN, tc.QESVN, p.MinimumQESVN)
	}
	if tc.PCESVN < p.MinimumPCESVN {
		return fmt.Errorf("%w: PCE SVN %d, minimum %d", ErrPCESVN, tc.PCESVN, p.MinimumPCESVN)
	}
	if len(p.FMSPCs) > 0 && !containsBytes(p.FMSPCs, tc.FMSPC) {
		return fmt.Errorf("%w: FMSPC %s is not on the policy's tdx.fmspcs allowlist", ErrPlatform, tc.FMSPC)
	}
	if len(p.PPIDs) > 0 && !containsBytes(p.PPIDs, tc.PPID) {
		return fmt.Errorf("%w: PPID %x… is not on the policy's tdx.ppids allowlist", ErrPlatform, head(tc.PPID))
	}
	if _, ok := q.Quote.(*tdxpb.QuoteV4); ok {
		opts := &tdxvalidate.Options{TdQuoteBodyOptions: tdxvalidate.TdQuoteBodyOptions{EnableTdDebugCheck: !pol.AllowDebug}}
		if err := tdxvalidate.TdxQuote(q.Quote, opts); err != nil {
			return fmt.Errorf("%w: %v", ErrValidation, err)
		}
	}
	return nil
}

func maskedEqual(got, mask, want []byte) bool {
	if len(got) != len(mask) || len(mask) != len(want) {
		return false
	}
	for i := range got {
		if got[i]&mask[i] != want[i] {
			return false
		}
	}
	return true
}
