// Package claims reads confmesh's attestation claims from SPIFFE SVIDs, for
// applications that want more than "the peer is service X": "the peer is
// service X, running on a node whose TEE passed attestation with launch
// measurement M".
//
// Every node and workload X.509-SVID confmesh issues carries a non-critical
// X.509 extension (OID 2.25.1592704437.1, see OID) with a summary of the
// node's verified attestation report; every JWT-SVID carries the same summary
// in its private "confmesh" claim (see JWTClaimName). This package decodes
// both, and offers authorizers for go-spiffe's spiffetls/tlsconfig that
// require a SPIFFE ID and a set of launch measurements:
//
//	source, _ := workloadapi.NewX509Source(ctx)
//	auth := claims.AuthorizeID(serverID, measurement)
//	conn, err := spiffetls.DialWithMode(ctx, "tcp", addr,
//		spiffetls.MTLSClientWithSource(auth, source))
//
// The claims are only as good as the certificate they are read from: read
// them from a chain go-spiffe verified against the trust bundle (the
// authorizers here do; FromCertificate does not verify anything).
//
// The package depends on the standard library and go-spiffe only.
package claims

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// OID identifies the confmesh claims extension: 2.25.1592704437.1 (an OID
// under the 2.25 UUID arc whose arc value fits Go's 31-bit OID parser).
var OID = asn1.ObjectIdentifier{2, 25, 1592704437, 1}

// Version is the only version of the claims encoding this package writes
// and reads.
const Version = 1

// TEE types a claims value can name.
const (
	TEESevSnp = "sev-snp"
	TEETDX    = "tdx"
	// TEESimSnp is the simulated SEV-SNP of development clusters: never
	// accept it in production (the control plane only admits it when its
	// policy names the simulated root).
	TEESimSnp = "sim-snp"
	// TEESimTDX is the simulated TDX of development clusters, likewise.
	TEESimTDX = "sim-tdx"
)

// ErrNoClaims means the certificate carries no confmesh claims extension
// (it is not a confmesh node or workload SVID).
var ErrNoClaims = errors.New("claims: certificate has no confmesh claims extension")

// ErrMalformed is wrapped by errors for a claims value that is present but
// unusable, and by Extension's errors for claims it refuses to encode.
var ErrMalformed = errors.New("claims: malformed confmesh claims")

// Claims summarise the attestation of the node an SVID was issued on.
type Claims struct {
	// TEE is the TEE type: TEESevSnp, TEETDX or TEESimSnp.
	TEE string
	// Measurement is the launch measurement (48 bytes for SEV-SNP).
	Measurement []byte
	// ReportedTCB is the raw reported TCB version of the report.
	ReportedTCB uint64
	// ChipIDDigest is SHA-256 of the chip ID (empty if the TEE has none).
	ChipIDDigest []byte
	// ReportDigest is SHA-256 of the raw attestation report.
	ReportDigest []byte
	// WireGuardKey is the node's WireGuard public key (X.509 claims only;
	// JWT-SVIDs do not carry it).
	WireGuardKey []byte
	// NodeID is the SPIFFE ID of the node, spiffe://<td>/confmesh/node/<name>
	// (confmesh always sets it; zero if a certificate carries none).
	NodeID spiffeid.ID
}

// MeasurementHex returns the launch measurement as lower-case hex.
func (c *Claims) MeasurementHex() string { return hex.EncodeToString(c.Measurement) }

// NodeName returns the node's name, taken from NodeID.
func (c *Claims) NodeName() string {
	name, _ := strings.CutPrefix(c.NodeID.Path(), "/confmesh/node/")
	return name
}

// HasMeasurement reports whether the launch measurement is one of ms.
func (c *Claims) HasMeasurement(ms ...[]byte) bool {
	for _, m := range ms {
		if len(m) > 0 && bytes.Equal(c.Measurement, m) {
			return true
		}
	}
	return false
}

// ParseMeasurement decodes a hex launch measurement (96 hex digits for
// SEV-SNP; upper or lower case, an optional 0x prefix).
func ParseMeasurement(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(strings.TrimSpace(s), "0x"), "0X")
	m, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("claims: measurement %q: %w", s, err)
	}
	if len(m) == 0 {
		return nil, errors.New("claims: measurement is empty")
	}
	return m, nil
}

// claimsASN1 is the DER form, the one definition of the layout (confmesh's
// control plane encodes with Extension):
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

// Extension encodes c as the non-critical X.509 claims extension, the one
// confmesh's control plane puts in every SVID it issues. It fails, with an
// error matching ErrMalformed, for claims FromCertificate would refuse: an
// empty TEE, a WireGuard key that is not 32 bytes, a digest present but not
// 32 bytes, or a NodeID (when set) that is not a confmesh node SPIFFE ID.
func (c *Claims) Extension() (pkix.Extension, error) {
	if !c.NodeID.IsZero() {
		if err := checkNodeID(c.NodeID); err != nil {
			return pkix.Extension{}, err
		}
	}
	if err := c.validate(true); err != nil {
		return pkix.Extension{}, err
	}
	der, err := asn1.Marshal(claimsASN1{
		Version:      Version,
		TEE:          c.TEE,
		Measurement:  c.Measurement,
		ReportedTCB:  new(big.Int).SetUint64(c.ReportedTCB),
		ChipIDDigest: c.ChipIDDigest,
		ReportDigest: c.ReportDigest,
		WireGuardKey: c.WireGuardKey,
		NodeID:       c.NodeID.String(),
	})
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("claims: encode: %w", err)
	}
	return pkix.Extension{Id: OID, Critical: false, Value: der}, nil
}

