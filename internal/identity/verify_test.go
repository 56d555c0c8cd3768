package identity

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestVerifySVID(t *testing.T) {
	ca := newTestCA(t, testTD)
	id := mustNodeID(t, testTD, "n1")
	claims := testClaims(t, testTD)
	const ttl = time.Hour
	svid, err := ca.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: id, TTL: ttl, Now: testNow, Claims: &claims})
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifySVID([]*x509.Certificate{svid}, ca.Bundle(), testNow)
	if err != nil || got != id {
		t.Fatalf("VerifySVID = %s, %v; want %s", got, err, id)
	}
	// The last valid second still verifies.
	if _, err := VerifySVID([]*x509.Certificate{svid}, ca.Bundle(), svid.NotAfter); err != nil {
		t.Fatalf("at NotAfter: %v", err)
	}

	otherCA := newTestCA(t, testTD) // same trust domain, different key
	foreignTD := spiffeid.RequireTrustDomainFromString("other.org")
	foreignCA := newTestCA(t, foreignTD)
	foreign, err := foreignCA.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: mustNodeID(t, foreignTD, "n1"), TTL: ttl, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		bundle  *x509bundle.Bundle
		now     time.Time
		wantErr string
	}{
		{"another CA of the same trust domain", []*x509.Certificate{svid}, otherCA.Bundle(), testNow, "unknown authority"},
		{"another trust domain", []*x509.Certificate{foreign}, ca.Bundle(), testNow, "no X.509 bundle found for trust domain"},
		{"expired", []*x509.Certificate{svid}, ca.Bundle(), testNow.Add(ttl + time.Second), "expired"},
		{"not yet valid", []*x509.Certificate{svid}, ca.Bundle(), testNow.Add(-2 * time.Minute), "not yet valid"},
		{"CA certificate as leaf", []*x509.Certificate{ca.Certificate()}, ca.Bundle(), testNow, "CA flag"},
		{"empty chain", nil, ca.Bundle(), testNow, "empty certificate chain"},
		{"nil bundle", []*x509.Certificate{svid}, nil, testNow, "no trust bundle"},
		{"nil certificate", []*x509.Certificate{nil}, ca.Bundle(), testNow, "certificate 0 of the chain is nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := VerifySVID(tt.chain, tt.bundle, tt.now)
			if !got.IsZero() {
				t.Fatalf("got ID %s with error %v", got, err)
			}
			wantErr(t, err, tt.wantErr)
		})
	}
}

func TestParseChainAndChainDER(t *testing.T) {
	ca := newTestCA(t, testTD)
	leaf, err := ca.IssueSVID(IssueRequest{PublicKey: newTestKey(t).Public(), ID: AdminID(testTD), TTL: time.Hour, Now: testNow})
	if err != nil {
		t.Fatal(err)
	}
	ders := ChainDER(leaf, nil, ca.Certificate())
	if len(ders) != 2 {
		t.Fatalf("ChainDER returned %d certificates, want 2 (nil skipped)", len(ders))
	}
	certs, err := ParseChain(ders)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[0].Equal(leaf) || !certs[1].Equal(ca.Certificate()) {
		t.Fatal("ParseChain(ChainDER()) does not round trip")
	}
	tests := []struct {
		name    string
		ders    [][]byte
		wantErr string
	}{
		{"no certificates", nil, "no certificates"},
		{"empty entry", [][]byte{leaf.Raw, {}}, "certificate 1 is empty"},
		{"garbage entry", [][]byte{leaf.Raw, []byte("junk")}, "certificate 1:"},
		{"trailing bytes", [][]byte{append(append([]byte{}, leaf.Raw...), 0)}, "certificate 0:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseChain(tt.ders)
			if got != nil {
				t.Fatal("got certificates")
			}
			wantErr(t, err, tt.wantErr)
		})
	}
}
