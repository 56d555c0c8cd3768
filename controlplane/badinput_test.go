package controlplane_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"net"
	"net/url"
	"strings"
	"testing"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestJoinBadInput: malformed messages, oversized fields, CSRs for another
// SPIFFE ID or with extra SANs, wrong key types: each refused with a status
// code and a message naming the problem, and nothing stored.
func TestJoinBadInput(t *testing.T) {
	// Dozens of calls from one address in a burst: lift the per-source limit.
	c := cptest.Start(t, cptest.Options{SourceRate: 1000, SourceBurst: 1000})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, err := a.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	csrWith := func(tmpl *x509.CertificateRequest, key any) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	other, _ := url.Parse("spiffe://cluster.test/confmesh/node/node-z")
	self, _ := url.Parse("spiffe://cluster.test/confmesh/node/node-a")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	for _, tc := range []struct {
		name   string
		mutate func(r *cpv1.JoinRequest)
		code   codes.Code
		want   string
	}{
		{"empty name", func(r *cpv1.JoinRequest) { r.Name = "" }, codes.InvalidArgument, "name"},
		{"oversized name", func(r *cpv1.JoinRequest) { r.Name = strings.Repeat("a", 300) }, codes.InvalidArgument, "name"},
		{"upper-case name", func(r *cpv1.JoinRequest) { r.Name = "Node-A" }, codes.InvalidArgument, "name"},
		{"oversized endpoint", func(r *cpv1.JoinRequest) { r.Endpoint = strings.Repeat("1", 100) }, codes.InvalidArgument, "endpoint"},
		{"endpoint without port", func(r *cpv1.JoinRequest) { r.Endpoint = "198.18.0.9" }, codes.InvalidArgument, "endpoint"},
		{"short WireGuard key", func(r *cpv1.JoinRequest) { r.WireguardPublicKey = r.WireguardPublicKey[:31] }, codes.InvalidArgument, "WireGuard public key is 31 bytes"},
		{"garbage CSR", func(r *cpv1.JoinRequest) { r.Csr = []byte("not a csr") }, codes.InvalidArgument, "CSR"},
		{"oversized CSR", func(r *cpv1.JoinRequest) { r.Csr = make([]byte, 9000) }, codes.InvalidArgument, "CSR is 9000 bytes"},
		{"CSR for another SPIFFE ID", func(r *cpv1.JoinRequest) {
			r.Csr = csrWith(&x509.CertificateRequest{URIs: []*url.URL{other}}, a.SVIDKey)
		}, codes.InvalidArgument, "node-z"},
		{"CSR with extra SANs", func(r *cpv1.JoinRequest) {
			r.Csr = csrWith(&x509.CertificateRequest{URIs: []*url.URL{self}, DNSNames: []string{"evil.example"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}, a.SVIDKey)
		}, codes.InvalidArgument, "DNS/IP/e-mail SANs"},
		{"CSR with an RSA key", func(r *cpv1.JoinRequest) { r.Csr = csrWith(&x509.CertificateRequest{}, rsaKey) }, codes.InvalidArgument, "CSR"},
		{"CSR with a P-224 key", func(r *cpv1.JoinRequest) { r.Csr = csrWith(&x509.CertificateRequest{}, p224) }, codes.InvalidArgument, "CSR"},
		{"no evidence", func(r *cpv1.JoinRequest) { r.Evidence = nil }, codes.InvalidArgument, "no evidence"},
		{"oversized evidence", func(r *cpv1.JoinRequest) { r.Evidence.Report = make([]byte, 100<<10) }, codes.InvalidArgument, "evidence is"},
		{"truncated report", func(r *cpv1.JoinRequest) { r.Evidence.Report = r.Evidence.Report[:100] }, codes.PermissionDenied, "malformed_report"},
		{"unknown TEE", func(r *cpv1.JoinRequest) { r.Evidence.Tee = "sgx" }, codes.PermissionDenied, "unsupported_tee"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch, err := conn.Challenge(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			req := joinRequest(t, a, ch)
			tc.mutate(req)
			_, err = conn.Client.Join(ctxT(t), req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.code, tc.want)
			}
		})
	}
	// A CSR naming exactly the node's own ID is fine.
	ch, err := conn.Challenge(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	req := joinRequest(t, a, ch)
	req.Csr = csrWith(&x509.CertificateRequest{URIs: []*url.URL{self}}, a.SVIDKey)
	if _, err := conn.Client.Join(ctxT(t), req); err != nil {
		t.Fatalf("CSR naming the node's own ID: %v", err)
	}
	nodes, err := c.Store.ListNodes()
	if err != nil || len(nodes) != 1 {
		t.Fatalf("bad input stored something: %d nodes, err %v", len(nodes), err)
	}
}

func TestOversizedMessageRefused(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, err := a.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = conn.Client.Join(ctxT(t), &cpv1.JoinRequest{Name: "node-a", Csr: make([]byte, 1<<20)})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("1 MiB message: err = %v, want ResourceExhausted", err)
	}
}
