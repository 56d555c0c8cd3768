package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// JWT-SVID issuance limits.
const (
	// DefaultJWTTTL is the JWT-SVID lifetime when Config.JWTTTL is zero. It
	// is capped at the workload SVID TTL.
	DefaultJWTTTL = 5 * time.Minute
	// MaxJWTAudiences and MaxJWTAudienceLen bound a SignJWT request.
	MaxJWTAudiences   = 16
	MaxJWTAudienceLen = 512

	secretJWTKey = "jwt.key"
)

// jwtSigner is the control plane's JWT-SVID key: ECDSA P-256 (ES256), made
// at first start and kept in the store like the CA key. The key ID is the
// RFC 7638 thumbprint (SHA-256, base64url) of the public key.
type jwtSigner struct {
	key    *ecdsa.PrivateKey
	kid    string
	signer jose.Signer
	jwks   []byte
}

func newJWTSigner(key *ecdsa.PrivateKey) (*jwtSigner, error) {
	if key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("JWT key is on curve %s, want P-256 (ES256)", key.Curve.Params().Name)
	}
	pub := jose.JSONWebKey{Key: key.Public(), Algorithm: string(jose.ES256), Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("JWT key thumbprint: %w", err)
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: key, KeyID: pub.KeyID}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, fmt.Errorf("JWT signer: %w", err)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{pub}})
	if err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	return &jwtSigner{key: key, kid: pub.KeyID, signer: sig, jwks: jwks}, nil
}

// loadOrCreateJWTKey reads the JWT signing key from the store or makes one.
func (s *Server) loadOrCreateJWTKey() (*jwtSigner, error) {
	der, err := s.store.GetSecret(secretJWTKey)
	if err == nil {
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return nil, fmt.Errorf("stored JWT key: %w", err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("stored JWT key is a %T, want ECDSA P-256", k)
		}
		return newJWTSigner(ek)
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	got, err := s.store.CreateSecrets(map[string][]byte{secretJWTKey: der})
	if err != nil {
		return nil, fmt.Errorf("store the new JWT key: %w", err)
	}
	if !bytes.Equal(got[secretJWTKey], der) { // another replica made one first
		return s.loadOrCreateJWTKey()
	}
	j, err := newJWTSigner(key)
	if err != nil {
		return nil, err
	}
	s.log.Info("created JWT-SVID signing key", "kid", j.kid)
	return j, nil
}

// JWTBundle returns the trust domain's JWT bundle: a JWKS (JSON) with the
// public key that signs JWT-SVIDs.
func (s *Server) JWTBundle() []byte { return append([]byte(nil), s.jwt.jwks...) }

// jwtTTL is the JWT-SVID lifetime: Config.JWTTTL, at most the workload TTL.
func (s *Server) jwtTTL() time.Duration {
	ttl := s.cfg.JWTTTL
	if ttl <= 0 {
		ttl = DefaultJWTTTL
	}
	if ttl > s.cfg.WorkloadTTL {
		ttl = s.cfg.WorkloadTTL
	}
	return ttl
}

func checkAudiences(aud []string) error {
	switch {
	case len(aud) == 0:
		return errors.New("at least one audience is required")
	case len(aud) > MaxJWTAudiences:
		return fmt.Errorf("%d audiences; at most %d", len(aud), MaxJWTAudiences)
	}
	for i, a := range aud {
		if a == "" {
			return fmt.Errorf("audience %d is empty", i)
		}
		if len(a) > MaxJWTAudienceLen {
			return fmt.Errorf("audience %d is %d bytes; at most %d", i, len(a), MaxJWTAudienceLen)
		}
	}
	return nil
}

// SignJWT issues a JWT-SVID for a pod the calling node registered (the rule
// of SignWorkload): sub is the workload's SPIFFE ID, aud the requested
// audiences, iat now, exp now + the JWT TTL, jti random, and the private
// claim "confmesh" summarises the calling node's attestation (see
// pkg/claims.JWTClaim).
func (s *Server) SignJWT(ctx context.Context, req *cpv1.SignJWTRequest) (*cpv1.SignJWTResponse, error) {
	rec, reg, err := s.callerPod(ctx, req.GetPod())
	if err != nil {
		return nil, err
	}
	if err := checkAudiences(req.GetAudience()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "audience: %v", err)
	}
	id, err := identity.WorkloadID(s.td, reg.Namespace, reg.ServiceAccount)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "workload ID: %v", err)
	}
	leaf, err := parseLeaf(rec.SVID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node SVID on record: %v", err)
	}
	nc, err := identity.ClaimsFromCert(leaf)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node claims: %v", err)
	}
	nodeID, err := spiffeid.FromString(nc.NodeID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node claims: node ID: %v", err)
	}
	private := claims.NewJWTClaim(&claims.Claims{
		TEE: nc.TEE, Measurement: nc.Measurement, ReportedTCB: nc.ReportedTCB,
		ChipIDDigest: nc.ChipIDDigest, ReportDigest: nc.ReportDigest, NodeID: nodeID,
	})
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return nil, status.Errorf(codes.Internal, "jti: %v", err)
	}
	now := s.now()
	exp := now.Add(s.jwtTTL())
	std := jwt.Claims{
		Subject:  id.String(),
		Audience: jwt.Audience(req.GetAudience()),
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(exp),
		ID:       hex.EncodeToString(jti[:]),
	}
	token, err := jwt.Signed(s.jwt.signer).Claims(std).Claims(map[string]any{claims.JWTClaimName: private}).Serialize()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign JWT-SVID: %v", err)
	}
	s.log.Debug("JWT-SVID issued", "node", rec.Name, "pod", reg.UID, "id", id.String(), "audience", req.GetAudience())
	return &cpv1.SignJWTResponse{Token: token, ExpiresAt: timestamppb.New(exp.Truncate(time.Second)), JwtBundle: s.JWTBundle()}, nil
}
