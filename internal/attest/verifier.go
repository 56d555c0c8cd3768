package attest

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// maxChainCache bounds the per-VCEK chain verdict cache; when full it is
// cleared rather than grown.
const maxChainCache = 4096

// Options tune a Verifier. The zero value verifies offline with the
// chain shipped in the evidence.
type Options struct {
	// Fetcher, when set, fetches a VCEK the evidence does not carry from
	// AMD's key distribution service (wrap it in a CachingFetcher).
	Fetcher trust.HTTPSGetter
	// Now replaces the clock (tests).
	Now func() time.Time
	// Logger receives the simulated-root warning; slog.Default() when nil.
	Logger *slog.Logger
	// TDXCollateral, when set, supplies Intel collateral (TCB info, QE
	// identity, CRLs) so that TDX quotes get a TCB status checked against
	// the policy. Without it only the chain and signatures are verified.
	TDXCollateral *TDXCollateral
}

// Verifier checks evidence against one policy. It is safe for concurrent
// use. Chain verdicts are cached per endorsement certificate, so a second
// report from the same chip costs one ECDSA verification.
type Verifier struct {
	policy  *Policy
	roots   []*TrustedRoot
	fetcher trust.HTTPSGetter
	now     func() time.Time
	tdxColl *TDXCollateral
	log     *slog.Logger

	mu     sync.Mutex
	chains map[[32]byte]*chainVerdict

	// cp verifies the control plane (the policy's ForControlPlane), or cpErr
	// says why this policy trusts no control plane.
	cp    *Verifier
	cpErr error
}

type chainVerdict struct {
	cert *x509.Certificate
	root *TrustedRoot
	// exts are the endorsement certificate's KDS extensions.
	exts *kdscert.Extensions
	// standIn is what go-sev-guest's validate reads in place of a
	// structVersion 1 VCEK (see standInCert); nil for version 0.
	standIn []byte
}

// Expect is what the verifier requires the evidence to be bound to.
type Expect struct {
	Purpose         Purpose
	Key             []byte // key32
	IdentityKeyHash []byte // SHA-256 of the identity key's SPKI
	Name            string
	// Challenge, when set, must equal the evidence's challenge (the issuer
	// of the challenge checks this; peers check only its age).
	Challenge []byte
}

