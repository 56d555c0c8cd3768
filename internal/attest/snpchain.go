package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// chain returns the cached verdict for the endorsement key or verifies the
// chain once: shipped chain links, a trusted root signs it, the product
// matches, the certificate is valid now, and go-sev-guest's full KDS
// certificate checks pass. A structVersion 1 (Turin) VCEK, which
// go-sev-guest v0.15.0 cannot read, gets the same checks from
// verifyKDSCertV1 and go-sev-guest's chain options and signature check.
func (v *Verifier) chain(ev *attestv1.Evidence, report *spb.Report, signer abi.ReportSigner, ekDER []byte) (*chainVerdict, bool, error) {
	now := v.now()
	// The key covers the shipped ASK/ARK too, so a cached verdict never
	// skips the check that the chain shipped with this report links.
	h := sha256.New()
	for _, der := range [][]byte{ekDER, ev.GetChain().GetAsk(), ev.GetChain().GetArk()} {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(der)))
		h.Write(n[:])
		h.Write(der)
	}
	var key [32]byte
	copy(key[:], h.Sum(nil))
	v.mu.Lock()
	cv := v.chains[key]
	v.mu.Unlock()
	if cv != nil {
		if now.Before(cv.cert.NotBefore) || now.After(cv.cert.NotAfter) {
			return nil, false, fmt.Errorf("%w: %v certificate valid %s to %s", ErrCertExpired, signer, cv.cert.NotBefore.UTC().Format(time.RFC3339), cv.cert.NotAfter.UTC().Format(time.RFC3339))
		}
		if err := checkReportProduct(report, cv.root.ProductLine()); err != nil {
			return nil, false, err
		}
		return cv, false, nil
	}

	ek, err := x509.ParseCertificate(ekDER)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v certificate: %v", ErrMalformedChain, signer, err)
	}
	exts, err := kdscert.Parse(ek, signer)
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v certificate extensions: %v", ErrMalformedChain, signer, err)
	}
	certLine := exts.ProductLine

	// The shipped chain must link. It is not trusted for anything else.
	var shippedAsk *x509.Certificate
	if der := ev.GetChain().GetAsk(); len(der) > 0 {
		if shippedAsk, err = x509.ParseCertificate(der); err != nil {
			return nil, false, fmt.Errorf("%w: ASK certificate: %v", ErrMalformedChain, err)
		}
		if !signedBy(ek, shippedAsk) {
			return nil, false, fmt.Errorf("%w: %v certificate is not signed by the ASK shipped with it", ErrBrokenChain, signer)
		}
	}
	if der := ev.GetChain().GetArk(); len(der) > 0 && shippedAsk != nil {
		ark, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, false, fmt.Errorf("%w: ARK certificate: %v", ErrMalformedChain, err)
		}
		if !signedBy(shippedAsk, ark) {
			return nil, false, fmt.Errorf("%w: shipped ASK is not signed by the shipped ARK", ErrBrokenChain)
		}
	}

	var root *TrustedRoot
	for _, r := range v.roots {
		if signs(r, ek, signer) {
			root = r
			break
		}
	}
	if root == nil {
		return nil, false, fmt.Errorf("%w: %v certificate (product %s, issuer %q) is not signed by any root this policy trusts (%s)",
			ErrUntrustedRoot, signer, exts.ProductName, ek.Issuer.CommonName, v.rootNames())
	}
	if root.ProductLine() != certLine {
		return nil, false, fmt.Errorf("%w: %v certificate is for %s but was issued by the %s root (%s)", ErrWrongProduct, signer, certLine, root.ProductLine(), root.Name)
	}
	if err := checkReportProduct(report, certLine); err != nil {
		return nil, false, err
	}
	if now.Before(ek.NotBefore) || now.After(ek.NotAfter) {
		return nil, false, fmt.Errorf("%w: %v certificate valid %s to %s, now %s", ErrCertExpired, signer,
			ek.NotBefore.UTC().Format(time.RFC3339), ek.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}

	cv = &chainVerdict{cert: ek, root: root, exts: exts}
	if exts.StructVersion != 0 {
		if err := verifyKDSCertV1(ek, root, signer, now); err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrChain, err)
		}
		if err := verify.SnpReportSignature(ev.GetReport(), ek); err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrSignature, err)
		}
		if cv.standIn, err = standInCert(exts); err != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrChain, err)
		}
		v.remember(key, cv)
		return cv, true, nil
	}

	att := &spb.Attestation{Report: report, CertificateChain: &spb.CertificateChain{VcekCert: ev.GetChain().GetVcek(), VlekCert: ev.GetChain().GetVlek()}}
	if signer == abi.VcekReportSigner {
		att.CertificateChain.VcekCert = ekDER
	}
	opts := &verify.Options{
		DisableCertFetching: true,
		Now:                 now,
		TrustedRoots:        map[string][]*trust.AMDRootCerts{certLine: {root.Certs}},
	}
	if err := verify.SnpAttestation(att, opts); err != nil {
		if serr := verify.SnpReportSignature(ev.GetReport(), ek); serr != nil {
			return nil, false, fmt.Errorf("%w: %v", ErrSignature, serr)
		}
		return nil, false, fmt.Errorf("%w: %v", ErrChain, err)
	}
	v.remember(key, cv)
	return cv, true, nil
}

