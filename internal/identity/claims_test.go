package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestClaimsRoundTripThroughIssuedCertificate(t *testing.T) {
	ca := newTestCA(t, testTD)
	key := newTestKey(t)
	tests := []struct {
		name string
		id   spiffeid.ID
		c    Claims
	}{
		{"node SVID", mustNodeID(t, testTD, "n1"), testClaims(t, testTD)},
		{"workload SVID", spiffeid.RequireFromPath(testTD, "/ns/default/sa/web"), testClaims(t, testTD)},
		{"no chip ID (tdx), zero TCB", mustNodeID(t, testTD, "n1"), func() Claims {
			c := testClaims(t, testTD)
			c.TEE, c.ChipIDDigest, c.ReportedTCB = "tdx", nil, 0
			return c
		}()},
		{"max TCB", mustNodeID(t, testTD, "n1"), func() Claims {
			c := testClaims(t, testTD)
			c.ReportedTCB = ^uint64(0)
			return c
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.c
			cert, err := ca.IssueSVID(IssueRequest{PublicKey: key.Public(), ID: tt.id, TTL: time.Hour, Now: testNow, Claims: &c})
			if err != nil {
				t.Fatal(err)
			}
			// Parse from DER, as a peer receiving the certificate does.
			parsed, err := x509.ParseCertificate(cert.Raw)
			if err != nil {
				t.Fatal(err)
			}
			got, err := ClaimsFromCert(parsed)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(tt.c) {
				t.Fatalf("claims round trip:\n got %+v\nwant %+v", *got, tt.c)
			}
			if got.ReportedTCB != tt.c.ReportedTCB {
				t.Fatalf("ReportedTCB = %#x, want %#x", got.ReportedTCB, tt.c.ReportedTCB)
			}
		})
	}
}

func TestClaimsOIDParsesWithGoX509(t *testing.T) {
	if got, want := ClaimsOID.String(), "2.25.1592704437.1"; got != want {
		t.Fatalf("ClaimsOID = %s, want %s", got, want)
	}
	for _, arc := range ClaimsOID {
		if arc >= 1<<31 {
			t.Fatalf("ClaimsOID arc %d does not fit in 31 bits", arc)
		}
	}
	ca := newTestCA(t, testTD)
	ext, err := testClaims(t, testTD).Extension()
	if err != nil {
		t.Fatal(err)
	}
	der := signRaw(t, ca, newTestKey(t).Public(), ext)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("crypto/x509 cannot parse a certificate carrying ClaimsOID: %v", err)
	}
	var found bool
	for _, e := range cert.Extensions {
		if e.Id.Equal(ClaimsOID) {
			found = true
			if e.Critical {
				t.Error("claims extension is critical")
			}
		}
	}
	if !found {
		t.Fatal("parsed certificate lacks the claims extension")
	}
	if len(cert.UnhandledCriticalExtensions) != 0 {
		t.Fatalf("unhandled critical extensions: %v", cert.UnhandledCriticalExtensions)
	}
}

// TestLargeUUIDArcIsUnparseable pins the reason ClaimsOID avoids a random
// 128-bit UUID arc. If it fails, Go accepts large arcs now and the comment on
// ClaimsOID is stale (the OID itself must not change).
func TestLargeUUIDArcIsUnparseable(t *testing.T) {
	ca := newTestCA(t, testTD)
	der := signRaw(t, ca, newTestKey(t).Public(), pkix.Extension{Id: asn1.ObjectIdentifier{2, 25, 1 << 31, 1}, Value: []byte{0x05, 0x00}})
	if _, err := x509.ParseCertificate(der); err == nil {
		t.Fatal("crypto/x509 parsed an extension OID with an arc of 2^31")
	}
}