// NewVerifier loads the policy's trusted roots. A policy that trusts a
// simulated root is logged loudly: such a verifier accepts evidence that no
// hardware produced.
func NewVerifier(p *Policy, opts Options) (*Verifier, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("invalid policy: %w", err)
	}
	roots, err := LoadTrustedRoots(p)
	if err != nil {
		return nil, err
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	for _, r := range roots {
		if r.Simulated {
			log.Warn("!!! TRUSTING A SIMULATED TEE ROOT: evidence signed by it proves nothing about hardware; never use this policy in production !!!",
				"root", r.Name, "productLine", r.ProductLine())
		}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	v := &Verifier{policy: p, roots: roots, fetcher: opts.Fetcher, now: now, tdxColl: opts.TDXCollateral, log: log, chains: map[[32]byte]*chainVerdict{}}
	if cpp, err := p.ForControlPlane(); err != nil {
		v.cpErr = err
	} else {
		v.cp = &Verifier{policy: cpp, roots: roots, fetcher: opts.Fetcher, now: now, tdxColl: opts.TDXCollateral, log: log, chains: map[[32]byte]*chainVerdict{}}
		v.cp.cp = v.cp // the control-plane policy's own ForControlPlane is itself
	}
	return v, nil
}

// ForControlPlane returns the verifier an agent applies to the control
// plane's evidence: the policy's ForControlPlane, sharing this verifier's
// roots. The error (wrapping ErrNoControlPlaneTrust) says the policy lists
// no control-plane measurement; there is no fallback to the node list.
func (v *Verifier) ForControlPlane() (*Verifier, error) {
	if v.cp == nil {
		return nil, v.cpErr
	}
	return v.cp, nil
}

// Policy returns the policy the verifier applies.
func (v *Verifier) Policy() *Policy { return v.policy }

// TrustsSimulated reports whether a simulated root is trusted.
func (v *Verifier) TrustsSimulated() bool { return v.policy.TrustsSimulated() }

// Verify checks the evidence (signature, chain, policy) and that it is bound
// to want: REPORT_DATA recomputed from the carried binding, the binding's age
// within the policy, and the binding equal to what the caller expects.
func (v *Verifier) Verify(ev *attestv1.Evidence, want Expect) (*Claims, error) {
	c, reportData, err := v.verifyReport(ev)
	if err != nil {
		return nil, err
	}
	b := ev.GetBinding()
	if b == nil {
		return nil, fmt.Errorf("%w: evidence carries no binding", ErrMalformedBinding)
	}
	nonce, err := Nonce(Purpose(b.GetPurpose()), b.GetChallenge(), b.GetIdentityKeyHash(), b.GetName())
	if err != nil {
		return nil, err
	}
	rd, err := ReportData(nonce[:], b.GetKey())
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(rd[:], reportData) {
		return nil, fmt.Errorf("%w: REPORT_DATA %x… is not SHA-512(nonce‖key) of the binding carried with the evidence", ErrBinding, head(reportData))
	}
	issued, _ := ChallengeTime(b.GetChallenge())
	age := v.now().Sub(issued)
	if maxAge := time.Duration(v.policy.MaxEvidenceAge); age > maxAge {
		return nil, fmt.Errorf("%w: issued %s ago, policy allows %s", ErrEvidenceTooOld, age.Round(time.Second), maxAge)
	}
	if age < -MaxChallengeSkew {
		return nil, fmt.Errorf("%w: challenge time %s is %s ahead of local time", ErrEvidenceFromFuture, issued.UTC().Format(time.RFC3339), (-age).Round(time.Second))
	}
	switch {
	case Purpose(b.GetPurpose()) != want.Purpose:
		return nil, fmt.Errorf("%w: evidence is for purpose %q, want %q", ErrWrongNonce, b.GetPurpose(), want.Purpose)
	case b.GetName() != want.Name:
		return nil, fmt.Errorf("%w: evidence is for name %q, want %q", ErrWrongNonce, b.GetName(), want.Name)
	case !bytes.Equal(b.GetIdentityKeyHash(), want.IdentityKeyHash):
		return nil, fmt.Errorf("%w: evidence binds identity key %x…, want %x…", ErrWrongNonce, head(b.GetIdentityKeyHash()), head(want.IdentityKeyHash))
	case want.Challenge != nil && !bytes.Equal(b.GetChallenge(), want.Challenge):
		return nil, fmt.Errorf("%w: evidence answers challenge %x…, not the one issued (%x…)", ErrWrongNonce, head(b.GetChallenge()), head(want.Challenge))
	case !bytes.Equal(b.GetKey(), want.Key):
		return nil, fmt.Errorf("%w: evidence binds key %x…, want %x…", ErrWrongKey, head(b.GetKey()), head(want.Key))
	}
	c.IssuedAt = issued.UTC()
	return c, nil
}

// VerifyReportData checks the evidence and that REPORT_DATA equals
// SHA-512(nonce‖key) for a raw nonce and key, as produced by other tools.
func (v *Verifier) VerifyReportData(ev *attestv1.Evidence, nonce, key []byte) (*Claims, error) {
	c, reportData, err := v.verifyReport(ev)
	if err != nil {
		return nil, err
	}
	rd, err := ReportData(nonce, key)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(rd[:], reportData) {
		return nil, fmt.Errorf("%w: REPORT_DATA %x… is not SHA-512(nonce‖key) (%x…)", ErrBinding, head(reportData), rd[:8])
	}
	return c, nil
}

// VerifyExactReportData checks the evidence and that REPORT_DATA (SEV-SNP)
// or REPORTDATA (TDX) equals want, all 64 bytes.
func (v *Verifier) VerifyExactReportData(ev *attestv1.Evidence, want []byte) (*Claims, error) {
	c, reportData, err := v.verifyReport(ev)
	if err != nil {
		return nil, err
	}
	if len(want) != 64 {
		return nil, fmt.Errorf("%w: expected report data is %d bytes, want 64", ErrMalformedBinding, len(want))
	}
	if !bytes.Equal(reportData, want) {
		i := 0
		for i < len(want) && i < len(reportData) && reportData[i] == want[i] {
			i++
		}
		return nil, fmt.Errorf("%w: report data %x is not the expected %x (they differ from byte %d)", ErrBinding, reportData, want, i)
	}
	return c, nil
}

// VerifyUnbound checks signature, chain and policy but no binding. Only the
// CLI uses it, to inspect a report; it proves nothing about freshness.
func (v *Verifier) VerifyUnbound(ev *attestv1.Evidence) (*Claims, error) {
	c, _, err := v.verifyReport(ev)
	return c, err
}

func head(b []byte) []byte {
	if len(b) > 8 {
		return b[:8]
	}
	return b
}

// verifyReport verifies SEV-SNP or TDX evidence (signature, chain, policy)
// and returns its claims and the 64 bytes of report data it carries. It is
// the evidence-verification boundary: a panic below is a refusal.
func (v *Verifier) verifyReport(ev *attestv1.Evidence) (c *Claims, reportData []byte, err error) {
	defer v.recoverEvidence(ev, &c, &reportData, &err)
	if ev == nil {
		return nil, nil, fmt.Errorf("%w: no evidence", ErrMalformedEvidence)
	}
	if err := checkEvidenceBounds(ev); err != nil {
		return nil, nil, err
	}
	switch ev.GetTee() {
	case TEESevSnp, TEESimSnp:
		c, report, err := v.verifySNP(ev)
		if err != nil {
			return nil, nil, err
		}
		return c, report.GetReportData(), nil
	case TEETDX, TEESimTDX:
		return v.verifyTDX(ev)
	case "":
		return nil, nil, fmt.Errorf("%w: evidence names no TEE type", ErrUnsupportedTEE)
	default:
		return nil, nil, fmt.Errorf("%w: %q (this verifier handles %s, %s, %s and %s)", ErrUnsupportedTEE, ev.GetTee(), TEESevSnp, TEESimSnp, TEETDX, TEESimTDX)
	}
}

func (v *Verifier) verifySNP(ev *attestv1.Evidence) (*Claims, *spb.Report, error) {
	raw := ev.GetReport()
	report, err := ParseReport(raw)
	if err != nil {
		return nil, nil, err
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: signer info: %v", ErrMalformedReport, err)
	}
	ekDER, err := v.endorsementKey(ev, report, info.SigningKey)
	if err != nil {
		return nil, nil, err
	}
	cv, fresh, err := v.chain(ev, report, info.SigningKey, ekDER)
	if err != nil {
		return nil, nil, err
	}
	// A fresh chain verdict came from go-sev-guest's SnpAttestation, which
	// has just checked this report's signature; a cached one has not.
	if !fresh {
		if err := verify.SnpReportSignature(raw, cv.cert); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrSignature, err)
		}
	}
	if cv.root.Simulated != (ev.GetTee() == TEESimSnp) {
		return nil, nil, fmt.Errorf("%w: evidence says tee %q but its chain ends at %s", ErrUntrustedRoot, ev.GetTee(), cv.root.Name)
	}
	if info.SigningKey == abi.VcekReportSigner {
		if err := checkChipHWID(report, cv); err != nil {
			return nil, nil, err
		}
	}
	if err := v.checkPolicy(report, cv); err != nil {
		return nil, nil, err
	}
	return v.claims(ev, report, info.SigningKey, cv), report, nil
}

