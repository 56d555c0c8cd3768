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
// control plane encodes (internal/identity is the writer).
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

func TestFromCertificateRefusals(t *testing.T) {
	ic := identityClaims()
	ext, err := ic.Extension()
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := issue(t, nil)
	if _, err := claims.FromCertificate(cert); !errors.Is(err, claims.ErrNoClaims) {
		t.Fatalf("no extension: %v", err)
	}
	if _, err := claims.FromCertificate(nil); err == nil {
		t.Fatal("nil certificate accepted")
	}
	type extra struct {
		Version      int
		TEE          string `asn1:"utf8"`
		Measurement  []byte
		ReportedTCB  *big.Int
		ChipIDDigest []byte
		ReportDigest []byte
		WireGuardKey []byte
		NodeID       string `asn1:"utf8"`
		Extra        int
	}
	v := extra{1, "sim-snp", meas, big.NewInt(1), chip[:], report[:], wgKey, nodeID.String(), 5}
	withExtra, _ := asn1.Marshal(v)
	v2, _ := asn1.Marshal(struct{ Version int }{2})
	mk := func(val []byte) pkix.Extension { return pkix.Extension{Id: claims.OID, Value: val} }
	type base struct {
		Version      int
		TEE          string `asn1:"utf8"`
		Measurement  []byte
		ReportedTCB  *big.Int
		ChipIDDigest []byte
		ReportDigest []byte
		WireGuardKey []byte
		NodeID       string `asn1:"utf8"`
	}
	enc := func(mut func(*base)) []byte {
		b := base{1, "sim-snp", meas, big.NewInt(1), chip[:], report[:], wgKey, nodeID.String()}
		mut(&b)
		der, err := asn1.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	for name, exts := range map[string][]pkix.Extension{
		"garbage":           {mk([]byte{0x30, 0x03, 0x02})},
		"extra field":       {mk(withExtra)},
		"unknown version":   {mk(v2)},
		"trailing bytes":    {mk(append(append([]byte{}, ext.Value...), 0))},
		"short WG key":      {mk(enc(func(b *base) { b.WireGuardKey = wgKey[:31] }))},
		"no TEE":            {mk(enc(func(b *base) { b.TEE = "" }))},
		"short digest":      {mk(enc(func(b *base) { b.ReportDigest = report[:16] }))},
		"negative TCB":      {mk(enc(func(b *base) { b.ReportedTCB = big.NewInt(-1) }))},
		"not a node ID":     {mk(enc(func(b *base) { b.NodeID = webID.String() }))},
		"not a SPIFFE ID":   {mk(enc(func(b *base) { b.NodeID = "https://x/confmesh/node/n1" }))},
		"nested node label": {mk(enc(func(b *base) { b.NodeID = "spiffe://cluster.test/confmesh/node/a/b" }))},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := claims.FromCertificate(certWith(t, exts...))
			if !errors.Is(err, claims.ErrMalformed) {
				t.Fatalf("got %+v, %v; want ErrMalformed", c, err)
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
