package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Defaults of the per-source limit on the calls anyone may make (Challenge
// and Join).
const (
	DefaultSourceRate  = 10 // calls per second, per source
	DefaultSourceBurst = 30
	DefaultMaxSources  = 10000
)

// The gRPC methods the limiter guards: the two that need no node SVID.
var limitedMethods = map[string]string{
	"/confmesh.controlplane.v1.ControlPlane/Challenge": "Challenge",
	"/confmesh.controlplane.v1.ControlPlane/Join":      "Join",
}

// sourceLimiter is one token bucket per source, in a map of at most max
// entries. A source is a node (by the SPIFFE ID of a verified client
// certificate, so joined nodes keep their own budget whoever shares their
// address), else the caller's IP address (an IPv6 address by its /64, which
// one host can fill at will). When the map is full, buckets that have
// refilled (their source idle long enough) are dropped, which loses nothing
// (at most once a second, so the sweep costs a flood nothing); if none has,
// every new source shares one overflow bucket, so a flood from more
// addresses than max gains no more than one extra source's rate.
type sourceLimiter struct {
	rate  rate.Limit
	burst int
	max   int
	now   func() time.Time

	mu        sync.Mutex
	buckets   map[string]*rate.Limiter
	overflow  *rate.Limiter
	nextSweep time.Time // a full map is swept for idle buckets at most once a second
}

func newSourceLimiter(perSecond float64, burst, max int, now func() time.Time) *sourceLimiter {
	return &sourceLimiter{
		rate: rate.Limit(perSecond), burst: burst, max: max, now: now,
		buckets: map[string]*rate.Limiter{}, overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// allow takes one token from source's bucket.
func (l *sourceLimiter) allow(source string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[source]
	if b == nil {
		if len(l.buckets) >= l.max && !now.Before(l.nextSweep) {
			// At most once a second, or a flood of new sources would make
			// every call scan the whole map.
			l.nextSweep = now.Add(time.Second)
			for k, v := range l.buckets {
				if v.TokensAt(now) >= float64(l.burst) {
					delete(l.buckets, k)
				}
			}
		}
		if len(l.buckets) >= l.max {
			return l.overflow.AllowN(now, 1)
		}
		b = rate.NewLimiter(l.rate, l.burst)
		l.buckets[source] = b
	}
	return b.AllowN(now, 1)
}

// sources is how many buckets are kept.
func (l *sourceLimiter) sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// sourceOf names the caller for the limiter.
func sourceOf(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "unknown"
	}
	if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
		// The TLS layer verified the certificate against this control
		// plane's CA (VerifyClientCertIfGiven): a node SVID.
		if leaf := ti.State.VerifiedChains[0][0]; len(leaf.URIs) == 1 {
			return "id:" + leaf.URIs[0].String()
		}
	}
	ip, ok := connlimit.SourceIP(p.Addr)
	switch {
	case !ok:
		return "addr:" + p.Addr.String()
	case ip.Is6():
		return "net:" + connlimit.Source(p.Addr)
	}
	return "ip:" + ip.String()
}

// limitInterceptor refuses Challenge and Join calls over their source's
// budget with ResourceExhausted, before any work is done for them.
func (s *Server) limitInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	method, limited := limitedMethods[info.FullMethod]
	if !limited {
		return handler(ctx, req)
	}
	src := sourceOf(ctx)
	if !s.limiter.allow(src) {
		s.metrics.rateLimited.WithLabelValues(method).Inc()
		if method == "Challenge" {
			s.metrics.challengeRefusals.WithLabelValues("rate_limited").Inc()
		}
		return nil, status.Errorf(codes.ResourceExhausted,
			"rate limited: %s from %s refused: over %g Challenge and Join calls per second (burst %d) from this source; retry in a few seconds",
			method, src, float64(s.limiter.rate), s.limiter.burst)
	}
	return handler(ctx, req)
}
