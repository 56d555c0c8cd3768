package claims_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/identity"
	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("cluster.test")
	meas    = bytes.Repeat([]byte{0xab}, 48)
	other   = bytes.Repeat([]byte{0xcd}, 48)
	nodeID  = spiffeid.RequireFromString("spiffe://cluster.test/confmesh/node/n1")
	webID   = spiffeid.RequireFromString("spiffe://cluster.test/ns/shop/sa/web")
	chip    = sha256.Sum256([]byte("chip"))
	report  = sha256.Sum256([]byte("report"))
	wgKey   = bytes.Repeat([]byte{0x42}, 32)
	testNow = time.Now()
)

func identityClaims() identity.Claims {
	return identity.Claims{
		TEE: "sim-snp", Measurement: meas, ReportedTCB: 0xdb18000000000004,
		ChipIDDigest: chip[:], ReportDigest: report[:], WireGuardKey: wgKey, NodeID: nodeID.String(),
	}
}

// issue has a fresh CA sign a workload SVID carrying c, the way the control
// plane does.
func issue(t *testing.T, c *identity.Claims) (*x509.Certificate, *identity.CA) {
	t.Helper()
	ca, err := identity.NewCA(td, testNow)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueSVID(identity.IssueRequest{PublicKey: key.Public(), ID: webID, TTL: time.Hour, Now: testNow, Claims: c})
	if err != nil {
		t.Fatal(err)
	}
	return cert, ca
}

// certWith makes a self-signed certificate carrying exts verbatim.
func certWith(t *testing.T, exts ...pkix.Extension) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: testNow, NotAfter: testNow.Add(time.Hour), ExtraExtensions: exts}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFromCertificateMatchesIdentity: this package decodes exactly what the
// control plane issues (internal/identity's Claims and IssueSVID, which
// encode through Extension).
func TestFromCertificateMatchesIdentity(t *testing.T) {
	if !claims.OID.Equal(identity.ClaimsOID) {
		t.Fatalf("OID %v, identity writes %v", claims.OID, identity.ClaimsOID)
	}
	ic := identityClaims()
	cert, _ := issue(t, &ic)
	c, err := claims.FromCertificate(cert)
	if err != nil {
		t.Fatal(err)
	}
	if c.TEE != ic.TEE || !bytes.Equal(c.Measurement, ic.Measurement) || c.ReportedTCB != ic.ReportedTCB ||
		!bytes.Equal(c.ChipIDDigest, ic.ChipIDDigest) || !bytes.Equal(c.ReportDigest, ic.ReportDigest) ||
		!bytes.Equal(c.WireGuardKey, ic.WireGuardKey) || c.NodeID != nodeID {
		t.Fatalf("decoded %+v from %+v", c, ic)
	}
	if c.NodeName() != "n1" || c.MeasurementHex() != strings.Repeat("ab", 48) {
		t.Fatalf("NodeName %q MeasurementHex %q", c.NodeName(), c.MeasurementHex())
	}
	// Without a chip ID digest.
	ic.ChipIDDigest = nil
	cert, _ = issue(t, &ic)
	if c, err := claims.FromCertificate(cert); err != nil || c.ChipIDDigest != nil {
		t.Fatalf("no chip ID: %+v, %v", c, err)
	}
}

// claimsSeq is the documented SEQUENCE, written out here rather than taken
// from the package so that hand-made values test the decoder and the encoder
// against the documentation:
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
type claimsSeq struct {
	Version      int
	TEE          string `asn1:"utf8"`
	Measurement  []byte
	ReportedTCB  *big.Int
	ChipIDDigest []byte
	ReportDigest []byte
	WireGuardKey []byte
	NodeID       string `asn1:"utf8"`
}

func goodSeq() claimsSeq {
	return claimsSeq{1, "sim-snp", meas, big.NewInt(1), chip[:], report[:], wgKey, nodeID.String()}
}

