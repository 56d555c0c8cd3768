// Package workload serves the SPIFFE Workload API on a unix socket: pods on
// this node fetch their X.509-SVIDs, JWT-SVIDs and the trust bundles with any
// SPIFFE client (go-spiffe's workloadapi, SPIRE's tooling, Envoy SDS
// adapters that speak the Workload API).
//
// A caller is identified without trusting anything it says: the kernel's
// SO_PEERCRED gives the pid that connected, /proc/<pid>/ns/net its network
// namespace, and the pod whose network namespace the CNI plugin registered
// is the caller's pod. The process's start time, read at accept and again
// after the namespace lookup, guards against PID reuse. Processes in the
// agent's own (host) network namespace get no identity unless configured.
//
// The SVIDs are signed by the control plane (SignWorkload, SignJWT), which
// only signs for pods the calling node registered. Keys are generated here,
// per pod, and never leave the node except to the workload.
package workload

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Defaults.
const (
	// DefaultHostNetNS is the network namespace that counts as "the host":
	// the agent's own (it runs with hostNetwork).
	DefaultHostNetNS = "/proc/self/ns/net"
	// DefaultRotationCheck is how often SVIDs are checked for half-life and
	// bundles for changes.
	DefaultRotationCheck = 5 * time.Second
	// SecurityHeader is the metadata key every Workload API request must
	// carry with the value "true" (SPIFFE Workload API specification).
	SecurityHeader = "workload.spiffe.io"
)

// Pod is a pod the CNI plugin registered on this node.
type Pod struct {
	UID            string
	Namespace      string
	Name           string
	ServiceAccount string
	// Netns is the path of the pod's network namespace (the bind mount the
	// container runtime passed to the CNI plugin).
	Netns string
}

func (p Pod) String() string { return p.Namespace + "/" + p.Name + " (uid " + p.UID + ")" }

// Backend is what the server needs from the agent.
type Backend interface {
	// Pods lists the pods registered on this node.
	Pods() ([]Pod, error)
	// SignX509 has the control plane sign csr (DER PKCS#10) as pod's
	// X.509-SVID and returns the chain, leaf first, DER.
	SignX509(ctx context.Context, pod Pod, csr []byte) ([][]byte, error)
	// SignJWT has the control plane issue a JWT-SVID of pod for audience.
	SignJWT(ctx context.Context, pod Pod, audience []string) (string, error)
	// X509Bundle is the trust domain's X.509 bundle (nil before joining).
	X509Bundle() *x509bundle.Bundle
	// JWTBundle is the trust domain's JWT bundle (nil before joining).
	JWTBundle() *jwtbundle.Bundle
}

// Config configures a Server.
type Config struct {
	Backend     Backend
	TrustDomain spiffeid.TrustDomain
	// Proc reads the process table; HostProc{} when nil.
	Proc Proc
	// HostNetNS is the path of the network namespace treated as the host's
	// (DefaultHostNetNS when empty). Callers in it get no identity unless
	// their uid is in HostUIDs.
	HostNetNS string
	// HostUIDs maps the uid of a host-namespace caller to the UID of a
	// registered pod whose identity it receives. Empty: host processes are
	// denied.
	HostUIDs map[uint32]string
	// RotationCheck is how often SVIDs are checked for half-life and bundles
	// for changes (DefaultRotationCheck when zero).
	RotationCheck time.Duration
	// Limits bound the connections the server holds (zero: the defaults).
	Limits Limits
	Logger *slog.Logger
	Now    func() time.Time
}

// Server is the Workload API server.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	cfg    Config
	log    *slog.Logger
	now    func() time.Time
	proc   Proc
	limits Limits // cfg.Limits with the defaults filled in

	mu            sync.Mutex
	svids         map[string]*svidEntry // by pod UID
	jwts          map[string]jwtEntry
	x509Bundle    *x509bundle.Bundle
	jwtBundle     *jwtbundle.Bundle
	bundleChanged chan struct{}       // closed and replaced on every bundle change
	lim           *connlimit.Listener // set by Serve
	refusedLogged time.Time           // when a refused connection was last logged
}

// New makes a Server; see Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("workload API: Backend is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("workload API: TrustDomain is required")
	}
	if cfg.Proc == nil {
		cfg.Proc = HostProc{}
	}
	if cfg.HostNetNS == "" {
		cfg.HostNetNS = DefaultHostNetNS
	}
	if cfg.RotationCheck <= 0 {
		cfg.RotationCheck = DefaultRotationCheck
	}
	limits := cfg.Limits.withDefaults()
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	s := &Server{
		cfg: cfg, log: log, now: now, proc: cfg.Proc, limits: limits,
		svids: map[string]*svidEntry{}, jwts: map[string]jwtEntry{}, bundleChanged: make(chan struct{}),
	}
	s.x509Bundle, s.jwtBundle = cfg.Backend.X509Bundle(), cfg.Backend.JWTBundle()
	return s, nil
}

// Listen creates the unix socket at path (its directory 0755, the socket
// 0666: every local process may ask, the kernel tells who asked), replacing
// a stale socket but not one another process still serves.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("workload API socket dir: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("workload API socket %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("workload API socket %s is served by another process", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("workload API socket: %w", err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		lis.Close()
		return nil, err
	}
	return lis, nil
}

