package controlplane_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func jwtBundle(t *testing.T, jwks []byte) *jwtbundle.Bundle {
	t.Helper()
	b, err := jwtbundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.test"), jwks)
	if err != nil {
		t.Fatalf("JWT bundle %s: %v", jwks, err)
	}
	if len(b.JWTAuthorities()) != 1 {
		t.Fatalf("JWT bundle holds %d keys, want 1", len(b.JWTAuthorities()))
	}
	return b
}

func TestSignJWT(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	join := a.Join(t, c)
	conn := a.MTLS(t, c)
	pod := &cpv1.PodIdentity{Namespace: "payments", Name: "api-0", Uid: "uid-1", ServiceAccount: "api"}
	if _, err := conn.Client.RegisterPod(ctxT(t), &cpv1.RegisterPodRequest{Pod: pod}); err != nil {
		t.Fatal(err)
	}
	bundle := jwtBundle(t, join.JwtBundle)
	before := time.Now().Truncate(time.Second)
	resp, err := conn.Client.SignJWT(ctxT(t), &cpv1.SignJWTRequest{Pod: pod, Audience: []string{"spiffe://cluster.test/ns/ledger/sa/db", "ledger"}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(resp.JwtBundle, join.JwtBundle) {
		t.Errorf("SignJWT bundle %s differs from the Join bundle %s", resp.JwtBundle, join.JwtBundle)
	}
	svid, err := jwtsvid.ParseAndValidate(resp.Token, bundle, []string{"ledger"})
	if err != nil {
		t.Fatalf("JWT-SVID does not validate against the JWKS: %v", err)
	}
	if svid.ID.String() != "spiffe://cluster.test/ns/payments/sa/api" {
		t.Errorf("sub = %s", svid.ID)
	}
	if ttl := svid.Expiry.Sub(before); ttl < 5*time.Minute || ttl > 5*time.Minute+2*time.Second {
		t.Errorf("JWT TTL %v, want 5m (default)", ttl)
	}
	if !svid.Expiry.Equal(resp.ExpiresAt.AsTime()) {
		t.Errorf("expires_at %v, token exp %v", resp.ExpiresAt.AsTime(), svid.Expiry)
	}
	if _, ok := svid.Claims["iat"]; !ok {
		t.Error("no iat claim")
	}
	if jti, _ := svid.Claims["jti"].(string); len(jti) != 32 {
		t.Errorf("jti %q", jti)
	}
	cl, err := claims.FromJWTClaims(svid.Claims)
	if err != nil {
		t.Fatal(err)
	}
	if cl.NodeID.String() != "spiffe://cluster.test/confmesh/node/node-a" || !bytes.Equal(cl.Measurement, goodMeas) ||
		cl.TEE != claims.TEESimSnp || len(cl.ReportDigest) != 32 || len(cl.ChipIDDigest) != 32 {
		t.Errorf("private claim %+v", cl)
	}
	// Header: ES256, the bundle's key ID, typ JWT.
	tok, err := jwt.ParseSigned(resp.Token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	h := tok.Headers[0]
	if h.Algorithm != "ES256" || !bundle.HasJWTAuthority(h.KeyID) || h.ExtraHeaders[jose.HeaderType] != "JWT" {
		t.Errorf("header alg %s kid %s typ %v", h.Algorithm, h.KeyID, h.ExtraHeaders[jose.HeaderType])
	}
	if _, err := jwtsvid.ParseAndValidate(resp.Token, bundle, []string{"other"}); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("wrong audience: err = %v", err)
	}
	// A bundle with another key refuses the token.
	c2 := cptest.Start(t, cptest.Options{})
	b2 := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if _, err := jwtsvid.ParseAndValidate(resp.Token, jwtBundle(t, b2.Join(t, c2).JwtBundle), []string{"ledger"}); err == nil {
		t.Error("token validated against another control plane's JWKS")
	}
}

// TestSignJWTRule: the SignWorkload rule holds for JWTs too.
func TestSignJWTRule(t *testing.T) {
	f := newPodFixture(t)
	c, ca, cb, pod := f.cp, f.connA, f.connB, f.pod
	aud := []string{"ledger"}
	for _, tc := range []struct {
		name string
		req  *cpv1.SignJWTRequest
		code codes.Code
		msg  string
	}{
		{"other node signs", &cpv1.SignJWTRequest{Pod: pod, Audience: aud}, codes.PermissionDenied, `not on the calling node "node-b"`},
		{"unregistered pod", &cpv1.SignJWTRequest{Pod: &cpv1.PodIdentity{Namespace: "payments", Name: "x", Uid: "uid-2", ServiceAccount: "api"}, Audience: aud}, codes.PermissionDenied, "not registered"},
		{"other service account", &cpv1.SignJWTRequest{Pod: &cpv1.PodIdentity{Namespace: "payments", Name: "api-0", Uid: "uid-1", ServiceAccount: "admin"}, Audience: aud}, codes.PermissionDenied, "was registered as"},
		{"no audience", &cpv1.SignJWTRequest{Pod: pod}, codes.InvalidArgument, "at least one audience"},
		{"empty audience", &cpv1.SignJWTRequest{Pod: pod, Audience: []string{"a", ""}}, codes.InvalidArgument, "audience 1 is empty"},
		{"too many audiences", &cpv1.SignJWTRequest{Pod: pod, Audience: strings.Split(strings.Repeat("a,", 17), ",")}, codes.InvalidArgument, "at most 16"},
		{"no pod", &cpv1.SignJWTRequest{Audience: aud}, codes.InvalidArgument, "no pod identity"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := ca
			if tc.name == "other node signs" {
				conn = cb
			}
			_, err := conn.Client.SignJWT(ctxT(t), tc.req)
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.code, tc.msg)
			}
		})
	}

	// Without a node SVID: unauthenticated.
	anon := cptest.NewAgent(t, "node-x", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, err := anon.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Client.SignJWT(ctxT(t), &cpv1.SignJWTRequest{Pod: pod, Audience: aud}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without an SVID: err = %v", err)
	}

	// A revoked node gets nothing, even for its own pods.
	if _, err := ca.Client.SignJWT(ctxT(t), &cpv1.SignJWTRequest{Pod: pod, Audience: aud}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Client.SignJWT(ctxT(t), &cpv1.SignJWTRequest{Pod: pod, Audience: aud}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked node: err = %v", err)
	}
}

// TestJWTKeyPersists: the JWT key is made once and survives a restart, so
// tokens stay valid and the JWKS in Renew matches the one in Join.
func TestJWTKeyPersists(t *testing.T) {
	dir := t.TempDir()
	c := cptest.Start(t, cptest.Options{Dir: dir})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	first := a.Join(t, c).JwtBundle
	pod := &cpv1.PodIdentity{Namespace: "default", Name: "p", Uid: "uid-1", ServiceAccount: "default"}
	conn := a.MTLS(t, c)
	if _, err := conn.Client.RegisterPod(ctxT(t), &cpv1.RegisterPodRequest{Pod: pod}); err != nil {
		t.Fatal(err)
	}
	resp, err := conn.Client.SignJWT(ctxT(t), &cpv1.SignJWTRequest{Pod: pod, Audience: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := conn.Renew(ctxT(t), a.NodeSpec(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(renewed.JwtBundle, first) {
		t.Errorf("Renew JWKS %s differs from Join JWKS %s", renewed.JwtBundle, first)
	}
	conn.Close()
	c.Stop()
	c2 := cptest.Start(t, cptest.Options{Dir: dir})
	again := a.Join(t, c2).JwtBundle
	if !bytes.Equal(again, first) {
		t.Fatalf("JWKS changed across a restart: %s then %s", first, again)
	}
	if _, err := jwtsvid.ParseAndValidate(resp.Token, jwtBundle(t, again), []string{"x"}); err != nil {
		t.Fatalf("token from before the restart: %v", err)
	}
}
