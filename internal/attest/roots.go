package attest

import (
	"crypto/x509"
	_ "embed"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-sev-guest/verify/trust"
)

// AMDProductLines are the product lines whose AMD roots are pinned in
// go-sev-guest and trusted by kind "amd".
var AMDProductLines = []string{"Milan", "Genoa", "Turin"}

// TrustedRoot is one ARK/ASK pair a chain may end at.
type TrustedRoot struct {
	// Name identifies where the root came from: "amd" or "simulated:<file>".
	Name string
	// Simulated is true for a locally generated sim-snp root.
	Simulated bool
	// Certs is the ARK/ASK pair in go-sev-guest's form (SEV-SNP roots).
	Certs *trust.AMDRootCerts
	// Intel is the root CA of a TDX PCK chain (TDX roots); Certs is nil.
	Intel *x509.Certificate
}

// ProductTDX is the product line a TDX root certifies.
const ProductTDX = "TDX"

// ProductLine is the product line the root certifies (Milan, Genoa, Turin,
// or TDX for an Intel root).
func (r *TrustedRoot) ProductLine() string {
	if r.Intel != nil {
		return ProductTDX
	}
	return r.Certs.GetProductLine()
}

//go:embed intel_sgx_root.pem
var intelRootPEM []byte

// IntelRoot returns Intel's SGX root CA certificate, pinned in the binary
// (the copy go-tdx-guest pins).
func IntelRoot() *x509.Certificate {
	c, err := ParseTDXRootPEM(intelRootPEM)
	if err != nil {
		panic("pinned Intel root: " + err.Error())
	}
	return c
}

// ParseTDXRootPEM reads a TDX root: one self-signed CA certificate in PEM.
func ParseTDXRootPEM(data []byte) (*x509.Certificate, error) {
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("want one PEM CERTIFICATE (the root CA)")
	}
	if b, _ := pem.Decode(rest); b != nil {
		return nil, fmt.Errorf("want exactly one PEM CERTIFICATE (the root CA), found more")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("root certificate: %w", err)
	}
	if !c.IsCA || !signedBy(c, c) {
		return nil, fmt.Errorf("root %q is not a self-signed CA certificate", c.Subject.CommonName)
	}
	return c, nil
}

// signs reports whether this root's ASK signed cert and the ARK signed the ASK.
func (r *TrustedRoot) signs(cert *x509.Certificate) bool {
	if r.Certs == nil {
		return false
	}
	pc := r.Certs.ProductCerts
	if pc == nil || pc.Ask == nil || pc.Ark == nil {
		return false
	}
	return signedBy(cert, pc.Ask) && signedBy(pc.Ask, pc.Ark)
}

// signedBy checks only the signature of child under parent's key; name and
// CA constraints are go-sev-guest's job, later.
func signedBy(child, parent *x509.Certificate) bool {
	return parent.CheckSignature(child.SignatureAlgorithm, child.RawTBSCertificate, child.Signature) == nil
}

// LoadTrustedRoots resolves a policy's trustedRoots into certificates.
func LoadTrustedRoots(p *Policy) ([]*TrustedRoot, error) {
	var out []*TrustedRoot
	for i, ref := range p.TrustedRoots {
		switch ref.Kind {
		case RootAMD:
			for _, line := range AMDProductLines {
				certs, err := trust.GetDefaultRootCerts(line)
				if err != nil {
					return nil, fmt.Errorf("trustedRoots[%d]: pinned AMD root for %s: %w", i, line, err)
				}
				out = append(out, &TrustedRoot{Name: RootAMD, Certs: certs})
			}
		case RootIntel:
			out = append(out, &TrustedRoot{Name: RootIntel, Intel: IntelRoot()})
		case RootSimulatedTDX:
			data, err := os.ReadFile(ref.File)
			if err != nil {
				return nil, fmt.Errorf("trustedRoots[%d]: read simulated TDX root: %w", i, err)
			}
			c, err := ParseTDXRootPEM(data)
			if err != nil {
				return nil, fmt.Errorf("trustedRoots[%d]: simulated TDX root %s: %w", i, ref.File, err)
			}
			out = append(out, &TrustedRoot{Name: ref.String(), Simulated: true, Intel: c})
		case RootSimulated:
			data, err := os.ReadFile(ref.File)
			if err != nil {
				return nil, fmt.Errorf("trustedRoots[%d]: read simulated root: %w", i, err)
			}
			r, err := ParseRootPEM(data)
			if err != nil {
				return nil, fmt.Errorf("trustedRoots[%d]: simulated root %s: %w", i, ref.File, err)
			}
			out = append(out, &TrustedRoot{Name: ref.String(), Simulated: true, Certs: r})
		default:
			return nil, fmt.Errorf("trustedRoots[%d]: unknown kind %q", i, ref.Kind)
		}
	}
	if p.MinimumTCB.FMC > 0 {
		var lines []string
		turin := false
		for _, r := range out {
			lines = append(lines, r.ProductLine())
			turin = turin || HasFMC(r.ProductLine())
		}
		if !turin {
			return nil, fmt.Errorf("minimumTCB.fmc: %d, but no trusted root certifies a product with an FMC (only Turin has one; the roots certify %s): it would check nothing; remove it or trust a Turin root",
				p.MinimumTCB.FMC, strings.Join(lines, ", "))
		}
	}
	return out, nil
}

// ParseRootPEM reads a KDS-format cert_chain (PEM ASK then ARK) and checks
// that the ARK is self-signed and signed the ASK. The product line comes from
// the ARK's common name ("ARK-Milan").
func ParseRootPEM(data []byte) (*trust.AMDRootCerts, error) {
	pc := &trust.ProductCerts{}
	if err := pc.FromKDSCertBytes(data); err != nil {
		return nil, fmt.Errorf("want PEM with the ASK then the ARK: %w", err)
	}
	if pc.Ark == nil || pc.Ask == nil {
		return nil, fmt.Errorf("want PEM with the ASK then the ARK")
	}
	line, ok := strings.CutPrefix(pc.Ark.Subject.CommonName, "ARK-")
	if !ok || line == "" {
		return nil, fmt.Errorf("ARK common name %q does not name a product line (want ARK-<line>)", pc.Ark.Subject.CommonName)
	}
	if !signedBy(pc.Ark, pc.Ark) {
		return nil, fmt.Errorf("ARK is not self-signed")
	}
	if !signedBy(pc.Ask, pc.Ark) {
		return nil, fmt.Errorf("ASK is not signed by the ARK")
	}
	r := trust.AMDRootCertsProduct(line)
	r.ProductCerts = pc
	return r, nil
}
