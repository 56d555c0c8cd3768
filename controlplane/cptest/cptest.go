// Package cptest runs a confmesh control plane in-process, with simulated
// TEEs, and in-process agents that attest to it and join it over the real
// gRPC API (agent/cpclient). It is a helper for tests, of the control plane
// and of the packages that talk to it; only _test.go files should import it.
package cptest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

var (
	// TrustDomain is the trust domain of Policy.
	TrustDomain = spiffeid.RequireTrustDomainFromString("cluster.test")
	// GoodMeasurement is the launch measurement SimNode gives by default
	// and Start's default policy allows.
	GoodMeasurement = bytes.Repeat([]byte{0x11}, 48)
	// AltMeasurement is a second launch measurement, not in Start's default
	// policy.
	AltMeasurement = bytes.Repeat([]byte{0x22}, 48)
	// QuietLog discards everything.
	QuietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
)

// The simulated roots, made once per test binary: RSA key generation is the
// slow part.
var (
	simOnce sync.Once
	simCA   *sim.CA
	simErr  error

	otherOnce sync.Once
	otherCA   *sim.CA
	otherErr  error
)

// SimCA returns the simulated CA whose root Policy trusts. Its files live
// in a temporary directory that outlives the test (it is shared).
func SimCA(t testing.TB) *sim.CA {
	t.Helper()
	simOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confmesh-cptest-")
		if err != nil {
			simErr = err
			return
		}
		if simCA, simErr = sim.NewTestCA(""); simErr != nil {
			return
		}
		simErr = simCA.Save(filepath.Join(dir, "ca"))
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
	return simCA
}

// OtherCA returns a second simulated CA, one no policy here trusts.
func OtherCA(t testing.TB) *sim.CA {
	t.Helper()
	otherOnce.Do(func() { otherCA, otherErr = sim.NewTestCA("") })
	if otherErr != nil {
		t.Fatal(otherErr)
	}
	return otherCA
}

// Policy returns a policy for TrustDomain that trusts SimCA's root, VMPL 0
// only, and allows the given launch measurements for nodes and
// GoodMeasurement (what Start's default control plane reports) for the
// control plane.
func Policy(t testing.TB, measurements ...[]byte) *attest.Policy {
	t.Helper()
	p := &attest.Policy{
		TrustDomain:    TrustDomain.Name(),
		AllowedVMPLs:   []uint32{0},
		MaxEvidenceAge: attest.Duration(30 * time.Minute),
		TrustedRoots:   []attest.RootRef{{Kind: attest.RootSimulated, File: SimCA(t).RootPath()}},
		ControlPlane:   &attest.ControlPlanePolicy{Measurements: []attest.HexBytes{GoodMeasurement}},
	}
	for _, m := range measurements {
		p.Measurements = append(p.Measurements, m)
	}
	return p
}

