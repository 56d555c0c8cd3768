package workload_test

// The integration tests run a real control plane in-process (simulated
// TEE, controlplane/cptest), join nodes with agent/cpclient (the real mTLS node SVID), and serve
// the Workload API with a Backend that signs through that connection, so
// the real SignWorkload/SignJWT rule is exercised. Callers are identified for
// real: SO_PEERCRED, /proc/<pid>/ns/net and the pods' netns paths. A caller
// in another network namespace is a child process (this test binary,
// re-executed) started from a thread inside that namespace.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
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
	goodMeas = cptest.GoodMeasurement
	altMeas  = cptest.AltMeasurement
	td       = cptest.TrustDomain
	quietLog = cptest.QuietLog
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, reading other processes' /proc/<pid>/ns/net)")
	}
}

// startControlPlane runs a control plane that admits nodes with goodMeas or
// altMeas and issues workload SVIDs for workloadTTL (0: the default).
func startControlPlane(t *testing.T, workloadTTL time.Duration) *cptest.ControlPlane {
	t.Helper()
	return cptest.Start(t, cptest.Options{Policy: cptest.Policy(t, goodMeas, altMeas), WorkloadTTL: workloadTTL})
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

func joinNode(t *testing.T, c *cptest.ControlPlane, name string, measurement []byte) *node {
	t.Helper()
	a := cptest.NewAgent(t, name, cptest.SimNode(t, sim.NodeConfig{Measurement: measurement}), cptest.Policy(t, goodMeas, altMeas))
	resp := a.Join(t, c)
	jb, err := jwtbundle.Parse(td, resp.JwtBundle)
	if err != nil {
		t.Fatal(err)
	}
	return &node{name: name, conn: a.MTLS(t, c), xb: a.Bundle(t), jb: jb}
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
