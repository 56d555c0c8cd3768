package workload

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// JWT-SVID request limits (the control plane enforces the same).
const (
	maxAudiences    = 16
	maxAudienceLen  = 512
	maxJWTCacheSize = 4096
	// MaxJWTSVIDSize bounds a JWT-SVID a caller hands in for validation,
	// checked before it is parsed. A confmesh JWT-SVID (ES256, the
	// attestation claims) is about 1.5 KiB.
	MaxJWTSVIDSize = 16 << 10
)

// jwtEntry is a cached JWT-SVID, reused until half its lifetime is over.
type jwtEntry struct {
	token    string
	received time.Time
	expiry   time.Time
}

func (j jwtEntry) fresh(now time.Time) bool {
	return now.Before(j.received.Add(j.expiry.Sub(j.received) / 2))
}

func checkAudiences(aud []string) error {
	if len(aud) == 0 {
		return status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if len(aud) > maxAudiences {
		return status.Errorf(codes.InvalidArgument, "%d audiences; at most %d", len(aud), maxAudiences)
	}
	for i, a := range aud {
		if a == "" {
			return status.Errorf(codes.InvalidArgument, "audience %d is empty", i)
		}
		if len(a) > maxAudienceLen {
			return status.Errorf(codes.InvalidArgument, "audience %d is %d bytes; at most %d", i, len(a), maxAudienceLen)
		}
	}
	return nil
}

// FetchJWTSVID returns a JWT-SVID of the caller for the requested audience,
// signed by the control plane's JWT key and checked here against the JWT
// bundle before it is handed out.
func (s *Server) FetchJWTSVID(ctx context.Context, req *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	if err := checkAudiences(req.GetAudience()); err != nil {
		return nil, err
	}
	pod, id, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if want := req.GetSpiffeId(); want != "" && want != id.String() {
		return nil, status.Errorf(codes.PermissionDenied, "the caller's identity is %s, not %s", id, want)
	}
	aud := slices.Clone(req.GetAudience())
	slices.Sort(aud)
	aud = slices.Compact(aud)
	key := pod.UID + "\x00" + id.String() + "\x00" + strings.Join(aud, "\x00")

	s.mu.Lock()
	cached, ok := s.jwts[key]
	s.mu.Unlock()
	if ok && cached.fresh(s.now()) {
		return jwtResponse(id, cached.token), nil
	}
	ctx, cancel := context.WithTimeout(ctx, signTimeout)
	defer cancel()
	token, err := s.cfg.Backend.SignJWT(ctx, pod, aud)
	if err != nil {
		return nil, signError("a JWT-SVID", pod, err)
	}
	_, jb, _ := s.bundles()
	if jb == nil {
		return nil, status.Error(codes.Unavailable, "no JWT bundle yet (the node has not joined)")
	}
	svid, err := jwtsvid.ParseAndValidate(token, jb, aud)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "control plane's JWT-SVID for pod %s does not validate against the JWT bundle: %v", pod, err)
	}
	if svid.ID != id {
		return nil, status.Errorf(codes.Internal, "control plane's JWT-SVID for pod %s names %s, want %s", pod, svid.ID, id)
	}
	s.mu.Lock()
	if len(s.jwts) >= maxJWTCacheSize {
		s.pruneJWTs(s.now())
		if len(s.jwts) >= maxJWTCacheSize {
			s.jwts = map[string]jwtEntry{}
		}
	}
	s.jwts[key] = jwtEntry{token: token, received: s.now(), expiry: svid.Expiry}
	s.mu.Unlock()
	return jwtResponse(id, token), nil
}

// pruneJWTs drops cached JWT-SVIDs past half life. The caller holds s.mu.
func (s *Server) pruneJWTs(now time.Time) {
	for k, j := range s.jwts {
		if !j.fresh(now) {
			delete(s.jwts, k)
		}
	}
}

func jwtResponse(id spiffeid.ID, token string) *workload.JWTSVIDResponse {
	return &workload.JWTSVIDResponse{Svids: []*workload.JWTSVID{{SpiffeId: id.String(), Svid: token}}}
}

// FetchJWTBundles streams the trust domain's JWT bundle (a JWKS) and its
// changes.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream workload.SpiffeWorkloadAPI_FetchJWTBundlesServer) error {
	ctx := stream.Context()
	if _, _, err := s.caller(ctx); err != nil {
		return err
	}
	for {
		_, jb, changed := s.bundles()
		if jb == nil {
			return status.Error(codes.Unavailable, "no JWT bundle yet (the node has not joined)")
		}
		jwks, err := jb.Marshal()
		if err != nil {
			return status.Errorf(codes.Internal, "marshal JWT bundle: %v", err)
		}
		if err := stream.Send(&workload.JWTBundlesResponse{Bundles: map[string][]byte{jb.TrustDomain().IDString(): jwks}}); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// ValidateJWTSVID validates a JWT-SVID of this trust domain for audience
// against the JWT bundle and returns its subject and claims.
func (s *Server) ValidateJWTSVID(ctx context.Context, req *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	if req.GetAudience() == "" {
		return nil, status.Error(codes.InvalidArgument, "audience must be specified")
	}
	if req.GetSvid() == "" {
		return nil, status.Error(codes.InvalidArgument, "svid must be specified")
	}
	if _, _, err := s.caller(ctx); err != nil {
		return nil, err
	}
	_, jb, _ := s.bundles()
	if jb == nil {
		return nil, status.Error(codes.Unavailable, "no JWT bundle yet (the node has not joined)")
	}
	svid, err := ParseJWTSVID(req.GetSvid(), jwtbundle.NewSet(jb), req.GetAudience())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	claims, err := structpb.NewStruct(svid.Claims)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "JWT-SVID claims: %v", err)
	}
	return &workload.ValidateJWTSVIDResponse{SpiffeId: svid.ID.String(), Claims: claims}, nil
}

// ParseJWTSVID validates a JWT-SVID a caller handed in, for audience,
// against bundles. Its size is checked before any parser sees it.
func ParseJWTSVID(token string, bundles jwtbundle.Source, audience string) (*jwtsvid.SVID, error) {
	if len(token) > MaxJWTSVIDSize {
		return nil, fmt.Errorf("JWT-SVID is %d bytes, limit %d", len(token), MaxJWTSVIDSize)
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	if err != nil {
		return nil, fmt.Errorf("JWT-SVID is not valid: %w", err)
	}
	return svid, nil
}