// ParseReport decodes a raw SEV-SNP report, naming what is wrong with it.
func ParseReport(raw []byte) (*spb.Report, error) {
	if len(raw) != abi.ReportSize {
		return nil, fmt.Errorf("%w: report is %d bytes, an SEV-SNP report is %d", ErrMalformedReport, len(raw), abi.ReportSize)
	}
	version := uint32(raw[0]) | uint32(raw[1])<<8 | uint32(raw[2])<<16 | uint32(raw[3])<<24
	if version < abi.MinSupportedReportVersion || version > abi.MaxSupportedReportVersion {
		return nil, fmt.Errorf("%w: version %d (supported %d-%d)", ErrUnsupportedVersion, version, abi.MinSupportedReportVersion, abi.MaxSupportedReportVersion)
	}
	// CPUID stepping is 4 bits; go-sev-guest keeps only those, so a set high
	// nibble would let two different reports decode to the same claims.
	if version >= 3 && raw[0x18A]&0xf0 != 0 {
		return nil, fmt.Errorf("%w: CPUID stepping byte 0x%02x has reserved high bits set", ErrMalformedReport, raw[0x18A])
	}
	report, err := abi.ReportToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedReport, err)
	}
	if algo := abi.SignatureAlgo(raw); algo != abi.SignEcdsaP384Sha384 {
		return nil, fmt.Errorf("%w: signature algorithm %d (want %d, ECDSA P-384 with SHA-384)", ErrMalformedReport, algo, abi.SignEcdsaP384Sha384)
	}
	return report, nil
}

