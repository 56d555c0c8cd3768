package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestNewCA(t *testing.T) {
	ca := newTestCA(t, testTD)
	c := ca.Certificate()
	if ca.TrustDomain() != testTD {
		t.Fatalf("TrustDomain = %s", ca.TrustDomain())
	}
	if !c.IsCA || !c.BasicConstraintsValid {
		t.Fatal("CA certificate is not a CA")
	}
	if c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Fatalf("path length %d (zero %v), want 0", c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Fatalf("key usage %b", c.KeyUsage)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != "spiffe://example.org" {
		t.Fatalf("URI SANs %v", c.URIs)
	}
	if !c.NotBefore.Equal(testNow.Add(-time.Minute)) {
		t.Fatalf("NotBefore %s", c.NotBefore)
	}
	if !c.NotAfter.Equal(testNow.Add(10 * 365 * 24 * time.Hour)) {
		t.Fatalf("NotAfter %s", c.NotAfter)
	}
	if !slices.Equal(c.Subject.Organization, []string{"confmesh"}) || c.Subject.CommonName != "confmesh CA example.org" {
		t.Fatalf("subject %s", c.Subject)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Fatalf("serial %s", c.SerialNumber)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CA key %T, want ECDSA P-256", c.PublicKey)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatalf("not self-signed: %v", err)
	}
	if len(c.SubjectKeyId) == 0 {
		t.Fatal("no subject key ID")
	}
	other := newTestCA(t, testTD)
	if other.Certificate().SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Fatal("two CAs share a serial")
	}
	b := ca.Bundle()
	if b.TrustDomain() != testTD || len(b.X509Authorities()) != 1 || !b.X509Authorities()[0].Equal(c) {
		t.Fatal("bundle does not hold exactly the CA certificate")
	}
	b.AddX509Authority(other.Certificate())
	if len(ca.Bundle().X509Authorities()) != 1 {
		t.Fatal("modifying a returned bundle changed the CA's bundle")
	}
	if _, err := NewCA(spiffeid.TrustDomain{}, testNow); err == nil {
		t.Fatal("NewCA with zero trust domain succeeded")
	}
}

func TestIssueSVID(t *testing.T) {
	ca := newTestCA(t, testTD)
	key := newTestKey(t)
	id := mustNodeID(t, testTD, "n1")
	claims := testClaims(t, testTD)
	const ttl = time.Hour
	cert, err := ca.IssueSVID(IssueRequest{PublicKey: key.Public(), ID: id, TTL: ttl, Now: testNow, Claims: &claims})
	if err != nil {
		t.Fatal(err)
	}

	gotID, chains, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle(), x509svid.WithTime(testNow))
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if gotID != id || len(chains) != 1 {
		t.Fatalf("x509svid.Verify = %s, %d chains", gotID, len(chains))
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != id.String() {
		t.Fatalf("URI SANs %v, want exactly [%s]", cert.URIs, id)
	}
	if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses) != 0 {
		t.Fatal("node SVID has other SANs")
	}
	if cert.IsCA || !cert.BasicConstraintsValid {
		t.Fatalf("IsCA %v BasicConstraintsValid %v", cert.IsCA, cert.BasicConstraintsValid)
	}
	if cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Fatalf("key usage %b, want digitalSignature only", cert.KeyUsage)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Fatalf("ext key usage %v", cert.ExtKeyUsage)
	}
	if !cert.NotBefore.Equal(testNow.Add(-time.Minute)) {
		t.Fatalf("NotBefore %s, want %s", cert.NotBefore, testNow.Add(-time.Minute))
	}
	if !cert.NotAfter.Equal(testNow.Add(ttl)) {
		t.Fatalf("NotAfter %s, want %s", cert.NotAfter, testNow.Add(ttl))
	}
	if !bytes.Equal(cert.AuthorityKeyId, ca.Certificate().SubjectKeyId) {
		t.Fatalf("authority key ID %x, want %x", cert.AuthorityKeyId, ca.Certificate().SubjectKeyId)
	}
	if cert.SerialNumber.Sign() <= 0 || cert.SerialNumber.BitLen() > 128 {
		t.Fatalf("serial %s", cert.SerialNumber)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Fatal("certificate key is not the requested key")
	}
	again, err := ca.IssueSVID(IssueRequest{PublicKey: key.Public(), ID: id, TTL: ttl, Now: testNow, Claims: &claims})
	if err != nil {
		t.Fatal(err)
	}
	if again.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Fatal("two SVIDs share a serial")
	}
}

