package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// testNow is a whole-second instant, so certificate times compare exactly.
var testNow = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

func newTestCA(t *testing.T, td spiffeid.TrustDomain) *CA {
	t.Helper()
	ca, err := NewCA(td, testNow)
	if err != nil {
		t.Fatalf("NewCA(%s): %v", td, err)
	}
	return ca
}

func newTestKey(t *testing.T) crypto.Signer {
	t.Helper()
	key, csr, err := NewKeyAndCSR()
	if err != nil {
		t.Fatalf("NewKeyAndCSR: %v", err)
	}
	if _, err := ParseCSR(csr); err != nil {
		t.Fatalf("ParseCSR(NewKeyAndCSR()): %v", err)
	}
	return key
}

func mustNodeID(t *testing.T, td spiffeid.TrustDomain, name string) spiffeid.ID {
	t.Helper()
	id, err := NodeID(td, name)
	if err != nil {
		t.Fatalf("NodeID(%s, %q): %v", td, name, err)
	}
	return id
}

// testClaims returns valid claims for node n1 of td, with a reported TCB
// whose top bit is set (a real SNP microcode SVN byte can be >= 0x80).
func testClaims(t *testing.T, td spiffeid.TrustDomain) Claims {
	t.Helper()
	chip := sha256.Sum256([]byte("chip"))
	report := sha256.Sum256([]byte("report"))
	return Claims{
		TEE:          "sim-snp",
		Measurement:  bytes.Repeat([]byte{0xab}, 48),
		ReportedTCB:  0xdb18000000000004,
		ChipIDDigest: chip[:],
		ReportDigest: report[:],
		WireGuardKey: bytes.Repeat([]byte{0x42}, 32),
		NodeID:       mustNodeID(t, td, "n1").String(),
	}
}

// signRaw has ca sign a leaf for pub carrying extra extensions verbatim,
// bypassing IssueSVID's checks, and returns the DER.
func signRaw(t *testing.T, ca *CA, pub crypto.PublicKey, exts ...pkix.Extension) []byte {
	t.Helper()
	u, _ := url.Parse("spiffe://" + ca.td.Name() + "/confmesh/node/raw")
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(7),
		URIs:                  []*url.URL{u},
		NotBefore:             testNow.Add(-time.Minute),
		NotAfter:              testNow.Add(time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtraExtensions:       exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatalf("CreateCertificate: %v", err)
	}
	return der
}

// wantErr fails unless err is non-nil and its message contains want.
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