func der(t *testing.T, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seqWith encodes goodSeq changed by mut.
func seqWith(t *testing.T, mut func(*claimsSeq)) []byte {
	t.Helper()
	s := goodSeq()
	mut(&s)
	return der(t, s)
}

// appendToSeq returns the DER SEQUENCE seq with the DER element elem added
// at its end.
func appendToSeq(t *testing.T, seq, elem []byte) []byte {
	t.Helper()
	var v asn1.RawValue
	if _, err := asn1.Unmarshal(seq, &v); err != nil {
		t.Fatal(err)
	}
	v.FullBytes, v.Bytes = nil, append(bytes.Clone(v.Bytes), elem...)
	return der(t, v)
}

func TestFromCertificateRefusals(t *testing.T) {
	good := der(t, goodSeq())
	with := func(val []byte) *x509.Certificate {
		return certWith(t, pkix.Extension{Id: claims.OID, Value: val})
	}
	if _, err := claims.FromCertificate(with(good)); err != nil {
		t.Fatalf("the unchanged value does not decode: %v", err)
	}
	noClaims, _ := issue(t, nil)
	utf8TEE := append([]byte{asn1.TagUTF8String, 7}, "sim-snp"...)
	printableTEE := append([]byte{asn1.TagPrintableString, 7}, "sim-snp"...)
	if !bytes.Contains(good, utf8TEE) {
		t.Fatal("the TEE is not the UTF8String the PrintableString case replaces")
	}
	ext := pkix.Extension{Id: claims.OID, Value: good}
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		is   error
		want string
	}{
		{"no extension", noClaims, claims.ErrNoClaims, "no confmesh claims"},
		{"no extensions at all", &x509.Certificate{}, claims.ErrNoClaims, "no confmesh claims"},
		// crypto/x509 refuses to parse duplicated extensions; FromCertificate refuses them too.
		{"duplicated", &x509.Certificate{Extensions: []pkix.Extension{ext, ext}}, claims.ErrMalformed, "appears 2 times"},
		{"garbage", with([]byte("not DER at all")), claims.ErrMalformed, "malformed"},
		{"truncated", with([]byte{0x30, 0x03, 0x02}), claims.ErrMalformed, "malformed"},
		{"empty value", with([]byte{}), claims.ErrMalformed, "malformed"},
		{"trailing bytes", with(append(bytes.Clone(good), 0, 0)), claims.ErrMalformed, "2 trailing bytes"},
		{"unknown version", with(seqWith(t, func(s *claimsSeq) { s.Version = 2 })), claims.ErrMalformed, "unknown version 2"},
		{"version 0", with(seqWith(t, func(s *claimsSeq) { s.Version = 0 })), claims.ErrMalformed, "unknown version 0"},
		{"unknown version with other layout", with(der(t, struct {
			Version int
			Other   bool
		}{3, true})), claims.ErrMalformed, "unknown version 3"},
		{"missing fields", with(der(t, struct{ Version int }{1})), claims.ErrMalformed, "malformed"},
		{"extra field", with(appendToSeq(t, good, der(t, 9))), claims.ErrMalformed, "canonical"},
		{"PrintableString TEE", with(bytes.Replace(good, utf8TEE, printableTEE, 1)), claims.ErrMalformed, "canonical"},
		{"negative TCB", with(seqWith(t, func(s *claimsSeq) { s.ReportedTCB = big.NewInt(-1) })), claims.ErrMalformed, "unsigned 64-bit"},
		{"65-bit TCB", with(seqWith(t, func(s *claimsSeq) { s.ReportedTCB = new(big.Int).Lsh(big.NewInt(1), 64) })), claims.ErrMalformed, "unsigned 64-bit"},
		{"short WG key", with(seqWith(t, func(s *claimsSeq) { s.WireGuardKey = wgKey[:31] })), claims.ErrMalformed, "WireGuard key is 31 bytes"},
		{"no TEE", with(seqWith(t, func(s *claimsSeq) { s.TEE = "" })), claims.ErrMalformed, "TEE type is empty"},
		{"short chip digest", with(seqWith(t, func(s *claimsSeq) { s.ChipIDDigest = chip[:20] })), claims.ErrMalformed, "chip ID digest is 20 bytes"},
		{"short report digest", with(seqWith(t, func(s *claimsSeq) { s.ReportDigest = report[:16] })), claims.ErrMalformed, "report digest is 16 bytes"},
		{"not a node ID", with(seqWith(t, func(s *claimsSeq) { s.NodeID = webID.String() })), claims.ErrMalformed, "not a confmesh node"},
		{"not a SPIFFE ID", with(seqWith(t, func(s *claimsSeq) { s.NodeID = "https://x/confmesh/node/n1" })), claims.ErrMalformed, "node ID"},
		{"nested node label", with(seqWith(t, func(s *claimsSeq) { s.NodeID = "spiffe://cluster.test/confmesh/node/a/b" })), claims.ErrMalformed, "not a confmesh node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := claims.FromCertificate(tc.cert)
			if c != nil || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %+v, %v; want %v containing %q", c, err, tc.is, tc.want)
			}
		})
	}
	if _, err := claims.FromCertificate(nil); err == nil {
		t.Fatal("nil certificate accepted")
	}
}