func TestIssueSVIDWithoutClaims(t *testing.T) {
	ca := newTestCA(t, testTD)
	for _, id := range []spiffeid.ID{ControlPlaneID(testTD), AdminID(testTD)} {
		cert, err := ca.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: id, TTL: time.Hour, Now: testNow})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ClaimsFromCert(cert); !errors.Is(err, ErrNoClaims) {
			t.Fatalf("%s: ClaimsFromCert error %v, want ErrNoClaims", id, err)
		}
		if got, err := VerifySVID([]*x509.Certificate{cert}, ca.Bundle(), testNow); err != nil || got != id {
			t.Fatalf("VerifySVID = %s, %v", got, err)
		}
	}
}

func TestIssueControlPlaneServingCertificate(t *testing.T) {
	ca := newTestCA(t, testTD)
	cert, err := ca.IssueSVID(IssueRequest{
		PublicKey:   newTestKey(t).Public(),
		ID:          ControlPlaneID(testTD),
		TTL:         24 * time.Hour,
		Now:         testNow,
		DNSNames:    []string{"confmesh-controlplane.confmesh.svc"},
		IPAddresses: []net.IP{net.ParseIP("10.96.0.10")},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || !slices.Equal(cert.DNSNames, []string{"confmesh-controlplane.confmesh.svc"}) ||
		len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.ParseIP("10.96.0.10")) {
		t.Fatalf("SANs: URIs %v DNS %v IPs %v", cert.URIs, cert.DNSNames, cert.IPAddresses)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: "confmesh-controlplane.confmesh.svc", CurrentTime: testNow}); err != nil {
		t.Fatalf("TLS hostname verification: %v", err)
	}
}

