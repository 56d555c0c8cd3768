package controlplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
	"github.com/confmesh/confmesh/internal/connpool"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
)

// Defaults of Limits (docs/security.md says why each is what it is).
const (
	// DefaultHandshakeTimeout bounds the TLS and HTTP/2 handshakes of a
	// new connection.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a connection that has carried no
	// authenticated call and on which no call started for this long. An
	// honest join needs one Challenge, a report from the agent's TEE and
	// one Join on its connection.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxConnsPerSource: one agent holds one Watch connection and
	// opens one more per call in flight (join, renewal, pod registration,
	// workload SVID or JWT signing), each closed when its call ends.
	DefaultMaxConnsPerSource = 64
	// DefaultMaxConns bounds every connection: at about 40 KiB each
	// (measured) 10,000 stay well inside the manifest's 512 MiB.
	DefaultMaxConns = 10000
	// DefaultMaxUnauthenticatedConns bounds the connections that have not
	// carried an authenticated call (about 80 MiB at most).
	DefaultMaxUnauthenticatedConns = 2048
	// DefaultMaxConcurrentStreams: an agent's connection carries one Watch
	// and a call or two.
	DefaultMaxConcurrentStreams = 32
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout: the server pings a
	// connection silent for KeepaliveTime and closes it when the ping is
	// not answered within KeepaliveTimeout (a dead agent's Watch).
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
	// DefaultKeepaliveMinTime: a client pinging more often than this is
	// sent GOAWAY (too_many_pings) and disconnected.
	DefaultKeepaliveMinTime = 10 * time.Second

	// DefaultMetricsMaxConns and DefaultMetricsMaxConnsPerSource cap the
	// metrics listener: a Prometheus server keeps one connection, the
	// kubelet's probes open one at a time.
	DefaultMetricsMaxConns          = 64
	DefaultMetricsMaxConnsPerSource = 16
)

// Limits bound the agent listener's connections. Zero fields take the
// defaults above; negative ones are an error.
type Limits struct {
	// HandshakeTimeout closes a connection whose TLS and HTTP/2 handshakes
	// have not completed within it.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that has not carried an
	// authenticated call (one made with a node SVID that passed the node
	// check) once no call has started on it for this long. Authenticated
	// connections (an agent's Watch) are never closed for idleness.
	IdleTimeout time.Duration
	// MaxConnsPerSource bounds the connections from one source (IPv4
	// address, IPv6 /64), refused at accept beyond it.
	MaxConnsPerSource int
	// MaxConns bounds all connections, refused at accept beyond it.
	MaxConns int
	// MaxUnauthenticatedConns bounds the connections that have not
	// carried an authenticated call. When full, a newcomer from a source
	// holding fewer of them than the heaviest source displaces that
	// source's oldest; otherwise it is refused.
	MaxUnauthenticatedConns int
	// MaxConcurrentStreams bounds the calls in flight on one connection.
	MaxConcurrentStreams int
	// KeepaliveTime and KeepaliveTimeout: the server pings a connection
	// silent for KeepaliveTime and closes it if no answer comes within
	// KeepaliveTimeout.
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// KeepaliveMinTime is the shortest interval between client pings the
	// server tolerates (with or without calls in flight).
	KeepaliveMinTime time.Duration
}

// DefaultLimits are the limits used when Config.Limits is zero.
func DefaultLimits() Limits { return Limits{}.WithDefaults() }

// WithDefaults returns l with its zero fields set to the defaults.
func (l Limits) WithDefaults() Limits {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	def(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&l.IdleTimeout, DefaultIdleTimeout)
	defInt(&l.MaxConnsPerSource, DefaultMaxConnsPerSource)
	defInt(&l.MaxConns, DefaultMaxConns)
	defInt(&l.MaxUnauthenticatedConns, min(DefaultMaxUnauthenticatedConns, l.MaxConns))
	defInt(&l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	def(&l.KeepaliveTime, DefaultKeepaliveTime)
	def(&l.KeepaliveTimeout, DefaultKeepaliveTimeout)
	def(&l.KeepaliveMinTime, DefaultKeepaliveMinTime)
	return l
}

// Validate checks limits with their defaults applied.
func (l Limits) Validate() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"handshake timeout", l.HandshakeTimeout}, {"idle timeout", l.IdleTimeout}, {"keepalive time", l.KeepaliveTime},
		{"keepalive timeout", l.KeepaliveTimeout}, {"keepalive min time", l.KeepaliveMinTime}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %s: want a positive duration", d.name, d.v))
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"max connections per source", l.MaxConnsPerSource}, {"max connections", l.MaxConns},
		{"max unauthenticated connections", l.MaxUnauthenticatedConns}, {"max concurrent streams", l.MaxConcurrentStreams}} {
		if n.v <= 0 {
			errs = append(errs, fmt.Errorf("%s %d: want a positive number", n.name, n.v))
		}
	}
	if l.MaxConnsPerSource > l.MaxConns || l.MaxUnauthenticatedConns > l.MaxConns {
		errs = append(errs, fmt.Errorf("max connections per source %d and max unauthenticated connections %d: want neither above max connections %d",
			l.MaxConnsPerSource, l.MaxUnauthenticatedConns, l.MaxConns))
	}
	return errors.Join(errs...)
}

// serverOptions are the gRPC options that enforce l.
func (l Limits) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ConnectionTimeout(l.HandshakeTimeout),
		grpc.MaxConcurrentStreams(uint32(l.MaxConcurrentStreams)),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: l.KeepaliveTime, Timeout: l.KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.KeepaliveMinTime, PermitWithoutStream: true}),
	}
}

