package workload_test

// The integration tests run a real control plane in-process (simulated
// TEE), join nodes with agent/cpclient (the real mTLS node SVID), and serve
// the Workload API with a Backend that signs through that connection, so
// the real SignWorkload/SignJWT rule is exercised. Callers are identified for
// real: SO_PEERCRED, /proc/<pid>/ns/net and the pods' netns paths. A caller
// in another network namespace is a child process (this test binary,
// re-executed) started from a thread inside that namespace.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/workload"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

const helperEnv = "CONFMESH_WORKLOAD_TEST_HELPER_SOCKET"

// TestMain doubles as the helper process: with helperEnv set, the binary
// fetches its X.509-SVID from the socket named there and prints one line,
// "ID <spiffe-id>" or "ERR <code> <message>".
func TestMain(m *testing.M) {
	if sock := os.Getenv(helperEnv); sock != "" {
		os.Exit(helperMain(sock))
	}
	os.Exit(m.Run())
}

func helperMain(sock string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		fmt.Printf("ERR client %v\n", err)
		return 0
	}
	defer c.Close()
	svid, err := c.FetchX509SVID(ctx)
	if err != nil {
		st := status.Convert(err)
		fmt.Printf("ERR %s %s\n", st.Code(), st.Message())
		return 0
	}
	fmt.Printf("ID %s\n", svid.ID)
	return 0
}

var (
	simOnce  sync.Once
	simCA    *sim.CA
	simRoot  string
	simErr   error
	goodMeas = bytes.Repeat([]byte{0x11}, 48)
	altMeas  = bytes.Repeat([]byte{0x22}, 48)
	td       = spiffeid.RequireTrustDomainFromString("cluster.test")
	quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, reading other processes' /proc/<pid>/ns/net)")
	}
}

func simFixture(t *testing.T) {
	t.Helper()
	simOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confmesh-workload-test-")
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
	})
	if simErr != nil {
		t.Fatal(simErr)
	}
}

func testPolicy() *attest.Policy {
	return &attest.Policy{
		TrustDomain:    td.Name(),
		AllowedVMPLs:   []uint32{0},
		MaxEvidenceAge: attest.Duration(30 * time.Minute),
		TrustedRoots:   []attest.RootRef{{Kind: attest.RootSimulated, File: simRoot}},
		Measurements:   []attest.HexBytes{goodMeas, altMeas},
	}
}

// cluster is a running control plane.
type cluster struct {
	srv  *controlplane.Server
	addr string
}

func startControlPlane(t *testing.T, workloadTTL time.Duration) *cluster {
	t.Helper()
	simFixture(t)
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	prov, err := simCA.NewNode(sim.NodeConfig{Measurement: goodMeas})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := controlplane.New(controlplane.Config{
		Policy: testPolicy(), Provider: prov, Store: st, Logger: quietLog, WorkloadTTL: workloadTTL, SweepInterval: time.Hour,
	})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	return &cluster{srv: srv, addr: lis.Addr().String()}
}

// node is an in-process agent: it joined with its own simulated TEE and
// implements workload.Backend over its mTLS connection.
type node struct {
	name string
	conn *cpclient.Conn

	mu   sync.Mutex
	pods []workload.Pod
	xb   *x509bundle.Bundle
	jb   *jwtbundle.Bundle
}

