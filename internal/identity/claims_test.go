package identity

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
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

// TestClaimsFromCertErrors covers what ClaimsFromCert adds to pkg/claims's
// decoder (whose refusals pkg/claims's tests cover case by case): this
// package's sentinels and its stricter node names.
func TestClaimsFromCertErrors(t *testing.T) {
	ca := newTestCA(t, testTD)
	pub := newTestKey(t).Public()
	goodExt, err := testClaims(t, testTD).Extension()
	if err != nil {
		t.Fatal(err)
	}
	// withExt signs a real certificate carrying exts.
	withExt := func(exts ...pkix.Extension) *x509.Certificate {
		cert, err := x509.ParseCertificate(signRaw(t, ca, pub, exts...))
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	// A node name that SPIFFE and pkg/claims accept but ValidateNodeName
	// does not.
	upper, err := testClaims(t, testTD).public()
	if err != nil {
		t.Fatal(err)
	}
	upper.NodeID = spiffeid.RequireFromPath(testTD, "/confmesh/node/Node_1")
	upperExt, err := upper.Extension()
	if err != nil {
		t.Fatalf("pkg/claims refuses node name Node_1: %v", err)
	}
	noExt := withExt()
	noExt.Extensions = nil // a parsed certificate with no extensions at all is also fine

	tests := []struct {
		name    string
		cert    *x509.Certificate
		is      error
		wantErr string
	}{
		{"no extension", withExt(), ErrNoClaims, "identity: certificate has no confmesh claims"},
		{"no extensions at all", noExt, ErrNoClaims, "no confmesh claims"},
		{"trailing bytes", withExt(pkix.Extension{Id: ClaimsOID, Value: append(bytes.Clone(goodExt.Value), 0x00, 0x00)}), ErrMalformedClaims,
			"identity: malformed confmesh claims extension: 2 trailing bytes"},
		{"duplicated", &x509.Certificate{Extensions: []pkix.Extension{goodExt, goodExt}}, ErrMalformedClaims, "appears 2 times"},
		{"node name not a DNS subdomain", withExt(upperExt), ErrMalformedClaims, "not a confmesh node"},
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
	// pkg/claims's tests check the layout; this one that it is what
	// ClaimsFromCert reads back.
	got, err := ClaimsFromCert(&x509.Certificate{Extensions: []pkix.Extension{ext}})
	if err != nil || !got.Equal(good) {
		t.Fatalf("extension decodes to %+v, %v; want %+v", got, err, good)
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
