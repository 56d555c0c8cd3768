package workload

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Defaults of Limits. The Workload API socket is open to every process on
// the node (0666), so without them one pod can open connections until the
// agent runs out of file descriptors, and with them the agent's own work
// (nftables, netlink, the datapath, the CNI socket).
const (
	// DefaultMaxConnsPerCaller: a SPIFFE client holds one connection; a
	// pod with a few containers, each with a client or two, stays far
	// below.
	DefaultMaxConnsPerCaller = 32
	// DefaultMaxConns bounds every caller together.
	DefaultMaxConns = 2048
	// DefaultFDShare: whatever DefaultMaxConns says, the Workload API
	// never holds more than a quarter of the agent's RLIMIT_NOFILE.
	DefaultFDShare = 0.25
	// DefaultIdleTimeout closes a connection with no RPC in progress for
	// this long. A FetchX509SVID or FetchJWTBundles stream is an RPC in
	// progress for as long as the client watches, so honest watchers are
	// never cut; a client that only makes unary calls reconnects
	// transparently at its next call.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultHandshakeTimeout closes a connection that has not completed
	// the HTTP/2 handshake in this time (a connection that sends nothing).
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxStreamsPerConn bounds concurrent RPCs on one connection.
	DefaultMaxStreamsPerConn = 16
)

// Limits bound the connections the Workload API server holds. Zero fields
// take the defaults; a negative cap or timeout switches it off.
type Limits struct {
	// MaxConnsPerCaller is the most connections one caller may hold open.
	// A caller is a network namespace (a pod); in the host's namespace,
	// each uid is a caller of its own.
	MaxConnsPerCaller int
	// MaxConns is the most connections all callers together may hold.
	MaxConns int
	// FDShare lowers MaxConns to this share of the process's
	// RLIMIT_NOFILE (re-read at every accept).
	FDShare float64
	// IdleTimeout closes connections with no RPC in progress for this long.
	IdleTimeout time.Duration
	// HandshakeTimeout closes connections that have not completed the
	// HTTP/2 handshake in this time.
	HandshakeTimeout time.Duration
	// MaxStreamsPerConn bounds concurrent RPCs on one connection.
	MaxStreamsPerConn int
}

// withDefaults fills zero fields; negative ones become 0 (off).
func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		} else if *v < 0 {
			*v = 0
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		} else if *v < 0 {
			*v = 0
		}
	}
	def(&l.MaxConnsPerCaller, DefaultMaxConnsPerCaller)
	def(&l.MaxConns, DefaultMaxConns)
	def(&l.MaxStreamsPerConn, DefaultMaxStreamsPerConn)
	defDur(&l.IdleTimeout, DefaultIdleTimeout)
	defDur(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	if l.FDShare == 0 {
		l.FDShare = DefaultFDShare
	} else if l.FDShare < 0 {
		l.FDShare = 0
	}
	return l
}

// Validate refuses limits that make no sense (with the defaults filled in).
func (l Limits) Validate() error {
	l = l.withDefaults()
	if l.FDShare > 1 {
		return fmt.Errorf("workload API: file-descriptor share %v is more than 1", l.FDShare)
	}
	if l.MaxConnsPerCaller > 0 && l.MaxConns > 0 && l.MaxConnsPerCaller > l.MaxConns {
		return fmt.Errorf("workload API: per-caller connection cap %d is above the total cap %d", l.MaxConnsPerCaller, l.MaxConns)
	}
	return nil
}

// serverOptions are the gRPC options that enforce l's timeouts and stream cap.
func (l Limits) serverOptions() []grpc.ServerOption {
	var opts []grpc.ServerOption
	if l.HandshakeTimeout > 0 {
		opts = append(opts, grpc.ConnectionTimeout(l.HandshakeTimeout))
	}
	if l.IdleTimeout > 0 {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: l.IdleTimeout}))
	}
	if l.MaxStreamsPerConn > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(uint32(l.MaxStreamsPerConn)))
	}
	return opts
}

// ConnStats are the Workload API's connection counts.
type ConnStats = connlimit.Stats

// ConnStats returns the server's connection counts (zero before Serve).
func (s *Server) ConnStats() ConnStats {
	s.mu.Lock()
	l := s.lim
	s.mu.Unlock()
	if l == nil {
		return ConnStats{Refused: map[string]uint64{}}
	}
	return l.Stats()
}

// limit wraps lis with the connection caps.
func (s *Server) limit(lis net.Listener) *connlimit.Listener {
	host, err := s.proc.NetNSOfPath(s.cfg.HostNetNS)
	if err != nil {
		s.log.Warn("workload API: host network namespace unknown; host callers share one connection cap", "err", err)
	}
	l := connlimit.New(lis, connlimit.Config{
		Key:     func(c net.Conn) string { return CallerKey(s.proc, host, c) },
		PerKey:  s.limits.MaxConnsPerCaller,
		Total:   s.limits.MaxConns,
		FDShare: s.limits.FDShare,
		OnRefuse: func(key, reason string) {
			s.mu.Lock()
			quiet := !s.refusedLogged.IsZero() && s.now().Sub(s.refusedLogged) < time.Minute
			if !quiet {
				s.refusedLogged = s.now()
			}
			s.mu.Unlock()
			if !quiet {
				s.log.Warn("workload API: refusing connections over a cap (logged at most once a minute; confmesh_agent_workload_connections_refused_total counts them)",
					"caller", key, "cap", reason, "perCaller", s.limits.MaxConnsPerCaller, "total", s.limits.MaxConns)
			}
		},
	})
	s.mu.Lock()
	s.lim = l
	s.mu.Unlock()
	return l
}

// CallerKey names the caller behind a Workload API connection for the
// per-caller cap: its network namespace (a pod), or in the host's
// namespace host (zero: unknown) its uid. It reads only the kernel's
// SO_PEERCRED and /proc; a caller whose namespace cannot be read is keyed
// by its uid.
func CallerKey(p Proc, host NetNSID, c net.Conn) string {
	cred, err := peerCred(c)
	if err != nil {
		return "unidentified"
	}
	ns, err := p.NetNS(cred.Pid)
	switch {
	case err != nil:
		return fmt.Sprintf("uid:%d", cred.Uid)
	case ns == host:
		return fmt.Sprintf("host uid:%d", cred.Uid)
	default:
		return ns.String()
	}
}

func peerCred(c net.Conn) (*unix.Ucred, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a unix socket")
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, credErr
}
