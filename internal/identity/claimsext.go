package identity

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
)

// ClaimsOID identifies the confmesh claims extension: 2.25.1592704437.1.
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
var ClaimsOID = asn1.ObjectIdentifier{2, 25, 1592704437, 1}

// claimsVersion is the only version of the claims encoding this package
// writes and reads.
const claimsVersion = 1

// ErrNoClaims is returned by ClaimsFromCert when the certificate carries no
// claims extension (control plane and admin certificates, foreign SVIDs).
var ErrNoClaims = errors.New("identity: certificate has no confmesh claims extension")

// ErrMalformedClaims is wrapped by ClaimsFromCert errors for a claims
// extension that is present but unusable: undecodable, not canonical DER,
// followed by trailing bytes, duplicated, of an unknown version, or holding
// invalid values.
var ErrMalformedClaims = errors.New("identity: malformed confmesh claims extension")

// claimsASN1 is the DER form of Claims:
//
//	Claims ::= SEQUENCE {
//	    version      INTEGER (1),
//	    tee          UTF8String,
//	    measurement  OCTET STRING,
//	    reportedTCB  INTEGER,       -- unsigned 64-bit
//	    chipIDDigest OCTET STRING,
//	    reportDigest OCTET STRING,
//	    wireGuardKey OCTET STRING,
//	    nodeID       UTF8String }
type claimsASN1 struct {
	Version      int
	TEE          string `asn1:"utf8"`
	Measurement  []byte
	ReportedTCB  *big.Int // encoding/asn1 has no uint64; TCB values use the top bit
	ChipIDDigest []byte
	ReportDigest []byte
	WireGuardKey []byte
	NodeID       string `asn1:"utf8"`
}

// claimsVersionASN1 reads only the version, so an unknown version is reported
// as such even when the rest of its layout differs.
type claimsVersionASN1 struct {
	Version int
}

// Extension encodes c as the non-critical X.509 claims extension. It fails
// if c is not valid: empty TEE, WireGuard key not 32 bytes, a digest present
// but not 32 bytes, or a NodeID that is not a confmesh node SPIFFE ID.
func (c Claims) Extension() (pkix.Extension, error) {
	if err := c.validate(); err != nil {
		return pkix.Extension{}, fmt.Errorf("encode claims: %w", err)
	}
	der, err := asn1.Marshal(c.toASN1())
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode claims: %w", err)
	}
	return pkix.Extension{Id: ClaimsOID, Critical: false, Value: der}, nil
}

func (c Claims) toASN1() claimsASN1 {
	return claimsASN1{
		Version:      claimsVersion,
		TEE:          c.TEE,
		Measurement:  c.Measurement,
		ReportedTCB:  new(big.Int).SetUint64(c.ReportedTCB),
		ChipIDDigest: c.ChipIDDigest,
		ReportDigest: c.ReportDigest,
		WireGuardKey: c.WireGuardKey,
		NodeID:       c.NodeID,
	}
}

// ClaimsFromCert decodes the claims extension of cert. It returns an error
// matching ErrNoClaims if the extension is absent, and one matching
// ErrMalformedClaims if it is duplicated, not canonical DER, followed by
// trailing bytes, of an unknown version, or holds invalid values.
func ClaimsFromCert(cert *x509.Certificate) (*Claims, error) {
	if cert == nil {
		return nil, errors.New("identity: claims from a nil certificate")
	}
	var value []byte
	found := 0
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(ClaimsOID) {
			found++
			value = ext.Value
		}
	}
	switch found {
	case 0:
		return nil, ErrNoClaims
	case 1:
	default:
		return nil, fmt.Errorf("%w: extension appears %d times", ErrMalformedClaims, found)
	}
	return decodeClaims(value)
}

func decodeClaims(der []byte) (*Claims, error) {
	var v claimsVersionASN1
	if _, err := asn1.Unmarshal(der, &v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedClaims, err)
	}
	if v.Version != claimsVersion {
		return nil, fmt.Errorf("%w: unknown version %d (this build reads version %d)", ErrMalformedClaims, v.Version, claimsVersion)
	}
	var a claimsASN1
	rest, err := asn1.Unmarshal(der, &a)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedClaims, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes after the claims", ErrMalformedClaims, len(rest))
	}
	if a.ReportedTCB == nil || a.ReportedTCB.Sign() < 0 || a.ReportedTCB.BitLen() > 64 {
		return nil, fmt.Errorf("%w: reported TCB %v is not an unsigned 64-bit value", ErrMalformedClaims, a.ReportedTCB)
	}
	c := Claims{
		TEE:          a.TEE,
		Measurement:  clone(a.Measurement),
		ReportedTCB:  a.ReportedTCB.Uint64(),
		ChipIDDigest: clone(a.ChipIDDigest),
		ReportDigest: clone(a.ReportDigest),
		WireGuardKey: clone(a.WireGuardKey),
		NodeID:       a.NodeID,
	}
	// encoding/asn1 tolerates extra SEQUENCE elements and string types other
	// than UTF8String; version 1 has exactly one encoding, so insist on it.
	canonical, err := asn1.Marshal(c.toASN1())
	if err != nil || !bytes.Equal(canonical, der) {
		return nil, fmt.Errorf("%w: not the canonical DER encoding of version %d (extra fields or wrong string types)", ErrMalformedClaims, claimsVersion)
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformedClaims, err)
	}
	return &c, nil
}