// endorsementKey returns the DER of the VCEK or VLEK that should have signed
// the report, fetching a missing VCEK when a fetcher is configured.
func (v *Verifier) endorsementKey(ev *attestv1.Evidence, report *spb.Report, signer abi.ReportSigner) ([]byte, error) {
	chain := ev.GetChain()
	switch signer {
	case abi.VcekReportSigner:
		if der := chain.GetVcek(); len(der) > 0 {
			return der, nil
		}
		if v.fetcher == nil {
			return nil, fmt.Errorf("%w: report is signed by a VCEK but the evidence carries none (and KDS fetching is off)", ErrMissingChain)
		}
		return v.fetchVCEK(report)
	case abi.VlekReportSigner:
		if der := chain.GetVlek(); len(der) > 0 {
			return der, nil
		}
		return nil, fmt.Errorf("%w: report is signed by a VLEK but the evidence carries none", ErrMissingChain)
	default:
		return nil, fmt.Errorf("%w: report signer %v is not a VCEK or VLEK", ErrMalformedReport, signer)
	}
}

func (v *Verifier) fetchVCEK(report *spb.Report) ([]byte, error) {
	lines := AMDProductLines
	if fms := report.GetCpuid1EaxFms(); fms != 0 {
		lines = []string{kds.ProductLineFromFms(fms)}
	}
	var lastErr error
	for _, line := range lines {
		url, err := VCEKURL(line, report.GetChipId(), report.GetReportedTcb())
		if err != nil {
			lastErr = err
			continue
		}
		der, err := v.fetcher.Get(url)
		if err == nil && len(der) > 0 {
			return der, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("%w: evidence carries no VCEK and fetching it failed: %v", ErrMissingChain, lastErr)
}

// VCEKURL is the key distribution service URL of the VCEK for a chip at a
// reported TCB. The TCB is decoded for the product line: Turin's URL names
// its FMC level too and its hardware ID is the first 8 bytes of the chip ID;
// go-sev-guest's kds.VCEKCertURL knows only the Milan/Genoa form.
func VCEKURL(productLine string, chipID []byte, reportedTCB uint64) (string, error) {
	if !HasFMC(productLine) {
		return kds.VCEKCertURL(productLine, chipID, kds.TCBVersion(reportedTCB)), nil
	}
	t, err := DecodeTCB(productLine, reportedTCB)
	if err != nil {
		return "", err
	}
	if len(chipID) < 8 {
		return "", fmt.Errorf("chip ID is %d bytes, want at least 8", len(chipID))
	}
	base, _, _ := strings.Cut(kds.VCEKCertURL(productLine, chipID[:8], 0), "?")
	return fmt.Sprintf("%s?fmcSPL=%02d&blSPL=%02d&teeSPL=%02d&snpSPL=%02d&ucodeSPL=%02d", base, *t.FMC, t.Bootloader, t.TEE, t.SNP, t.Microcode), nil
}

func (v *Verifier) rootNames() string {
	seen := map[string]bool{}
	var out []byte
	for _, r := range v.roots {
		n := r.Name + "/" + r.ProductLine()
		if seen[n] {
			continue
		}
		seen[n] = true
		if len(out) > 0 {
			out = append(out, ", "...)
		}
		out = append(out, n...)
	}
	return string(out)
}