// SimNode returns a simulated TEE of SimCA; cfg.Measurement defaults to
// GoodMeasurement.
func SimNode(t testing.TB, cfg sim.NodeConfig) *sim.Node {
	t.Helper()
	if cfg.Measurement == nil {
		cfg.Measurement = GoodMeasurement
	}
	n, err := SimCA(t).NewNode(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Options configure Start; the zero value is a working control plane.
type Options struct {
	// Policy defaults to Policy(t, GoodMeasurement).
	Policy *attest.Policy
	// Provider is the control plane's own TEE; default SimNode(t, {}).
	Provider attest.Provider
	// Dir holds the store (state.db), the admin socket and the admin
	// credential; default t.TempDir(). Reuse it to restart a control plane.
	Dir string
	// Addr is the gRPC listen address; default 127.0.0.1:0.
	Addr string
	// Now is the control plane's clock; default time.Now.
	Now func() time.Time
	// WorkloadTTL is the workload SVID lifetime; default the control plane's.
	WorkloadTTL time.Duration
	// SourceRate and SourceBurst are the per-source limit on Challenge and
	// Join; default the control plane's (every in-process agent dials from
	// 127.0.0.1, so a test making many joins at once raises them).
	SourceRate  float64
	SourceBurst int
	// Store replaces the bbolt store in Dir (it is closed on Stop). With a
	// store.Shared store (several control planes on one memstore.Backend
	// are replicas) Start also runs the server's Run loop and returns once
	// the replica has listed the store.
	Store store.Store
	// Tune, when set, changes the server's configuration before New.
	Tune func(*controlplane.Config)
}

// ControlPlane is one running control plane: the agent API on Addr and the
// admin API on AdminSock.
type ControlPlane struct {
	Server    *controlplane.Server
	Addr      string
	AdminSock string
	AdminDir  string // holds the admin credential
	DBPath    string // empty when Options.Store was given
	Store     store.Store

	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs a control plane until the test ends (or Stop).
func Start(t testing.TB, o Options) *ControlPlane {
	t.Helper()
	if o.Policy == nil {
		o.Policy = Policy(t, GoodMeasurement)
	}
	if o.Provider == nil {
		o.Provider = SimNode(t, sim.NodeConfig{})
	}
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	db := filepath.Join(o.Dir, "state.db")
	st := o.Store
	if st == nil {
		var err error
		if st, err = store.OpenBolt(db); err != nil {
			t.Fatal(err)
		}
	} else {
		db = ""
	}
	cfg := controlplane.Config{
		Policy: o.Policy, Provider: o.Provider, Store: st, Logger: QuietLog, Now: o.Now,
		ClusterCIDR: "10.244.0.0/16", NodePrefixLen: 24, WorkloadTTL: o.WorkloadTTL, SweepInterval: time.Hour,
		SourceRate: o.SourceRate, SourceBurst: o.SourceBurst,
	}
	if o.Tune != nil {
		o.Tune(&cfg)
	}
	srv, err := controlplane.New(cfg)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", o.Addr)
	if err != nil {
		t.Fatal(err)
	}
	adminSock := filepath.Join(o.Dir, "admin.sock")
	os.Remove(adminSock)
	alis, err := net.Listen("unix", adminSock)
	if err != nil {
		t.Fatal(err)
	}
	adminDir := filepath.Join(o.Dir, "admin")
	if err := srv.WriteAdminCredential(adminDir); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &ControlPlane{Server: srv, Addr: lis.Addr().String(), AdminSock: adminSock, AdminDir: adminDir, DBPath: db, Store: st, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = srv.Serve(ctx, lis) }()
	go func() { defer wg.Done(); _ = srv.ServeAdmin(ctx, alis) }()
	if _, shared := st.(store.Shared); shared {
		wg.Add(1)
		go func() { defer wg.Done(); srv.Run(ctx) }()
	}
	go func() { wg.Wait(); close(c.done) }()
	t.Cleanup(c.Stop)
	if _, shared := st.(store.Shared); shared {
		deadline := time.Now().Add(10 * time.Second)
		for !srv.Synced() {
			if time.Now().After(deadline) {
				t.Fatal("control plane replica did not list its store within 10s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return c
}

// Stop shuts the control plane down and closes its store (idempotent).
func (c *ControlPlane) Stop() {
	c.cancel()
	<-c.done
	c.Store.Close()
}

// AdminClient connects to the admin socket with the credential the control
// plane wrote.
func (c *ControlPlane) AdminClient(t testing.TB) cpv1.AdminClient {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(c.AdminDir, controlplane.AdminCertFile), filepath.Join(c.AdminDir, controlplane.AdminKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return c.AdminClientWith(t, &cert)
}

// AdminClientWith connects to the admin socket presenting cert.
func (c *ControlPlane) AdminClientWith(t testing.TB, cert *tls.Certificate) cpv1.AdminClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(c.Server.CA().Certificate())
	tc := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "confmesh-controlplane",
		Certificates: []tls.Certificate{*cert},
		// The admin socket is local; the server certificate is checked against the CA.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			if err := leaf.CheckSignatureFrom(c.Server.CA().Certificate()); err != nil {
				return fmt.Errorf("admin socket server is not this control plane: %w", err)
			}
			return nil
		},
	}
	cc, err := grpc.NewClient("unix://"+c.AdminSock, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cpv1.NewAdminClient(cc)
}

// Agent is an in-process agent: a TEE, keys and the agent's own policy,
// under which it verifies the control plane before it sends anything. Tests
// may change the exported fields between calls (a new name, key or TEE).
type Agent struct {
	Name     string
	TEE      attest.Provider
	WGKey    []byte
	SVIDKey  crypto.Signer
	Verifier *attest.Verifier
	TD       spiffeid.TrustDomain

	// Joined is the last successful Join's response, SVID its node SVID.
	Joined *cpv1.JoinResponse
	SVID   [][]byte
}

// NewAgent makes an agent named name running on tee, with fresh keys and
// policy p (default Policy(t, GoodMeasurement)).
func NewAgent(t testing.TB, name string, tee attest.Provider, p *attest.Policy) *Agent {
	t.Helper()
	if p == nil {
		p = Policy(t, GoodMeasurement)
	}
	v, err := attest.NewVerifier(p, attest.Options{Logger: QuietLog})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	rand.Read(wg)
	return &Agent{Name: name, TEE: tee, WGKey: wg, SVIDKey: key, Verifier: v, TD: spiffeid.RequireTrustDomainFromString(p.TrustDomain)}
}

// NodeSpec is what the agent joins and renews with.
func (a *Agent) NodeSpec() cpclient.Node {
	return cpclient.Node{Name: a.Name, Endpoint: "198.18.0.1:51820", WireGuardKey: a.WGKey, SVIDKey: a.SVIDKey, Provider: a.TEE}
}

// Dial connects to c, with the node SVID once the agent has joined.
func (a *Agent) Dial(t testing.TB, c *ControlPlane) (*cpclient.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := cpclient.Config{Addr: c.Addr, Verifier: a.Verifier, TrustDomain: a.TD}
	if a.Joined != nil {
		cfg.Bundle = a.Bundle(t)
		cfg.ClientCertificate = func() (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: a.SVID, PrivateKey: a.SVIDKey}, nil
		}
	}
	return cpclient.Dial(ctx, cfg)
}

// Join dials and joins, failing the test on error.
func (a *Agent) Join(t testing.TB, c *ControlPlane) *cpv1.JoinResponse {
	t.Helper()
	resp, err := a.TryJoin(t, c)
	if err != nil {
		t.Fatalf("%s: join: %v", a.Name, err)
	}
	return resp
}

// TryJoin dials and joins, returning the error.
func (a *Agent) TryJoin(t testing.TB, c *ControlPlane) (*cpv1.JoinResponse, error) {
	t.Helper()
	conn, err := a.Dial(t, c)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := conn.Join(ctx, a.NodeSpec())
	if err != nil {
		return nil, err
	}
	a.Joined, a.SVID = resp, resp.Svid
	return resp, nil
}

// MTLS returns a connection authenticated with the node SVID, closed when
// the test ends.
func (a *Agent) MTLS(t testing.TB, c *ControlPlane) *cpclient.Conn {
	t.Helper()
	if a.Joined == nil {
		t.Fatalf("%s has not joined", a.Name)
	}
	conn, err := a.Dial(t, c)
	if err != nil {
		t.Fatalf("%s: mTLS dial: %v", a.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Bundle is the X.509 trust bundle of the last join.
func (a *Agent) Bundle(t testing.TB) *x509bundle.Bundle {
	t.Helper()
	b, err := cpclient.ParseBundle(a.TD, a.Joined.TrustBundle)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