// connMetrics count what the connection limits did.
type connMetrics struct {
	refused *prometheus.CounterVec
	closed  *prometheus.CounterVec
}

func (s *Server) registerConnMetrics() {
	m := &connMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_controlplane_connections_refused_total",
			Help: "Connections refused at accept, by listener (agent, metrics) and reason (per_source, total, unauthenticated_full).",
		}, []string{"listener", "reason"}),
		closed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "confmesh_controlplane_connections_closed_total",
			Help: "Unauthenticated connections the control plane closed, by listener (agent, metrics) and reason (idle, evicted).",
		}, []string{"listener", "reason"}),
	}
	for _, r := range []string{refusedPerSource, connlimit.ReasonTotal, connpool.RefusedUnauthenticated} {
		m.refused.WithLabelValues("agent", r)
	}
	for _, r := range []string{connpool.ClosedIdle, connpool.ClosedEvicted} {
		m.closed.WithLabelValues("agent", r)
	}
	s.metrics.reg.MustRegister(m.refused, m.closed)
	const heldHelp = "Agent-listener connections held, by state (authenticated: carried a call with a valid node SVID)."
	s.metrics.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "confmesh_controlplane_connections", Help: heldHelp, ConstLabels: prometheus.Labels{"state": "unauthenticated"}},
			func() float64 { return float64(s.ConnStats().Unauthenticated) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "confmesh_controlplane_connections", Help: heldHelp, ConstLabels: prometheus.Labels{"state": "authenticated"}},
			func() float64 { st := s.ConnStats(); return float64(st.Total - st.Unauthenticated) }),
	)
	s.connm = m
}

// refusedPerSource is the metrics' name for connlimit's per-key cap: the
// key is the source (connlimit.Source).
const refusedPerSource = "per_source"

// capped wraps lis in the caps per source and in total (connlimit, refused
// at accept) and the unauthenticated pool (connpool), counting refusals
// and closes under listener's label.
func (s *Server) capped(lis net.Listener, listener string, perSource, total, unauth int, idle time.Duration) (*connpool.Listener, error) {
	refused := func(reason string) { s.connm.refused.WithLabelValues(listener, reason).Inc() }
	caps := connlimit.New(lis, connlimit.Config{
		Key:    connlimit.BySource,
		PerKey: perSource, Total: total,
		OnRefuse: func(_, reason string) {
			if reason == connlimit.ReasonPerKey {
				reason = refusedPerSource
			}
			refused(reason)
		},
	})
	return connpool.New(caps, connpool.Config{
		MaxUnauthenticated: unauth, IdleTimeout: idle,
		Refused: refused,
		Closed:  func(reason string) { s.connm.closed.WithLabelValues(listener, reason).Inc() },
	})
}

// limitListener wraps the agent listener in the connection limits.
func (s *Server) limitListener(lis net.Listener) (*connpool.Listener, error) {
	l := s.cfg.Limits
	cl, err := s.capped(lis, "agent", l.MaxConnsPerSource, l.MaxConns, l.MaxUnauthenticatedConns, l.IdleTimeout)
	if err != nil {
		return nil, err
	}
	s.conns.Store(cl)
	return cl, nil
}

// LimitMetricsListener wraps the metrics listener (HTTPHandler's) in
// caps: maxConns in all, perSource from one source, refused at accept
// and counted; when full, a newcomer from a source holding fewer
// connections displaces the heaviest source's oldest, so a flood from
// many addresses cannot lock the scraper out. Idle and slow clients are
// the HTTP server's to time out (MetricsServer).
func (s *Server) LimitMetricsListener(lis net.Listener, maxConns, perSource int) (net.Listener, error) {
	if maxConns < 1 || perSource < 1 || perSource > maxConns {
		return nil, fmt.Errorf("metrics listener: max connections %d, per source %d: want positive values, per source at most the total", maxConns, perSource)
	}
	// The total cap sits one above the pool, so that when the pool is
	// full a newcomer reaches it and may displace the heaviest source.
	return s.capped(lis, "metrics", perSource, maxConns+1, maxConns, 0)
}

// MetricsServer serves HTTPHandler with timeouts: a request's headers
// must arrive within 10 s and the whole request within 30 s, a response
// is written within 30 s, and a keep-alive connection idle for 60 s is
// closed.
func (s *Server) MetricsServer() *http.Server {
	return &http.Server{Handler: s.HTTPHandler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 60 * time.Second}
}

// ConnStats are the agent listener's connections now (zero before Serve).
func (s *Server) ConnStats() connpool.Stats {
	if cl := s.conns.Load(); cl != nil {
		return cl.Stats()
	}
	return connpool.Stats{}
}

// connTouch restarts the idle clock of the call's connection.
func (s *Server) connTouch(ctx context.Context) {
	if cl := s.conns.Load(); cl != nil {
		if p, ok := peer.FromContext(ctx); ok {
			cl.Touch(p.Addr, p.LocalAddr)
		}
	}
}

// connAuthenticated exempts the call's connection from the idle timeout
// and from eviction: a node passed authentication on it.
func (s *Server) connAuthenticated(ctx context.Context) {
	if cl := s.conns.Load(); cl != nil {
		if p, ok := peer.FromContext(ctx); ok {
			cl.Authenticated(p.Addr, p.LocalAddr)
		}
	}
}

// touchUnary and touchStream restart the idle clock of a connection when
// a call starts on it (after the rate limiter let it through).
func (s *Server) touchUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	s.connTouch(ctx)
	return handler(ctx, req)
}

func (s *Server) touchStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	s.connTouch(ss.Context())
	return handler(srv, ss)
}