// Serve serves the Workload API on lis (a unix listener) until ctx ends,
// and rotates SVIDs and pushes bundle changes meanwhile. Connections are
// bounded by Config.Limits.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	lis = s.limit(lis)
	g := grpc.NewServer(append(s.limits.serverOptions(),
		grpc.Creds(newPeerCredCreds(s.proc)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := checkHeader(ctx); err != nil {
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := checkHeader(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	)...)
	workload.RegisterSpiffeWorkloadAPIServer(g, s)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		g.Stop()
	}()
	go func() {
		defer wg.Done()
		s.rotateLoop(ctx)
	}()
	err := g.Serve(lis)
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// ServeUnix listens on path (see Listen) and serves until ctx ends.
func (s *Server) ServeUnix(ctx context.Context, path string) error {
	lis, err := Listen(path)
	if err != nil {
		return err
	}
	s.log.Info("SPIFFE Workload API listening", "socket", path)
	return s.Serve(ctx, lis)
}

// checkHeader enforces the Workload API's security header.
func checkHeader(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(SecurityHeader) {
		if v == "true" {
			return nil
		}
	}
	return status.Errorf(codes.InvalidArgument, "security header missing from request: Workload API calls must carry the gRPC metadata %q: \"true\"", SecurityHeader)
}

func (s *Server) rotateLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.RotationCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.UpdateBundles()
		s.rotate(ctx)
	}
}

// UpdateBundles re-reads the trust bundles from the backend and pushes them
// to every open stream if they changed. The agent calls it after joining
// and renewing; the rotation loop calls it too.
func (s *Server) UpdateBundles() {
	xb, jb := s.cfg.Backend.X509Bundle(), s.cfg.Backend.JWTBundle()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sameX509(xb, s.x509Bundle) && sameJWT(jb, s.jwtBundle) {
		return
	}
	s.x509Bundle, s.jwtBundle = xb, jb
	close(s.bundleChanged)
	s.bundleChanged = make(chan struct{})
	s.log.Info("trust bundles changed; pushing to workloads")
}

func sameX509(a, b *x509bundle.Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

func sameJWT(a, b *jwtbundle.Bundle) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(b)
}

// bundles returns the current bundles and the channel closed on their next change.
func (s *Server) bundles() (*x509bundle.Bundle, *jwtbundle.Bundle, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.x509Bundle, s.jwtBundle, s.bundleChanged
}

// caller identifies the pod behind the request.
func (s *Server) caller(ctx context.Context) (Pod, spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Pod{}, spiffeid.ID{}, status.Error(codes.PermissionDenied, "no peer information: the caller cannot be identified")
	}
	cred, ok := p.AuthInfo.(PeerCred)
	if !ok {
		return Pod{}, spiffeid.ID{}, status.Error(codes.PermissionDenied, "the caller cannot be identified: no unix socket peer credentials")
	}
	pod, err := s.identify(cred)
	if err != nil {
		s.log.Debug("workload API caller denied", "pid", cred.PID, "uid", cred.UID, "err", err)
		return Pod{}, spiffeid.ID{}, err
	}
	id, err := workloadID(s.cfg.TrustDomain, pod)
	if err != nil {
		return Pod{}, spiffeid.ID{}, status.Errorf(codes.PermissionDenied, "pod %s has no valid identity: %v", pod, err)
	}
	return pod, id, nil
}

func denied(format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, format, args...)
}

// identify maps peer credentials to a registered pod: pid -> network
// namespace -> the pod registered with that namespace. The process's start
// time must be the same at the handshake, before the namespace is read and
// after it (CallerNetNS); otherwise the pid may have been reused by another
// process and the caller is denied.
func (s *Server) identify(cred PeerCred) (Pod, error) {
	ns, err := CallerNetNS(s.proc, cred)
	if err != nil {
		return Pod{}, denied("%v", err)
	}
	return s.podOf(cred, ns)
}

// podOf finds the pod registered with network namespace ns.
func (s *Server) podOf(cred PeerCred, ns NetNSID) (Pod, error) {
	pods, err := s.cfg.Backend.Pods()
	if err != nil {
		return Pod{}, status.Errorf(codes.Unavailable, "list pods: %v", err)
	}
	host, err := s.proc.NetNSOfPath(s.cfg.HostNetNS)
	if err != nil {
		return Pod{}, status.Errorf(codes.Internal, "host network namespace %s: %v", s.cfg.HostNetNS, err)
	}
	if ns == host {
		uid, ok := s.cfg.HostUIDs[cred.UID]
		if !ok {
			return Pod{}, denied("caller pid %d (uid %d) runs in the host network namespace; host processes get no workload identity unless configured", cred.PID, cred.UID)
		}
		for _, p := range pods {
			if p.UID == uid {
				return p, nil
			}
		}
		return Pod{}, denied("host uid %d is mapped to pod uid %s, which is not registered on this node", cred.UID, uid)
	}
	var found []Pod
	for _, p := range pods {
		if p.Netns == "" {
			continue
		}
		pns, err := s.proc.NetNSOfPath(p.Netns)
		if err != nil {
			continue // the pod's namespace is gone
		}
		if pns == ns {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return Pod{}, denied("caller pid %d runs in network namespace %s, which no pod registered on this node uses", cred.PID, ns)
	case 1:
		return found[0], nil
	default:
		return Pod{}, denied("caller pid %d: network namespace %s is registered for %d pods (%s, %s); refusing to guess", cred.PID, ns, len(found), found[0], found[1])
	}
}

// bundleDER concatenates the DER of the bundle's authorities (the Workload
// API's bundle encoding).
func bundleDER(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw...)
	}
	return out
}

func chainDER(chain []*x509.Certificate) []byte {
	var out []byte
	for _, c := range chain {
		out = append(out, c.Raw...)
	}
	return out
}