func TestExtension(t *testing.T) {
	c := &claims.Claims{TEE: "sim-snp", Measurement: meas, ReportedTCB: 0xdb18000000000004, ChipIDDigest: chip[:], ReportDigest: report[:], WireGuardKey: wgKey, NodeID: nodeID}
	ext, err := c.Extension()
	if err != nil {
		t.Fatal(err)
	}
	if !ext.Id.Equal(claims.OID) || ext.Critical {
		t.Fatalf("extension id %v critical %v", ext.Id, ext.Critical)
	}
	// The value is the documented SEQUENCE: check it field by field.
	var a struct {
		Version      int
		TEE          asn1.RawValue
		Measurement  []byte
		ReportedTCB  *big.Int
		ChipIDDigest []byte
		ReportDigest []byte
		WireGuardKey []byte
		NodeID       asn1.RawValue
	}
	rest, err := asn1.Unmarshal(ext.Value, &a)
	if err != nil || len(rest) != 0 {
		t.Fatalf("unmarshal: %v, %d trailing", err, len(rest))
	}
	if a.Version != 1 || a.TEE.Tag != asn1.TagUTF8String || string(a.TEE.Bytes) != c.TEE ||
		a.NodeID.Tag != asn1.TagUTF8String || string(a.NodeID.Bytes) != nodeID.String() ||
		a.ReportedTCB.Uint64() != c.ReportedTCB || !bytes.Equal(a.WireGuardKey, c.WireGuardKey) ||
		!bytes.Equal(a.Measurement, c.Measurement) || !bytes.Equal(a.ChipIDDigest, c.ChipIDDigest) ||
		!bytes.Equal(a.ReportDigest, c.ReportDigest) {
		t.Fatalf("encoded claims do not match: %+v", a)
	}
	if !bytes.Equal(ext.Value, der(t, claimsSeq{1, c.TEE, meas, new(big.Int).SetUint64(c.ReportedTCB), chip[:], report[:], wgKey, nodeID.String()})) {
		t.Fatal("the encoding is not the DER of the documented SEQUENCE")
	}
	got, err := claims.FromCertificate(certWith(t, ext))
	if err != nil {
		t.Fatal(err)
	}
	if got.TEE != c.TEE || !bytes.Equal(got.Measurement, meas) || got.ReportedTCB != c.ReportedTCB ||
		!bytes.Equal(got.ChipIDDigest, chip[:]) || !bytes.Equal(got.ReportDigest, report[:]) ||
		!bytes.Equal(got.WireGuardKey, wgKey) || got.NodeID != nodeID {
		t.Fatalf("decoded %+v from %+v", got, c)
	}

	for _, tc := range []struct {
		name string
		mut  func(*claims.Claims)
		want string
	}{
		{"empty TEE", func(c *claims.Claims) { c.TEE = "" }, "TEE type is empty"},
		{"no WireGuard key", func(c *claims.Claims) { c.WireGuardKey = nil }, "WireGuard key is 0 bytes"},
		{"long WireGuard key", func(c *claims.Claims) { c.WireGuardKey = make([]byte, 33) }, "WireGuard key is 33 bytes"},
		{"short chip digest", func(c *claims.Claims) { c.ChipIDDigest = make([]byte, 20) }, "chip ID digest is 20 bytes"},
		{"short report digest", func(c *claims.Claims) { c.ReportDigest = make([]byte, 16) }, "report digest is 16 bytes"},
		{"node ID of a workload", func(c *claims.Claims) { c.NodeID = webID }, "not a confmesh node"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := *c
			tc.mut(&bad)
			if _, err := bad.Extension(); !errors.Is(err, claims.ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrMalformed containing %q", err, tc.want)
			}
		})
	}
}

