package controlplane_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Shared simulated root: RSA key generation is the slow part.
var (
	simOnce  sync.Once
	simCA    *sim.CA
	otherCA  *sim.CA
	simRoot  string
	simErr   error
	goodMeas = bytes.Repeat([]byte{0x11}, 48)
	altMeas  = bytes.Repeat([]byte{0x22}, 48)
	quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
)

func simFixture(t testing.TB) {
	t.Helper()
	simOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confmesh-cp-test-")
		if err != nil {
			simErr = err
			return
		}
		if simCA, simErr = sim.NewTestCA(""); simErr != nil {
			return
		}
		if simErr = simCA.Save(filepath.Join(dir, "ca")); simErr != nil {
			return
		}
		simRoot = simCA.RootPath()
		otherCA, simErr = sim.NewTestCA("")
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
}

func policy(measurements ...[]byte) *attest.Policy {
	p := &attest.Policy{
		TrustDomain:    "cluster.test",
		AllowedVMPLs:   []uint32{0},
		MaxEvidenceAge: attest.Duration(30 * time.Minute),
		TrustedRoots:   []attest.RootRef{{Kind: attest.RootSimulated, File: simRoot}},
	}
	for _, m := range measurements {
		p.Measurements = append(p.Measurements, m)
	}
	return p
}

