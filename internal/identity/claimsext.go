package identity

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/confmesh/confmesh/pkg/claims"
)

// The claims extension's DER layout, its encoder and its decoder are
// pkg/claims's, the package applications read claims with: this file adapts
// them to Claims, whose invariants (validate) are stricter than pkg/claims's
// (node names are RFC 1123 subdomains).

// ClaimsOID identifies the confmesh claims extension: 2.25.1592704437.1
// (claims.OID).
//
// DESIGN asks for an OID under the 2.25 (UUID) arc, which needs no
// registration. A randomly generated UUID is a 128-bit integer, but Go's
// certificate parser (crypto/x509, through cryptobyte's
// ReadASN1ObjectIdentifier) rejects any OID arc that does not fit in 31 bits,
// and an unparseable extension OID makes the whole certificate unparseable:
// every Go peer would refuse every SVID carrying it. So the UUID arc is the
// UUID whose integer value is 1592704437 (0x5EEEBDB5), i.e.
// 00000000-0000-0000-0000-00005eeebdb5, deliberately chosen below 2^31; the
// trailing .1 is the claims extension under that arc.
var ClaimsOID = claims.OID

// ErrNoClaims is returned by ClaimsFromCert when the certificate carries no
// claims extension (control plane and admin certificates, foreign SVIDs).
var ErrNoClaims = errors.New("identity: certificate has no confmesh claims extension")

// ErrMalformedClaims is wrapped by ClaimsFromCert errors for a claims
// extension that is present but unusable: undecodable, not canonical DER,
// followed by trailing bytes, duplicated, of an unknown version, or holding
// invalid values.
var ErrMalformedClaims = errors.New("identity: malformed confmesh claims extension")

// Extension encodes c as the non-critical X.509 claims extension (in the
// layout of pkg/claims, version 1). It fails if c is not valid: empty TEE,
// WireGuard key not 32 bytes, a digest present but not 32 bytes, or a NodeID
// that is not a confmesh node SPIFFE ID.
func (c Claims) Extension() (pkix.Extension, error) {
	if err := c.validate(); err != nil {
		return pkix.Extension{}, fmt.Errorf("encode claims: %w", err)
	}
	pc, err := c.public()
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode claims: %w", err)
	}
	ext, err := pc.Extension()
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode claims: %w", err)
	}
	return ext, nil
}

// public converts c to pkg/claims's form (sharing its byte slices).
func (c Claims) public() (*claims.Claims, error) {
	pc := &claims.Claims{
		TEE:          c.TEE,
		Measurement:  c.Measurement,
		ReportedTCB:  c.ReportedTCB,
		ChipIDDigest: c.ChipIDDigest,
		ReportDigest: c.ReportDigest,
		WireGuardKey: c.WireGuardKey,
	}
	if c.NodeID != "" {
		id, err := spiffeid.FromString(c.NodeID)
		if err != nil {
			return nil, fmt.Errorf("node ID %q: %w", c.NodeID, err)
		}
		pc.NodeID = id
	}
	return pc, nil
}

// ClaimsFromCert decodes the claims extension of cert. It returns an error
// matching ErrNoClaims if the extension is absent, and one matching
// ErrMalformedClaims if it is duplicated, not canonical DER, followed by
// trailing bytes, of an unknown version, or holds invalid values.
func ClaimsFromCert(cert *x509.Certificate) (*Claims, error) {
	if cert == nil {
		return nil, errors.New("identity: claims from a nil certificate")
	}
	pc, err := claims.FromCertificate(cert)
	switch {
	case errors.Is(err, claims.ErrNoClaims):
		return nil, ErrNoClaims
	case err != nil:
		// Every other error of FromCertificate wraps claims.ErrMalformed:
		// keep its detail under this package's sentinel.
		detail := strings.TrimPrefix(err.Error(), claims.ErrMalformed.Error()+": ")
		return nil, fmt.Errorf("%w: %s", ErrMalformedClaims, detail)
	}
	c := Claims{
		TEE:          pc.TEE,
		Measurement:  pc.Measurement,
		ReportedTCB:  pc.ReportedTCB,
		ChipIDDigest: pc.ChipIDDigest,
		ReportDigest: pc.ReportDigest,
		WireGuardKey: pc.WireGuardKey,
		NodeID:       pc.NodeID.String(),
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedClaims, err)
	}
	return &c, nil
}