func joinNode(t *testing.T, c *cluster, name string, measurement []byte) *node {
	t.Helper()
	tee, err := simCA.NewNode(sim.NodeConfig{Measurement: measurement})
	if err != nil {
		t.Fatal(err)
	}
	v, err := attest.NewVerifier(testPolicy(), attest.Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	rand.Read(wg)
	ctx := ctxT(t)
	conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: c.addr, Verifier: v, TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := conn.Join(ctx, cpclient.Node{Name: name, Endpoint: "198.18.0.1:51820", WireGuardKey: wg, SVIDKey: key, Provider: tee})
	conn.Close()
	if err != nil {
		t.Fatalf("%s: join: %v", name, err)
	}
	xb, err := cpclient.ParseBundle(td, resp.TrustBundle)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := jwtbundle.Parse(td, resp.JwtBundle)
	if err != nil {
		t.Fatal(err)
	}
	conn, err = cpclient.Dial(ctx, cpclient.Config{Addr: c.addr, Verifier: v, TrustDomain: td, Bundle: xb,
		ClientCertificate: func() (*tls.Certificate, error) {
			return &tls.Certificate{Certificate: resp.Svid, PrivateKey: key}, nil
		}})
	if err != nil {
		t.Fatalf("%s: mTLS dial: %v", name, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &node{name: name, conn: conn, xb: xb, jb: jb}
}

// addPod registers a pod with the control plane (as this node) and lists it
// locally, as the CNI plugin's registration does.
func (n *node) addPod(t *testing.T, p workload.Pod) {
	t.Helper()
	if _, err := n.conn.Client.RegisterPod(ctxT(t), &cpv1.RegisterPodRequest{Pod: podIdentity(p)}); err != nil {
		t.Fatalf("%s: register pod %s: %v", n.name, p, err)
	}
	n.listPod(p)
}

// listPod lists a pod locally without registering it with the control plane.
func (n *node) listPod(p workload.Pod) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.pods = append(n.pods, p)
}

func (n *node) removePod(uid string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var keep []workload.Pod
	for _, p := range n.pods {
		if p.UID != uid {
			keep = append(keep, p)
		}
	}
	n.pods = keep
}

func podIdentity(p workload.Pod) *cpv1.PodIdentity {
	return &cpv1.PodIdentity{Namespace: p.Namespace, Name: p.Name, Uid: p.UID, ServiceAccount: p.ServiceAccount}
}

func (n *node) Pods() ([]workload.Pod, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]workload.Pod(nil), n.pods...), nil
}

func (n *node) SignX509(ctx context.Context, p workload.Pod, csr []byte) ([][]byte, error) {
	resp, err := n.conn.Client.SignWorkload(ctx, &cpv1.SignWorkloadRequest{Csr: csr, Pod: podIdentity(p)})
	if err != nil {
		return nil, err
	}
	return resp.Svid, nil
}

func (n *node) SignJWT(ctx context.Context, p workload.Pod, aud []string) (string, error) {
	resp, err := n.conn.Client.SignJWT(ctx, &cpv1.SignJWTRequest{Pod: podIdentity(p), Audience: aud})
	if err != nil {
		return "", err
	}
	return resp.Token, nil
}

func (n *node) X509Bundle() *x509bundle.Bundle {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.xb
}

func (n *node) JWTBundle() *jwtbundle.Bundle {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.jb
}

func (n *node) setBundles(xb *x509bundle.Bundle, jb *jwtbundle.Bundle) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.xb, n.jb = xb, jb
}

// serve runs a Workload API server for n on a fresh socket. hostNetNS is the
// namespace the server treats as the host's ("" = its own, the default).
func serve(t *testing.T, n *node, hostNetNS string, mut func(*workload.Config)) (*workload.Server, string) {
	t.Helper()
	cfg := workload.Config{Backend: n, TrustDomain: td, HostNetNS: hostNetNS, Logger: quietLog, RotationCheck: 100 * time.Millisecond}
	if mut != nil {
		mut(&cfg)
	}
	srv, err := workload.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "cmwl")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "workload.sock")
	lis, err := workload.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done; os.RemoveAll(dir) })
	return srv, sock
}

func client(t *testing.T, sock string) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(ctxT(t), workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// newNS makes a network namespace, removed at the end of the test.
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		testutils.UnmountNS(n)
	})
	return n
}

// selfNetns is a path to this test process's own network namespace, as a
// pod's registered netns: the test process is then that pod.
func selfNetns() string { return fmt.Sprintf("/proc/%d/ns/net", os.Getpid()) }

// fetchFrom runs this binary as a helper process inside network namespace
// netns and returns the line it printed.
func fetchFrom(t *testing.T, netns ns.NetNS, sock string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+sock)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	// The child inherits the namespaces of the thread that forks it.
	if err := netns.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper process: %v; stderr: %s", err, errOut.String())
	}
	line, _ := bufio.NewReader(&out).ReadString('\n')
	return strings.TrimSpace(line)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond for up to d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s", d, what)
}