// remember caches a chain verdict, clearing the cache when full.
func (v *Verifier) remember(key [32]byte, cv *chainVerdict) {
	v.mu.Lock()
	if len(v.chains) >= maxChainCache {
		v.chains = map[[32]byte]*chainVerdict{}
	}
	v.chains[key] = cv
	v.mu.Unlock()
}

func signs(r *TrustedRoot, ek *x509.Certificate, signer abi.ReportSigner) bool {
	if r.Certs == nil {
		return false
	}
	pc := r.Certs.ProductCerts
	if pc == nil || pc.Ark == nil {
		return false
	}
	ica := pc.Ask
	if signer == abi.VlekReportSigner {
		ica = pc.Asvk
	}
	return ica != nil && signedBy(ek, ica) && signedBy(ica, pc.Ark)
}

// checkReportProduct compares the product a v3+ report names (CPUID) with
// the product line its chain certifies.
func checkReportProduct(report *spb.Report, certLine string) error {
	if fms := report.GetCpuid1EaxFms(); fms != 0 {
		if line := kds.ProductLineFromFms(fms); line != certLine {
			return fmt.Errorf("%w: report comes from a %s CPU but its chain certifies %s", ErrWrongProduct, line, certLine)
		}
	}
	return nil
}

// amdLocation is the subject and issuer location of every KDS certificate.
var amdLocation = []struct {
	name string
	get  func(pkix.Name) []string
	want string
}{
	{"country", func(n pkix.Name) []string { return n.Country }, "US"},
	{"locality", func(n pkix.Name) []string { return n.Locality }, "Santa Clara"},
	{"state", func(n pkix.Name) []string { return n.Province }, "CA"},
	{"organization", func(n pkix.Name) []string { return n.Organization }, "Advanced Micro Devices"},
	{"organizational unit", func(n pkix.Name) []string { return n.OrganizationalUnit }, "Engineering"},
}

func checkAMDName(n pkix.Name, role, cn string) error {
	for _, f := range amdLocation {
		if got := f.get(n); len(got) != 1 || got[0] != f.want {
			return fmt.Errorf("%s %s is %q, want %q", role, f.name, got, f.want)
		}
	}
	if n.CommonName != cn {
		return fmt.Errorf("%s common name is %q, want %q", role, n.CommonName, cn)
	}
	return nil
}

// verifyKDSCertV1 makes the checks go-sev-guest v0.15.0's verify makes on a
// VCEK, for one it cannot read (structVersion 1, Turin): X.509 v3, signed
// with RSASSA-PSS SHA-384, an ECDSA P-384 key, AMD's subject and issuer
// names ("SEV-VCEK" issued by "SEV-<line>"), and a chain to the trusted
// root's ASK and ARK valid at now (go-sev-guest's own verify options).
func verifyKDSCertV1(ek *x509.Certificate, root *TrustedRoot, signer abi.ReportSigner, now time.Time) error {
	if ek.Version != 3 {
		return fmt.Errorf("%v certificate version is %d, want 3", signer, ek.Version)
	}
	if ek.SignatureAlgorithm != x509.SHA384WithRSAPSS {
		return fmt.Errorf("%v certificate signature algorithm is %v, want SHA-384 with RSASSA-PSS", signer, ek.SignatureAlgorithm)
	}
	pub, ok := ek.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve.Params().Name != "P-384" {
		return fmt.Errorf("%v certificate key is not ECDSA P-384", signer)
	}
	if err := checkAMDName(ek.Subject, fmt.Sprintf("%v subject", signer), fmt.Sprintf("SEV-%v", signer)); err != nil {
		return err
	}
	if err := checkAMDName(ek.Issuer, fmt.Sprintf("%v issuer", signer), "SEV-"+root.ProductLine()); err != nil {
		return err
	}
	opts := root.Certs.X509Options(now, signer)
	if opts == nil {
		return fmt.Errorf("root %s has no ARK and ASK for a %v", root.Name, signer)
	}
	if _, err := ek.Verify(*opts); err != nil {
		return fmt.Errorf("%v certificate does not chain to %s's ASK and ARK: %v", signer, root.Name, err)
	}
	return nil
}

// checkChipHWID refuses a report whose CHIP_ID is not the chip the VCEK was
// issued for: all 64 bytes equal the hwID for Milan and Genoa; for Turin
// (an 8-byte hwID) the CHIP_ID's first 8 bytes are the hwID. An all-zero
// CHIP_ID (the host masked it, MASK_CHIP_ID) is not compared, as in
// go-sev-guest; the report's signature still ties it to the VCEK's key.
func checkChipHWID(report *spb.Report, cv *chainVerdict) error {
	chip := report.GetChipId()
	hwid := cv.exts.HWID
	if hwid == nil || allZero(chip) {
		return nil
	}
	if len(chip) < len(hwid) || !bytes.Equal(chip[:len(hwid)], hwid) {
		return fmt.Errorf("%w: report's CHIP_ID %x… is not the chip of the %s VCEK (hwID %x…)", ErrWrongChip, head(chip), cv.exts.ProductLine, head(hwid))
	}
	return nil
}