// FromCertificate decodes the claims extension of cert. It verifies nothing
// about cert itself: pass a leaf that go-spiffe verified. The error matches
// ErrNoClaims when the extension is absent and ErrMalformed when it is
// duplicated, not the canonical DER of version 1, or holds invalid values.
func FromCertificate(cert *x509.Certificate) (*Claims, error) {
	if cert == nil {
		return nil, errors.New("claims: nil certificate")
	}
	var value []byte
	found := 0
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(OID) {
			found++
			value = ext.Value
		}
	}
	switch found {
	case 0:
		return nil, ErrNoClaims
	case 1:
		return decode(value)
	default:
		return nil, fmt.Errorf("%w: extension appears %d times", ErrMalformed, found)
	}
}

// FromVerifiedChains decodes the claims of the leaf of the first verified
// chain, the form tlsconfig.Authorizer and tls.Config.VerifyPeerCertificate
// receive.
func FromVerifiedChains(chains [][]*x509.Certificate) (*Claims, error) {
	if len(chains) == 0 || len(chains[0]) == 0 {
		return nil, errors.New("claims: no verified certificate chain")
	}
	return FromCertificate(chains[0][0])
}

// FromConnectionState decodes the claims of the peer of a TLS connection
// whose handshake go-spiffe verified (spiffetls, tlsconfig). It prefers the
// verified chains and falls back to the peer certificate, which go-spiffe's
// configurations verify themselves without filling VerifiedChains.
func FromConnectionState(cs tls.ConnectionState) (*Claims, error) {
	if len(cs.VerifiedChains) > 0 {
		return FromVerifiedChains(cs.VerifiedChains)
	}
	if len(cs.PeerCertificates) == 0 {
		return nil, errors.New("claims: the TLS peer presented no certificate")
	}
	return FromCertificate(cs.PeerCertificates[0])
}

func decode(der []byte) (*Claims, error) {
	var v struct{ Version int }
	if _, err := asn1.Unmarshal(der, &v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if v.Version != Version {
		return nil, fmt.Errorf("%w: unknown version %d (this package reads version %d)", ErrMalformed, v.Version, Version)
	}
	var a claimsASN1
	rest, err := asn1.Unmarshal(der, &a)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(rest))
	}
	if a.ReportedTCB == nil || a.ReportedTCB.Sign() < 0 || a.ReportedTCB.BitLen() > 64 {
		return nil, fmt.Errorf("%w: reported TCB is not an unsigned 64-bit value", ErrMalformed)
	}
	// Version 1 has exactly one encoding; insist on it.
	canonical, err := asn1.Marshal(a)
	if err != nil || !bytes.Equal(canonical, der) {
		return nil, fmt.Errorf("%w: not the canonical DER encoding of version %d", ErrMalformed, Version)
	}
	c := &Claims{
		TEE:          a.TEE,
		Measurement:  clone(a.Measurement),
		ReportedTCB:  a.ReportedTCB.Uint64(),
		ChipIDDigest: clone(a.ChipIDDigest),
		ReportDigest: clone(a.ReportDigest),
		WireGuardKey: clone(a.WireGuardKey),
	}
	if c.NodeID, err = parseNodeID(a.NodeID); err != nil {
		return nil, err
	}
	if err := c.validate(true); err != nil {
		return nil, err
	}
	return c, nil
}

func parseNodeID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, nil
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: node ID %q: %v", ErrMalformed, s, err)
	}
	if err := checkNodeID(id); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// checkNodeID fails unless id is spiffe://<td>/confmesh/node/<name>.
func checkNodeID(id spiffeid.ID) error {
	if name, ok := strings.CutPrefix(id.Path(), "/confmesh/node/"); !ok || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("%w: node ID %q is not a confmesh node SPIFFE ID", ErrMalformed, id)
	}
	return nil
}

func (c *Claims) validate(x509Claims bool) error {
	if c.TEE == "" {
		return fmt.Errorf("%w: TEE type is empty", ErrMalformed)
	}
	if x509Claims && len(c.WireGuardKey) != 32 {
		return fmt.Errorf("%w: WireGuard key is %d bytes, want 32", ErrMalformed, len(c.WireGuardKey))
	}
	if n := len(c.ChipIDDigest); n != 0 && n != sha256.Size {
		return fmt.Errorf("%w: chip ID digest is %d bytes", ErrMalformed, n)
	}
	if n := len(c.ReportDigest); n != 0 && n != sha256.Size {
		return fmt.Errorf("%w: report digest is %d bytes", ErrMalformed, n)
	}
	return nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
