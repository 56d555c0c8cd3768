package workload

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseJWTSVID: a pod hands any string to ValidateJWTSVID; the parse
// never panics, refuses anything over MaxJWTSVIDSize, and accepts only a
// token signed by a bundle key, for the audience, naming an ID of the
// trust domain.
func FuzzParseJWTSVID(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("cluster.test")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	jb := jwtbundle.New(td)
	if err := jb.AddJWTAuthority("k1", key.Public()); err != nil {
		f.Fatal(err)
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: "k1"}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		f.Fatal(err)
	}
	sign := func(sub string, aud string, exp time.Time, extra map[string]any) string {
		tok, err := jwt.Signed(sig).Claims(jwt.Claims{Subject: sub, Audience: jwt.Audience{aud}, Expiry: jwt.NewNumericDate(exp)}).Claims(extra).Serialize()
		if err != nil {
			f.Fatal(err)
		}
		return tok
	}
	good := sign("spiffe://cluster.test/ns/a/sa/b", "svc", time.Now().Add(24*time.Hour), map[string]any{"confmesh": map[string]any{"tee": "sim-snp"}})
	if _, err := ParseJWTSVID(good, jwtbundle.NewSet(jb), "svc"); err != nil {
		f.Fatalf("the honest seed token is refused: %v", err)
	}
	for _, s := range []string{
		good,
		sign("spiffe://other.test/ns/a/sa/b", "svc", time.Now().Add(time.Hour), nil),
		sign("spiffe://cluster.test/ns/a/sa/b", "other", time.Now().Add(time.Hour), nil),
		sign("not a uri", "svc", time.Now().Add(time.Hour), nil),
		good[:len(good)-3],
		strings.Replace(good, ".", "..", 1),
		"a.b.c", "", "...", "eyJhbGciOiJub25lIn0.e30.",
		strings.Repeat("A", MaxJWTSVIDSize+1),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, token string) {
		svid, err := ParseJWTSVID(token, jwtbundle.NewSet(jb), "svc")
		if err != nil {
			return
		}
		if len(token) > MaxJWTSVIDSize {
			t.Fatalf("accepted a %d-byte token, limit %d", len(token), MaxJWTSVIDSize)
		}
		if svid.ID.TrustDomain() != td || len(svid.Audience) == 0 || !strings.Contains(strings.Join(svid.Audience, " "), "svc") {
			t.Fatalf("accepted %s for %v", svid.ID, svid.Audience)
		}
	})
}