func TestJWTClaimRoundTrip(t *testing.T) {
	c := &claims.Claims{TEE: "sev-snp", Measurement: meas, ReportedTCB: 0xdb18000000000004, ChipIDDigest: chip[:], ReportDigest: report[:], NodeID: nodeID}
	j := claims.NewJWTClaim(c)
	if j.ReportedTCB != "db18000000000004" || j.Measurement != strings.Repeat("ab", 48) || j.NodeID != nodeID.String() {
		t.Fatalf("JWT claim %+v", j)
	}
	// As it arrives from jwtsvid (JSON decoded into map[string]any).
	raw, _ := json.Marshal(map[string]any{"sub": webID.String(), claims.JWTClaimName: j})
	var all map[string]any
	if err := json.Unmarshal(raw, &all); err != nil {
		t.Fatal(err)
	}
	got, err := claims.FromJWTClaims(all)
	if err != nil {
		t.Fatal(err)
	}
	if got.TEE != c.TEE || !bytes.Equal(got.Measurement, meas) || got.ReportedTCB != c.ReportedTCB ||
		!bytes.Equal(got.ChipIDDigest, chip[:]) || !bytes.Equal(got.ReportDigest, report[:]) || got.NodeID != nodeID || got.WireGuardKey != nil {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := claims.FromJWTClaims(map[string]any{"sub": "x"}); !errors.Is(err, claims.ErrNoClaims) {
		t.Fatalf("no claim: %v", err)
	}
	for name, bad := range map[string]any{
		"not an object":  "x",
		"bad hex":        map[string]any{"tee": "sev-snp", "measurement": "zz", "reported_tcb": "01", "node_id": nodeID.String()},
		"no TCB":         map[string]any{"tee": "sev-snp", "measurement": "ab", "node_id": nodeID.String()},
		"TCB overflow":   map[string]any{"tee": "sev-snp", "measurement": "ab", "reported_tcb": "1ffffffffffffffff", "node_id": nodeID.String()},
		"no TEE":         map[string]any{"measurement": "ab", "reported_tcb": "01", "node_id": nodeID.String()},
		"workload as ID": map[string]any{"tee": "sev-snp", "measurement": "ab", "reported_tcb": "01", "node_id": webID.String()},
	} {
		if _, err := claims.FromJWTClaims(map[string]any{claims.JWTClaimName: bad}); !errors.Is(err, claims.ErrMalformed) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestRequirementAndAuthorizers(t *testing.T) {
	ic := identityClaims()
	cert, ca := issue(t, &ic)
	id, chains, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle(), x509svid.WithTime(testNow))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		auth func([]*x509.Certificate) error
		want string // "" accepts
	}{
		{"ID and measurement", func(ch []*x509.Certificate) error { return claims.AuthorizeID(webID, meas)(id, chains) }, ""},
		{"one of a rollout list", func([]*x509.Certificate) error { return claims.AuthorizeID(webID, other, meas)(id, chains) }, ""},
		{"member of the trust domain", func([]*x509.Certificate) error { return claims.AuthorizeMemberOf(td, meas)(id, chains) }, ""},
		{"other measurement", func([]*x509.Certificate) error { return claims.AuthorizeID(webID, other)(id, chains) }, "is not an accepted one"},
		{"no measurement listed", func([]*x509.Certificate) error { return claims.AuthorizeID(webID)(id, chains) }, "accepts no peer"},
		{"other ID", func([]*x509.Certificate) error {
			return claims.AuthorizeID(spiffeid.RequireFromString("spiffe://cluster.test/ns/shop/sa/db"), meas)(id, chains)
		}, "unexpected ID"},
		{"TEE list", func([]*x509.Certificate) error {
			return claims.Authorize(spiffeid.MatchID(webID), claims.Requirement{Measurements: [][]byte{meas}, TEEs: []string{claims.TEESevSnp, claims.TEETDX}})(id, chains)
		}, `TEE "sim-snp"`},
		{"TEE allowed", func([]*x509.Certificate) error {
			return claims.Authorize(spiffeid.MatchID(webID), claims.Requirement{Measurements: [][]byte{meas}, TEEs: []string{claims.TEESimSnp}})(id, chains)
		}, ""},
		{"no chains", func([]*x509.Certificate) error { return claims.AuthorizeID(webID, meas)(id, nil) }, "no verified certificate chain"},
		{"nil matcher", func([]*x509.Certificate) error {
			return claims.Authorize(nil, claims.Requirement{Measurements: [][]byte{meas}})(id, chains)
		}, "no SPIFFE ID matcher"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.auth(nil)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	// A certificate without claims is refused.
	plain, ca2 := issue(t, nil)
	id2, chains2, err := x509svid.Verify([]*x509.Certificate{plain}, ca2.Bundle(), x509svid.WithTime(testNow))
	if err != nil {
		t.Fatal(err)
	}
	if err := claims.AuthorizeID(webID, meas)(id2, chains2); !errors.Is(err, claims.ErrNoClaims) {
		t.Fatalf("no claims: %v", err)
	}
	// Claims naming a node of another trust domain than the peer's.
	fc := identityClaims()
	fc.NodeID = "spiffe://other.test/confmesh/node/n1"
	ext, err := fc.Extension()
	if err != nil {
		t.Fatal(err)
	}
	if err := claims.AuthorizeID(webID, meas)(webID, [][]*x509.Certificate{{certWith(t, ext)}}); err == nil || !strings.Contains(err.Error(), "another trust domain") {
		t.Fatalf("foreign node: %v", err)
	}
	// FromConnectionState prefers verified chains, falls back to the peer certificate.
	if c, err := claims.FromConnectionState(tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}); err != nil || c.NodeID != nodeID {
		t.Fatalf("from peer certificates: %+v, %v", c, err)
	}
	if c, err := claims.FromConnectionState(tls.ConnectionState{VerifiedChains: chains}); err != nil || c.NodeID != nodeID {
		t.Fatalf("from verified chains: %+v, %v", c, err)
	}
	if _, err := claims.FromConnectionState(tls.ConnectionState{}); err == nil {
		t.Fatal("empty connection state accepted")
	}
}

func TestParseMeasurement(t *testing.T) {
	for in, ok := range map[string]bool{
		strings.Repeat("ab", 48):        true,
		"0x" + strings.Repeat("AB", 48): true,
		" abcd\n":                       true,
		"":                              false,
		"0x":                            false,
		"xyz":                           false,
		"abc":                           false,
	} {
		m, err := claims.ParseMeasurement(in)
		if (err == nil) != ok {
			t.Errorf("ParseMeasurement(%q) = %x, %v", in, m, err)
		}
	}
}
