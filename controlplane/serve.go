package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Admin credential files written into the admin directory.
const (
	AdminCertFile   = "admin.crt"
	AdminKeyFile    = "admin.key"
	AdminBundleFile = "bundle.crt"
	adminTTL        = 365 * 24 * time.Hour
	maxRecvMsgSize  = 256 << 10
)

func (s *Server) tlsConfig(clientAuth tls.ClientAuthType) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.Certificate())
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{s.tlsCert.Raw}, PrivateKey: s.tlsKey, Leaf: s.tlsCert}},
		ClientAuth:   clientAuth,
		ClientCAs:    pool,
	}
}

// Serve runs the agent-facing gRPC service on lis until ctx ends. Client
// certificates are optional at the TLS layer (Challenge and Join come
// before a node has one); every other call checks for a node SVID.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	// Connections beyond the per-source and total caps are refused at
	// accept; unauthenticated ones are bounded and time out (limits.go).
	cl, err := s.limitListener(lis)
	if err != nil {
		return err
	}
	opts := append(s.cfg.Limits.serverOptions(),
		grpc.Creds(credentials.NewTLS(s.tlsConfig(tls.VerifyClientCertIfGiven))),
		// Evidence, CSRs and names are small; refuse oversized messages early.
		grpc.MaxRecvMsgSize(maxRecvMsgSize),
		// Challenge and Join are open to anyone: charge each source first;
		// a call let through restarts its connection's idle clock.
		grpc.ChainUnaryInterceptor(s.limitInterceptor, s.touchUnary),
		grpc.StreamInterceptor(s.touchStream),
		// Watch events go out pre-encoded, once for every watcher.
		grpc.ForceServerCodecV2(newWireCodec()),
		// With a thousand agents' streams open, a 32 KiB write buffer per
		// connection that sits idle between deltas is most of the memory:
		// take one from a pool for each flush instead.
		grpc.SharedWriteBuffer(true),
		// Agents send little (a join's evidence is a few KiB, watchers
		// send nothing): a small read buffer per connection does.
		grpc.ReadBufferSize(4<<10),
	)
	g := grpc.NewServer(opts...)
	cpv1.RegisterControlPlaneServer(g, s)
	return s.serve(ctx, g, cl, true)
}

// ServeAdmin runs the Admin service on lis (a local unix socket) until ctx
// ends; every client must present the admin credential.
func (s *Server) ServeAdmin(ctx context.Context, lis net.Listener) error {
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(s.tlsConfig(tls.RequireAndVerifyClientCert))))
	cpv1.RegisterAdminServer(g, &adminServer{s: s})
	return s.serve(ctx, g, lis, false)
}

func (s *Server) serve(ctx context.Context, g *grpc.Server, lis net.Listener, markReady bool) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			if markReady {
				// Watch streams never end on their own: end them first so
				// GracefulStop finishes the unary calls and returns at once.
				s.stopWatches()
			}
			stopped := make(chan struct{})
			go func() { g.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(5 * time.Second):
				g.Stop()
			}
		case <-done:
		}
	}()
	if markReady {
		s.metrics.ready.Store(true)
		defer s.metrics.ready.Store(false)
	}
	if err := g.Serve(lis); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}

// WriteAdminCredential issues an admin certificate and writes it, its key
// (0600) and the trust bundle into dir, for `confmesh nodes`. An existing
// credential that is valid for more than a day is kept.
func (s *Server) WriteAdminCredential(dir string) error {
	certPath := filepath.Join(dir, AdminCertFile)
	if data, err := os.ReadFile(certPath); err == nil {
		if b, _ := pem.Decode(data); b != nil {
			_, keyErr := tls.LoadX509KeyPair(certPath, filepath.Join(dir, AdminKeyFile))
			if c, err := x509.ParseCertificate(b.Bytes); err == nil && keyErr == nil && c.NotAfter.After(s.now().Add(24*time.Hour)) &&
				c.CheckSignatureFrom(s.ca.Certificate()) == nil {
				return s.writeBundle(dir)
			}
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	cert, err := s.ca.IssueSVID(identity.IssueRequest{PublicKey: key.Public(), ID: identity.AdminID(s.td), TTL: adminTTL, Now: s.now()})
	if err != nil {
		return fmt.Errorf("issue admin credential: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, AdminKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		return err
	}
	return s.writeBundle(dir)
}

func (s *Server) writeBundle(dir string) error {
	return os.WriteFile(filepath.Join(dir, AdminBundleFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.ca.Certificate().Raw}), 0o644)
}