// claimsDER encodes v with encoding/asn1 for hand-made extension values.
func claimsDER(t *testing.T, v any) []byte {
	t.Helper()
	der, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestClaimsFromCertErrors(t *testing.T) {
	ca := newTestCA(t, testTD)
	pub := newTestKey(t).Public()
	good := testClaims(t, testTD)
	goodExt, err := good.Extension()
	if err != nil {
		t.Fatal(err)
	}
	// withValue signs a real certificate whose claims extension holds value.
	withValue := func(value []byte) *x509.Certificate {
		der := signRaw(t, ca, pub, pkix.Extension{Id: ClaimsOID, Value: value})
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	a := good.toASN1()
	withField := func(mut func(*claimsASN1)) []byte {
		v := a
		mut(&v)
		return claimsDER(t, v)
	}
	type v1PlusExtra struct {
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
	type printableTEE struct {
		Version      int
		TEE          string `asn1:"printable"`
		Measurement  []byte
		ReportedTCB  *big.Int
		ChipIDDigest []byte
		ReportDigest []byte
		WireGuardKey []byte
		NodeID       string `asn1:"utf8"`
	}
	noExt := withValue(nil)
	noExt.Extensions = nil // a parsed certificate with no extensions at all is also fine

	tests := []struct {
		name    string
		cert    *x509.Certificate
		is      error
		wantErr string
	}{
		{"no extension", func() *x509.Certificate {
			der := signRaw(t, ca, pub)
			c, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}(), ErrNoClaims, "no confmesh claims"},
		{"no extensions at all", noExt, ErrNoClaims, "no confmesh claims"},
		{"garbage value", withValue([]byte("not DER at all")), ErrMalformedClaims, "malformed"},
		{"empty value", withValue([]byte{}), ErrMalformedClaims, "malformed"},
		{"trailing bytes", withValue(append(bytes.Clone(goodExt.Value), 0x00, 0x00)), ErrMalformedClaims, "2 trailing bytes"},
		{"duplicated", &x509.Certificate{Extensions: []pkix.Extension{goodExt, goodExt}}, ErrMalformedClaims, "appears 2 times"},
		{"unknown version", withValue(withField(func(v *claimsASN1) { v.Version = 2 })), ErrMalformedClaims, "unknown version 2"},
		{"version 0", withValue(withField(func(v *claimsASN1) { v.Version = 0 })), ErrMalformedClaims, "unknown version 0"},
		{"unknown version with other layout", withValue(claimsDER(t, struct {
			Version int
			Other   bool
		}{3, true})), ErrMalformedClaims, "unknown version 3"},
		{"extra field", withValue(claimsDER(t, v1PlusExtra{1, a.TEE, a.Measurement, a.ReportedTCB, a.ChipIDDigest, a.ReportDigest, a.WireGuardKey, a.NodeID, 9})), ErrMalformedClaims, "canonical"},
		{"PrintableString TEE", withValue(claimsDER(t, printableTEE{1, a.TEE, a.Measurement, a.ReportedTCB, a.ChipIDDigest, a.ReportDigest, a.WireGuardKey, a.NodeID})), ErrMalformedClaims, "canonical"},
		{"missing fields", withValue(claimsDER(t, struct{ Version int }{1})), ErrMalformedClaims, "malformed"},
		{"negative TCB", withValue(withField(func(v *claimsASN1) { v.ReportedTCB = big.NewInt(-1) })), ErrMalformedClaims, "unsigned 64-bit"},
		{"65-bit TCB", withValue(withField(func(v *claimsASN1) { v.ReportedTCB = new(big.Int).Lsh(big.NewInt(1), 64) })), ErrMalformedClaims, "unsigned 64-bit"},
		{"short WireGuard key", withValue(withField(func(v *claimsASN1) { v.WireGuardKey = v.WireGuardKey[:31] })), ErrMalformedClaims, "WireGuard key is 31 bytes"},
		{"empty TEE", withValue(withField(func(v *claimsASN1) { v.TEE = "" })), ErrMalformedClaims, "TEE type is empty"},
		{"bad node ID", withValue(withField(func(v *claimsASN1) { v.NodeID = "spiffe://example.org/ns/a/sa/b" })), ErrMalformedClaims, "not a confmesh node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ClaimsFromCert(tt.cert)
			if got != nil {
				t.Fatalf("got claims %+v with error %v", *got, err)
			}
			wantErr(t, err, tt.wantErr)
			if !errors.Is(err, tt.is) {
				t.Fatalf("error %q is not %q", err, tt.is)
			}
		})
	}
	if _, err := ClaimsFromCert(nil); err == nil {
		t.Error("ClaimsFromCert(nil) succeeded")
	}
}

func TestDuplicatedClaimsCertificateIsUnparseable(t *testing.T) {
	// Go's parser refuses duplicated extensions before ClaimsFromCert sees
	// them; ClaimsFromCert refuses them too (TestClaimsFromCertErrors).
	ca := newTestCA(t, testTD)
	ext, err := testClaims(t, testTD).Extension()
	if err != nil {
		t.Fatal(err)
	}
	der := signRaw(t, ca, newTestKey(t).Public(), ext, ext)
	if _, err := x509.ParseCertificate(der); err == nil {
		t.Fatal("crypto/x509 parsed a certificate with a duplicated claims extension")
	}
}

func TestClaimsExtension(t *testing.T) {
	good := testClaims(t, testTD)
	ext, err := good.Extension()
	if err != nil {
		t.Fatal(err)
	}
	if !ext.Id.Equal(ClaimsOID) || ext.Critical {
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
	if a.Version != 1 || a.TEE.Tag != asn1.TagUTF8String || string(a.TEE.Bytes) != good.TEE ||
		a.NodeID.Tag != asn1.TagUTF8String || string(a.NodeID.Bytes) != good.NodeID ||
		a.ReportedTCB.Uint64() != good.ReportedTCB || !bytes.Equal(a.WireGuardKey, good.WireGuardKey) ||
		!bytes.Equal(a.Measurement, good.Measurement) || !bytes.Equal(a.ChipIDDigest, good.ChipIDDigest) ||
		!bytes.Equal(a.ReportDigest, good.ReportDigest) {
		t.Fatalf("encoded claims do not match: %+v", a)
	}

	tests := []struct {
		name    string
		mut     func(*Claims)
		wantErr string
	}{
		{"empty TEE", func(c *Claims) { c.TEE = "" }, "TEE type is empty"},
		{"no WireGuard key", func(c *Claims) { c.WireGuardKey = nil }, "WireGuard key is 0 bytes"},
		{"long WireGuard key", func(c *Claims) { c.WireGuardKey = make([]byte, 33) }, "WireGuard key is 33 bytes"},
		{"short chip digest", func(c *Claims) { c.ChipIDDigest = make([]byte, 20) }, "chip ID digest is 20 bytes"},
		{"short report digest", func(c *Claims) { c.ReportDigest = make([]byte, 16) }, "report digest is 16 bytes"},
		{"node ID not SPIFFE", func(c *Claims) { c.NodeID = "n1" }, "node ID"},
		{"node ID of a workload", func(c *Claims) { c.NodeID = "spiffe://example.org/ns/a/sa/b" }, "not a confmesh node"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testClaims(t, testTD)
			tt.mut(&c)
			_, err := c.Extension()
			wantErr(t, err, tt.wantErr)
		})
	}
}

func TestClaimsEqual(t *testing.T) {
	base := testClaims(t, testTD)
	if !base.Equal(testClaims(t, testTD)) {
		t.Fatal("equal claims compare unequal")
	}
	empty := base
	empty.ChipIDDigest = nil
	emptyToo := base
	emptyToo.ChipIDDigest = []byte{}
	if !empty.Equal(emptyToo) {
		t.Fatal("nil and empty digests compare unequal")
	}
	tests := []struct {
		name string
		mut  func(*Claims)
	}{
		{"TEE", func(c *Claims) { c.TEE = "sev-snp" }},
		{"measurement", func(c *Claims) { c.Measurement = bytes.Repeat([]byte{0xac}, 48) }},
		{"reported TCB", func(c *Claims) { c.ReportedTCB++ }},
		{"chip ID digest", func(c *Claims) { c.ChipIDDigest = make([]byte, 32) }},
		{"report digest", func(c *Claims) { c.ReportDigest = make([]byte, 32) }},
		{"WireGuard key", func(c *Claims) { c.WireGuardKey = make([]byte, 32) }},
		{"node ID", func(c *Claims) { c.NodeID = "spiffe://example.org/confmesh/node/n2" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := testClaims(t, testTD)
			tt.mut(&o)
			if base.Equal(o) || o.Equal(base) {
				t.Fatalf("claims differing in %s compare equal", tt.name)
			}
		})
	}
}

func TestClaimsFromAttestation(t *testing.T) {
	chipID := bytes.Repeat([]byte{0x11}, 64)
	measurement := bytes.Repeat([]byte{0x22}, 48)
	reportDigest := bytes.Repeat([]byte{0x33}, 32)
	wg := bytes.Repeat([]byte{0x44}, 32)
	ac := &attest.Claims{
		TEE:          attest.TEESimSnp,
		Measurement:  bytes.Clone(measurement),
		ReportedTCB:  attest.TCB{Raw: 0xdb18000000000004},
		ChipID:       bytes.Clone(chipID),
		ReportDigest: bytes.Clone(reportDigest),
	}
	node := mustNodeID(t, testTD, "n1")
	wgIn := bytes.Clone(wg)
	c := ClaimsFromAttestation(ac, wgIn, node)
	chipDigest := sha256.Sum256(chipID)
	want := Claims{
		TEE:          "sim-snp",
		Measurement:  measurement,
		ReportedTCB:  0xdb18000000000004,
		ChipIDDigest: chipDigest[:],
		ReportDigest: reportDigest,
		WireGuardKey: wg,
		NodeID:       "spiffe://example.org/confmesh/node/n1",
	}
	if !c.Equal(want) {
		t.Fatalf("ClaimsFromAttestation:\n got %+v\nwant %+v", c, want)
	}
	// The result must not alias its inputs.
	ac.Measurement[0] ^= 0xff
	ac.ReportDigest[0] ^= 0xff
	wgIn[0] ^= 0xff
	if !c.Equal(want) {
		t.Fatal("ClaimsFromAttestation aliases its inputs")
	}
	if _, err := c.Extension(); err != nil {
		t.Fatalf("claims from attestation do not encode: %v", err)
	}

	noChip := ClaimsFromAttestation(&attest.Claims{TEE: attest.TEETDX, ReportDigest: reportDigest}, wg, node)
	if noChip.ChipIDDigest != nil {
		t.Fatalf("chip ID digest %x for a report without chip ID", noChip.ChipIDDigest)
	}

	// Without verified claims there is nothing to certify.
	if _, err := ClaimsFromAttestation(nil, wg, node).Extension(); err == nil {
		t.Fatal("claims built from nil attestation claims encode")
	}
}