func TestIssueSVIDAcceptsKeyTypes(t *testing.T) {
	ca := newTestCA(t, testTD)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, pub := range map[string]any{"P-256": newTestKey(t).Public(), "P-384": p384.Public(), "Ed25519": edPub} {
		cert, err := ca.IssueSVID(IssueRequest{PublicKey: pub, ID: AdminID(testTD), TTL: time.Hour, Now: testNow})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, err := VerifySVID([]*x509.Certificate{cert}, ca.Bundle(), testNow); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

func TestIssueSVIDRefusals(t *testing.T) {
	ca := newTestCA(t, testTD)
	pub := newTestKey(t).Public()
	otherTD := spiffeid.RequireTrustDomainFromString("other.org")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	node := mustNodeID(t, testTD, "n1")
	workload := spiffeid.RequireFromPath(testTD, "/ns/default/sa/web")
	claimsFor := func(mut func(*Claims)) *Claims {
		c := testClaims(t, testTD)
		mut(&c)
		return &c
	}
	ok := IssueRequest{PublicKey: pub, ID: node, TTL: time.Hour, Now: testNow, Claims: claimsFor(func(*Claims) {})}
	if _, err := ca.IssueSVID(ok); err != nil {
		t.Fatalf("baseline request refused: %v", err)
	}
	tests := []struct {
		name    string
		mut     func(*IssueRequest)
		wantErr string
	}{
		{"zero ID", func(r *IssueRequest) { r.ID = spiffeid.ID{} }, "SPIFFE ID is empty"},
		{"other trust domain", func(r *IssueRequest) { r.ID = mustNodeID(t, otherTD, "n1") }, "not in the CA's trust domain"},
		{"trust domain ID", func(r *IssueRequest) { r.ID = testTD.ID() }, "needs a path"},
		{"zero TTL", func(r *IssueRequest) { r.TTL = 0 }, "must be positive"},
		{"negative TTL", func(r *IssueRequest) { r.TTL = -time.Second }, "must be positive"},
		{"RSA key", func(r *IssueRequest) { r.PublicKey = rsaKey.Public() }, "*rsa.PublicKey is not supported"},
		{"P-224 key", func(r *IssueRequest) { r.PublicKey = p224.Public() }, "curve P-224 is not supported"},
		{"no key", func(r *IssueRequest) { r.PublicKey = nil }, "public key is missing"},
		{"private key", func(r *IssueRequest) { r.PublicKey = rsaKey }, "not supported"},
		{"DNS name on node SVID", func(r *IssueRequest) { r.DNSNames = []string{"n1.example.org"} }, "only allowed on the control plane"},
		{"IP on workload SVID", func(r *IssueRequest) { r.ID = workload; r.IPAddresses = []net.IP{net.IPv4(10, 0, 0, 1)} }, "only allowed on the control plane"},
		{"claims of another node", func(r *IssueRequest) {
			r.Claims = claimsFor(func(c *Claims) { c.NodeID = "spiffe://example.org/confmesh/node/n2" })
		}, "claims name another node"},
		{"claims node in other trust domain", func(r *IssueRequest) {
			r.ID = workload
			r.Claims = claimsFor(func(c *Claims) { c.NodeID = "spiffe://other.org/confmesh/node/n1" })
		}, "not in the CA's trust domain"},
		{"invalid claims", func(r *IssueRequest) { r.Claims = claimsFor(func(c *Claims) { c.WireGuardKey = nil }) }, "WireGuard key is 0 bytes"},
		{"CA expired", func(r *IssueRequest) { r.Now = ca.Certificate().NotAfter }, "CA certificate expired"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := ok
			tt.mut(&req)
			cert, err := ca.IssueSVID(req)
			if cert != nil {
				t.Fatal("got a certificate")
			}
			wantErr(t, err, tt.wantErr)
		})
	}
}

func TestIssueSVIDTTLCappedAtCALifetime(t *testing.T) {
	ca := newTestCA(t, testTD)
	now := ca.Certificate().NotAfter.Add(-time.Hour)
	cert, err := ca.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: AdminID(testTD), TTL: 10 * time.Hour, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Fatalf("NotAfter %s, want the CA's %s", cert.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestIssueSVIDZeroNowMeansNow(t *testing.T) {
	ca, err := NewCA(testTD, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now().Truncate(time.Second)
	cert, err := ca.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: AdminID(testTD), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if cert.NotAfter.Before(before.Add(time.Hour)) || cert.NotAfter.After(after.Add(time.Hour)) {
		t.Fatalf("NotAfter %s not an hour after [%s, %s]", cert.NotAfter, before, after)
	}
}

func TestLoadCARoundTrip(t *testing.T) {
	ca := newTestCA(t, testTD)
	certDER, keyDER, err := ca.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(certDER, keyDER)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.TrustDomain() != testTD || !loaded.Certificate().Equal(ca.Certificate()) {
		t.Fatal("loaded CA differs")
	}
	id := mustNodeID(t, testTD, "n1")
	claims := testClaims(t, testTD)
	cert, err := loaded.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: id, TTL: time.Hour, Now: testNow, Claims: &claims})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := VerifySVID([]*x509.Certificate{cert}, ca.Bundle(), testNow); err != nil || got != id {
		t.Fatalf("SVID from the loaded CA against the original bundle: %s, %v", got, err)
	}
}

func TestLoadCARejects(t *testing.T) {
	ca := newTestCA(t, testTD)
	certDER, keyDER, err := ca.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, otherKeyDER, err := newTestCA(t, testTD).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.IssueSVID(IssueRequest{PublicKey: leafKey.Public(), ID: AdminID(testTD), TTL: time.Hour, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	leafKeyDER, err := x509.MarshalPKCS8PrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		cert, key []byte
		wantErr   string
	}{
		{"garbage certificate", []byte("junk"), keyDER, "load CA: certificate"},
		{"garbage key", certDER, []byte("junk"), "load CA: private key"},
		{"SEC1 key", certDER, sec1, "load CA: private key"},
		{"other CA's key", certDER, otherKeyDER, "does not match"},
		{"leaf certificate", leaf.Raw, leafKeyDER, "not a CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := LoadCA(tt.cert, tt.key)
			if got != nil {
				t.Fatal("got a CA")
			}
			wantErr(t, err, tt.wantErr)
		})
	}
}
