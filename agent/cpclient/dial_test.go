package cpclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// fakeControlPlane answers Challenge with whatever evidence a test sets.
type fakeControlPlane struct {
	cpv1.UnimplementedControlPlaneServer
	evidence *attestv1.Evidence
}

func (f *fakeControlPlane) Challenge(context.Context, *cpv1.ChallengeRequest) (*cpv1.ChallengeResponse, error) {
	ch, _ := attest.NewChallenge(time.Now())
	return &cpv1.ChallengeResponse{Evidence: f.evidence, Challenge: ch}, nil
}

// serveFake serves f over TLS with a fresh key and returns the address and
// SHA-256 of the key's SPKI.
func serveFake(t *testing.T, f *fakeControlPlane) (string, []byte) {
	t.Helper()
	return serveFakeServer(t, f)
}

// serveFakeServer serves any control-plane implementation like serveFake.
func serveFakeServer(t *testing.T, f cpv1.ControlPlaneServer) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})))
	cpv1.RegisterControlPlaneServer(g, f)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String(), attest.KeyHash(cert.RawSubjectPublicKeyInfo)
}

// TestAgentChecksEpochEvidence: the control plane's evidence answers no
// nonce of the agent's, so the agent accepts it only bound to the TLS key
// of its own connection, for purpose controlplane and the control plane's
// SPIFFE ID, and younger than attest.MaxControlPlaneEvidenceAge. Evidence
// replayed from another (genuine) control plane, or an old epoch's, is
// refused.
func TestAgentChecksEpochEvidence(t *testing.T) {
	tee := cptest.SimNode(t, sim.NodeConfig{})
	name := identity.ControlPlaneID(cptest.TrustDomain).String()
	f := &fakeControlPlane{}
	addr, keyHash := serveFake(t, f)
	otherKey := make([]byte, 32)
	rand.Read(otherKey)
	evidenceFor := func(purpose attest.Purpose, idKey, key []byte, age time.Duration) *attestv1.Evidence {
		at := time.Now().Add(-age)
		ch, _ := attest.NewChallenge(at)
		ev, err := attest.Attest(tee, attest.Binding{Purpose: purpose, Challenge: ch, IdentityKeyHash: idKey, Name: name, Key: key}, at)
		if err != nil {
			t.Fatal(err)
		}
		return ev
	}
	evidence := func(purpose attest.Purpose, key []byte, age time.Duration) *attestv1.Evidence {
		return evidenceFor(purpose, key, key, age)
	}
	agent := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	for _, tc := range []struct {
		name   string
		ev     *attestv1.Evidence
		reason string
	}{
		{"this epoch, this connection's key", evidence(attest.PurposeControlPlane, keyHash, 0), ""},
		{"an epoch 100 s old", evidence(attest.PurposeControlPlane, keyHash, 100*time.Second), ""},
		{"another control plane's key", evidence(attest.PurposeControlPlane, otherKey, 0), "wrong_nonce"},
		{"another key32", evidenceFor(attest.PurposeControlPlane, keyHash, otherKey, 0), "wrong_key"},
		{"an epoch 3 minutes old", evidence(attest.PurposeControlPlane, keyHash, 3*time.Minute), "too_old"},
		{"a node's join evidence", evidence(attest.PurposeJoin, keyHash, 0), "wrong_nonce"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.evidence = tc.ev
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: agent.Verifier, TrustDomain: cptest.TrustDomain})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				conn.Close()
				return
			}
			if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %v, want ErrControlPlaneRefused naming %q", err, tc.reason)
			}
		})
	}
}