func simNode(t testing.TB, cfg sim.NodeConfig) *sim.Node {
	t.Helper()
	if cfg.Measurement == nil {
		cfg.Measurement = goodMeas
	}
	n, err := simCA.NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// cp is one running control plane.
type cp struct {
	srv       *controlplane.Server
	addr      string
	adminSock string
	adminDir  string
	dbPath    string
	store     store.Store
	cancel    context.CancelFunc
	done      chan struct{}
}

type cpOptions struct {
	policy   *attest.Policy
	provider attest.Provider
	dir      string
	addr     string
	now      func() time.Time
}

func startCP(t testing.TB, o cpOptions) *cp {
	t.Helper()
	simFixture(t)
	if o.policy == nil {
		o.policy = policy(goodMeas)
	}
	if o.provider == nil {
		o.provider = simNode(t, sim.NodeConfig{})
	}
	if o.dir == "" {
		o.dir = t.TempDir()
	}
	if o.addr == "" {
		o.addr = "127.0.0.1:0"
	}
	db := filepath.Join(o.dir, "state.db")
	st, err := store.OpenBolt(db)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := controlplane.New(controlplane.Config{
		Policy: o.policy, Provider: o.provider, Store: st, Logger: quietLog, Now: o.now,
		ClusterCIDR: "10.244.0.0/16", NodePrefixLen: 24, SweepInterval: time.Hour,
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", o.addr)
	if err != nil {
		t.Fatal(err)
	}
	adminSock := filepath.Join(o.dir, "admin.sock")
	os.Remove(adminSock)
	alis, err := net.Listen("unix", adminSock)
	if err != nil {
		t.Fatal(err)
	}
	adminDir := filepath.Join(o.dir, "admin")
	if err := srv.WriteAdminCredential(adminDir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &cp{srv: srv, addr: lis.Addr().String(), adminSock: adminSock, adminDir: adminDir, dbPath: db, store: st, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, lis) }()
	go func() { defer wg.Done(); _ = srv.ServeAdmin(ctx, alis) }()
	go func() { wg.Wait(); close(c.done) }()
	t.Cleanup(c.stop)
	return c
}

// stop shuts the control plane down and closes its store (idempotent).
func (c *cp) stop() {
	c.cancel()
	<-c.done
	c.store.Close()
}

// agent is an in-process agent: a simulated TEE, keys and a policy.
type agent struct {
	name     string
	node     *sim.Node
	wgKey    []byte
	svidKey  crypto.Signer
	verifier *attest.Verifier
	td       spiffeid.TrustDomain

	joined *cpv1.JoinResponse
	svid   [][]byte
}

func newAgent(t testing.TB, name string, node *sim.Node, p *attest.Policy) *agent {
	t.Helper()
	if p == nil {
		p = policy(goodMeas)
	}
	v, err := attest.NewVerifier(p, attest.Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	rand.Read(wg)
	return &agent{name: name, node: node, wgKey: wg, svidKey: key, verifier: v, td: spiffeid.RequireTrustDomainFromString(p.TrustDomain)}
}

func (a *agent) nodeSpec() cpclient.Node {
	return cpclient.Node{Name: a.name, Endpoint: "198.18.0.1:51820", WireGuardKey: a.wgKey, SVIDKey: a.svidKey, Provider: a.node}
}

func (a *agent) dial(t testing.TB, c *cp) (*cpclient.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := cpclient.Config{Addr: c.addr, Verifier: a.verifier, TrustDomain: a.td}
	if a.joined != nil {
		b, err := cpclient.ParseBundle(a.td, a.joined.TrustBundle)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Bundle = b
		cfg.ClientCertificate = func() (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: a.svid, PrivateKey: a.svidKey}, nil
		}
	}
	return cpclient.Dial(ctx, cfg)
}

// join dials and joins, failing the test on error.
func (a *agent) join(t testing.TB, c *cp) *cpv1.JoinResponse {
	t.Helper()
	resp, err := a.tryJoin(t, c)
	if err != nil {
		t.Fatalf("%s: join: %v", a.name, err)
	}
	return resp
}

func (a *agent) tryJoin(t testing.TB, c *cp) (*cpv1.JoinResponse, error) {
	t.Helper()
	conn, err := a.dial(t, c)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := conn.Join(ctx, a.nodeSpec())
	if err != nil {
		return nil, err
	}
	a.joined, a.svid = resp, resp.Svid
	return resp, nil
}

// mtls returns a connection authenticated with the node SVID.
func (a *agent) mtls(t testing.TB, c *cp) *cpclient.Conn {
	t.Helper()
	if a.joined == nil {
		t.Fatalf("%s has not joined", a.name)
	}
	conn, err := a.dial(t, c)
	if err != nil {
		t.Fatalf("%s: mTLS dial: %v", a.name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func (a *agent) bundle(t testing.TB) *x509bundle.Bundle {
	b, err := cpclient.ParseBundle(a.td, a.joined.TrustBundle)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// watcher collects a Watch stream's events.
type watcher struct {
	mu     sync.Mutex
	events []*cpv1.WatchEvent
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

func watch(t testing.TB, conn *cpclient.Conn, from uint64) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{Revision: from})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &watcher{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		for {
			ev, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			w.events = append(w.events, ev)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// waitFor polls the collected events until cond holds or 10 s pass.
func (w *watcher) waitFor(t testing.TB, what string, cond func(evs []*cpv1.WatchEvent, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		evs := append([]*cpv1.WatchEvent(nil), w.events...)
		err := w.err
		w.mu.Unlock()
		if cond(evs, err) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Fatalf("timed out waiting for %s; events %v err %v", what, w.events, w.err)
}

// peers folds events into the current peer set, as an agent would.
func peers(evs []*cpv1.WatchEvent) map[string]*cpv1.Peer {
	set := map[string]*cpv1.Peer{}
	for _, ev := range evs {
		switch e := ev.Event.(type) {
		case *cpv1.WatchEvent_Snapshot:
			set = map[string]*cpv1.Peer{}
			for _, p := range e.Snapshot.Peers {
				set[p.Name] = p
			}
		case *cpv1.WatchEvent_Upsert:
			set[e.Upsert.Name] = e.Upsert
		case *cpv1.WatchEvent_Delete:
			delete(set, e.Delete)
		}
	}
	return set
}

func lastRevision(evs []*cpv1.WatchEvent) uint64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Revision
}

// adminClient connects to the admin socket with the credential the control
// plane wrote.
func adminClient(t testing.TB, c *cp) cpv1.AdminClient {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.adminDir, controlplane.AdminCertFile), filepath.Join(c.adminDir, controlplane.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return adminClientWith(t, c, &cert)
}

func adminClientWith(t testing.TB, c *cp, cert *tls.Certificate) cpv1.AdminClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.srv.CA().Certificate())
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "confmesh-controlplane",
		Certificates: []tls.Certificate{*cert},
		// The admin socket is local; the server certificate is checked against the CA.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if err := leaf.CheckSignatureFrom(c.srv.CA().Certificate()); err != nil {
				return fmt.Errorf("admin socket server is not this control plane: %w", err)
			}
			return nil
		},
	}
	cc, err := grpc.NewClient("unix://"+c.adminSock, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cpv1.NewAdminClient(cc)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var _ = errors.Is
