package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/snp"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// ---- helpers for the end-to-end test ----

// lockedBuffer collects a subprocess's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// buildConfmesh compiles the real binary into a temporary directory.
func buildConfmesh(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "confmesh")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", bin, "./cmd/confmesh")
	cmd.Dir = filepath.Join("..", "..", "..") // the module root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// eventually polls cond every 50 ms until it holds or limit passes.
func eventually(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last state:\n%s", limit, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// e2ePolicy is a policy file trusting root, accepting ms, padded to a fixed
// size so that two versions can share size and modification time.
func e2ePolicy(root string, ms ...[]byte) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "trustDomain: cluster.test\nallowedVMPLs: [0]\nmaxEvidenceAge: 90m\ntrustedRoots:\n  - kind: simulated\n    file: %q\ncontrolPlane: {measurements: [%q]}\nmeasurements:\n", root, strings.Repeat("11", 48))
	for _, m := range ms {
		fmt.Fprintf(&b, "  - %q\n", hex.EncodeToString(m))
	}
	const size = 2048
	b.WriteString("# padding: every version of this file has the same size\n#")
	b.WriteString(strings.Repeat("x", size-b.Len()-1))
	b.WriteString("\n")
	return []byte(b.String())
}

// writeAtomic replaces path by data in one rename; a non-zero mtime is set
// on the new file first.
func writeAtomic(t *testing.T, path string, data []byte, mtime time.Time) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if !mtime.IsZero() {
		if err := os.Chtimes(tmp, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// e2eAgent is an in-process agent with a simulated TEE from the test's CA.
type e2eAgent struct {
	name  string
	node  *sim.Node
	wgKey []byte
	key   *ecdsa.PrivateKey
}

func newE2EAgent(t *testing.T, ca *sim.CA, name string, measurement []byte) *e2eAgent {
	t.Helper()
	n, err := ca.NewNode(sim.NodeConfig{Measurement: measurement})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wg := make([]byte, 32)
	rand.Read(wg)
	return &e2eAgent{name: name, node: n, wgKey: wg, key: key}
}

// join verifies the control plane under p (the agent's own policy) and joins.
func (a *e2eAgent) join(t *testing.T, addr string, p *attest.Policy) *cpv1.JoinResponse {
	t.Helper()
	resp, err := a.tryJoin(t, addr, p)
	if err != nil {
		t.Fatalf("%s: %v", a.name, err)
	}
	return resp
}

func (a *e2eAgent) tryJoin(t *testing.T, addr string, p *attest.Policy) (*cpv1.JoinResponse, error) {
	t.Helper()
	v, err := attest.NewVerifier(p, attest.Options{Logger: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: v, TrustDomain: spiffeid.RequireTrustDomainFromString(p.TrustDomain)})
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	defer conn.Close()
	return conn.Join(ctx, cpclient.Node{Name: a.name, Endpoint: "198.18.0.1:51820", WireGuardKey: a.wgKey, SVIDKey: a.key, Provider: a.node})
}

// cpProcess is `confmesh controlplane` running as a subprocess.
type cpProcess struct {
	cmd     *exec.Cmd
	logs    *lockedBuffer
	done    chan struct{}
	waitErr error
}

func (p *cpProcess) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func startControlPlaneProcess(t *testing.T, bin string, args ...string) *cpProcess {
	t.Helper()
	p := &cpProcess{cmd: exec.Command(bin, append([]string{"controlplane"}, args...)...), logs: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.cmd.Process.Kill() // by its PID
			<-p.done
		}
		if t.Failed() {
			t.Logf("control plane log:\n%s", p.logs)
		}
	})
	return p
}

type cliResult struct {
	code           int
	stdout, stderr string
}

func runBinary(t *testing.T, bin string, args ...string) cliResult {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{code, out.String(), errOut.String()}
}

// TestControlPlaneBinaryEndToEnd runs the real binary with a simulated TEE,
// joins two in-process agents and drives policy reload (file change and
// SIGHUP), an invalid policy, revocation and shutdown through it.
func TestControlPlaneBinaryEndToEnd(t *testing.T) {
	t.Parallel()
	bin := buildConfmesh(t)

	dir := t.TempDir()
	caDir := filepath.Join(dir, "simca")
	ca, err := sim.NewTestCA("")
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(caDir); err != nil {
		t.Fatal(err)
	}
	goodMeas := bytes.Repeat([]byte{0x11}, 48)
	altMeas := bytes.Repeat([]byte{0x22}, 48)

	policyPath := filepath.Join(dir, "policy.yaml")
	both := e2ePolicy(ca.RootPath(), goodMeas, altMeas)
	tight := e2ePolicy(ca.RootPath(), goodMeas)
	writeAtomic(t, policyPath, both, time.Time{})

	// A short directory: unix socket paths are limited to 108 bytes.
	sockDir, err := os.MkdirTemp("", "cm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "admin.sock")
	stateDir := filepath.Join(dir, "state")
	adminDir := filepath.Join(stateDir, "admin")
	agentAddr, metricsAddr := freePort(t), freePort(t)

	cp := startControlPlaneProcess(t, bin,
		"--policy", policyPath, "--sim-dir", caDir, "--sim-measurement", hex.EncodeToString(goodMeas),
		"--state-dir", stateDir, "--listen", agentAddr, "--admin-socket", sock, "--metrics-listen", metricsAddr,
		"--sweep-interval", "1h", "--log-format", "json", "--log-level", "debug")

	readyz := func() (int, error) {
		c := http.Client{Timeout: time.Second}
		resp, err := c.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	eventually(t, 30*time.Second, "/readyz 200", func() (bool, string) {
		if cp.exited() {
			t.Fatalf("control plane exited early (%v):\n%s", cp.waitErr, cp.logs)
		}
		code, err := readyz()
		return code == http.StatusOK, fmt.Sprintf("code %d err %v", code, err)
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin socket: %v, mode %v", err, fi.Mode())
	}

	agentPolicy := &attest.Policy{
		TrustDomain: "cluster.test", AllowedVMPLs: []uint32{0}, MaxEvidenceAge: attest.Duration(90 * time.Minute),
		TrustedRoots: []attest.RootRef{{Kind: attest.RootSimulated, File: ca.RootPath()}},
		Measurements: []attest.HexBytes{goodMeas, altMeas},
		ControlPlane: &attest.ControlPlanePolicy{Measurements: []attest.HexBytes{goodMeas}},
	}
	a := newE2EAgent(t, ca, "node-a", goodMeas)
	b := newE2EAgent(t, ca, "node-b", altMeas)
	ra := a.join(t, agentAddr, agentPolicy)
	rb := b.join(t, agentAddr, agentPolicy)
	if ra.PodCidr == rb.PodCidr {
		t.Fatalf("both nodes got %s", ra.PodCidr)
	}

	nodes := func() (map[string]nodeJSON, string) {
		r := runBinary(t, bin, "nodes", "-o", "json", "--admin-socket", sock, "--admin-dir", adminDir)
		if r.code != 0 {
			t.Fatalf("nodes -o json: exit %d\n%s", r.code, r.stderr)
		}
		var list []nodeJSON
		if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
			t.Fatalf("nodes -o json: %v\n%s", err, r.stdout)
		}
		m := map[string]nodeJSON{}
		for _, n := range list {
			m[n.Name] = n
		}
		return m, r.stdout
	}
	states := func(want map[string]string) func() (bool, string) {
		return func() (bool, string) {
			m, out := nodes()
			if len(m) != len(want) {
				return false, out
			}
			for name, st := range want {
				if m[name].State != st {
					return false, out
				}
			}
			return true, out
		}
	}

	m, out := nodes()
	if len(m) != 2 || m["node-a"].State != "active" || m["node-b"].State != "active" {
		t.Fatalf("want node-a and node-b active:\n%s", out)
	}
	if m["node-b"].Measurement != hex.EncodeToString(altMeas) || m["node-a"].PodCIDR != ra.PodCidr || m["node-a"].TEE != attest.TEESimSnp ||
		m["node-a"].WireGuardPublicKey != hex.EncodeToString(a.wgKey) || len(m["node-a"].ChipID) != 128 {
		t.Fatalf("node fields:\n%s", out)
	}
	for _, ts := range []string{m["node-a"].AttestedAt, m["node-a"].ExpiresAt} {
		if _, err := time.Parse(time.RFC3339, ts); err != nil {
			t.Fatalf("time %q is not RFC 3339: %v", ts, err)
		}
	}
	// The text table too.
	r := runBinary(t, bin, "nodes", "--admin-socket", sock, "--admin-dir", adminDir)
	if r.code != 0 || !strings.Contains(r.stdout, "NAME") || !strings.Contains(r.stdout, "node-b") ||
		!strings.Contains(r.stdout, hex.EncodeToString(altMeas)[:16]) || strings.Contains(r.stdout, hex.EncodeToString(altMeas)[:17]) {
		t.Fatalf("nodes (text): exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// An invalid policy: logged with its error, the old one stays, still serving.
	writeAtomic(t, policyPath, []byte("trustDomain: cluster.test\nbogus: 1\n"), time.Time{})
	eventually(t, 15*time.Second, "the invalid policy to be logged", func() (bool, string) {
		logs := cp.logs.String()
		return strings.Contains(logs, "policy reload refused") && strings.Contains(logs, "bogus"), logs
	})
	if code, err := readyz(); code != http.StatusOK {
		t.Fatalf("readyz after an invalid policy: %d %v", code, err)
	}
	if cp.exited() {
		t.Fatalf("control plane exited after an invalid policy:\n%s", cp.logs)
	}
	if ok, out := states(map[string]string{"node-a": "active", "node-b": "active"})(); !ok {
		t.Fatalf("an invalid policy changed the nodes:\n%s", out)
	}

	// Tighten: node-b's measurement is no longer accepted.
	writeAtomic(t, policyPath, tight, time.Time{})
	eventually(t, 15*time.Second, "node-b rejected", states(map[string]string{"node-a": "active", "node-b": "rejected"}))
	m, out = nodes()
	if reason := m["node-b"].Reason; !strings.Contains(reason, "measurement") || !strings.Contains(reason, hex.EncodeToString(altMeas)) {
		t.Fatalf("reason does not name the measurement:\n%s", out)
	}

	// Restore with the same size and modification time, so the file poller
	// cannot tell: only SIGHUP brings node-b back.
	fi, err := os.Stat(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, policyPath, both, fi.ModTime())
	if err := cp.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "node-b active again", states(map[string]string{"node-a": "active", "node-b": "active"}))
	if logs := cp.logs.String(); !strings.Contains(logs, `"trigger":"SIGHUP"`) {
		t.Fatalf("no SIGHUP reload in the log:\n%s", logs)
	}

	// Revoke.
	r = runBinary(t, bin, "nodes", "revoke", "node-b", "--admin-socket", sock, "--admin-dir", adminDir)
	if r.code != 0 {
		t.Fatalf("revoke node-b: exit %d\n%s", r.code, r.stderr)
	}
	m, out = nodes()
	if _, ok := m["node-b"]; ok || m["node-a"].State != "active" {
		t.Fatalf("after revoking node-b:\n%s", out)
	}
	r = runBinary(t, bin, "nodes", "revoke", "nope", "--admin-socket", sock, "--admin-dir", adminDir)
	if r.code != 1 || !strings.Contains(r.stderr, `"nope"`) {
		t.Fatalf("revoke nope: exit %d\n%s", r.code, r.stderr)
	}

	// Remove (not revoke): node-a leaves, nothing is blocked, it joins again.
	r = runBinary(t, bin, "nodes", "remove", "node-a", "--admin-socket", sock, "--admin-dir", adminDir)
	if r.code != 0 || !strings.Contains(r.stdout, `node "node-a" removed`) {
		t.Fatalf("remove node-a: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if m, out := nodes(); len(m) != 0 {
		t.Fatalf("after removing node-a:\n%s", out)
	}
	r = runBinary(t, bin, "nodes", "remove", "nope", "--admin-socket", sock, "--admin-dir", adminDir)
	if r.code != 1 || !strings.Contains(r.stderr, `"nope"`) {
		t.Fatalf("remove nope: exit %d\n%s", r.code, r.stderr)
	}
	ra = a.join(t, agentAddr, agentPolicy)

	// Clean shutdown.
	stop := func(cp *cpProcess) {
		t.Helper()
		if err := cp.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-cp.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("control plane still running 10 s after SIGTERM:\n%s", cp.logs)
		}
		if cp.waitErr != nil {
			t.Fatalf("control plane exit: %v\n%s", cp.waitErr, cp.logs)
		}
		if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("admin socket left behind: %v", err)
		}
	}
	stop(cp)

	// Restart on the same state: node-a is still known, the revoked chip
	// still cannot join.
	agentAddr, metricsAddr = freePort(t), freePort(t)
	cp = startControlPlaneProcess(t, bin,
		"--policy", policyPath, "--sim-dir", caDir, "--sim-measurement", hex.EncodeToString(goodMeas),
		"--state-dir", stateDir, "--listen", agentAddr, "--admin-socket", sock, "--metrics-listen", metricsAddr, "--log-format", "text")
	eventually(t, 30*time.Second, "/readyz 200 after restart", func() (bool, string) {
		if cp.exited() {
			t.Fatalf("control plane exited early (%v):\n%s", cp.waitErr, cp.logs)
		}
		code, err := readyz()
		return code == http.StatusOK, fmt.Sprintf("code %d err %v", code, err)
	})
	if m, out := nodes(); len(m) != 1 || m["node-a"].State != "active" || m["node-a"].PodCIDR != ra.PodCidr {
		t.Fatalf("after restart:\n%s", out)
	}
	if _, err := b.tryJoin(t, agentAddr, agentPolicy); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked node-b joined again after a restart: %v", err)
	}
	stop(cp)
}

// ---- in-process tests ----

func TestNodesSocketMissing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "no-such.sock")
	run(t, "nodes", "--admin-socket", sock, "--admin-dir", dir).want(t, 1, sock, "does not exist")
	run(t, "nodes", "revoke", "node-a", "--admin-socket", sock, "--admin-dir", dir).want(t, 1, sock)
	// A path that is not a socket.
	file := writeFile(t, dir, "plain", []byte("x"))
	run(t, "nodes", "--admin-socket", file, "--admin-dir", dir).want(t, 1, file, "not a socket")
	// A socket nobody serves on: unreachable, named.
	l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	dead := filepath.Join(dir, "s.sock")
	// ... but without a credential that is a usage error first.
	run(t, "nodes", "--admin-socket", dead, "--admin-dir", dir).want(t, 2, "admin credential", "--admin-dir")
	writeAdminCredential(t, dir)
	run(t, "nodes", "--admin-socket", dead, "--admin-dir", dir).want(t, 1, "cannot reach the control plane at "+dead)
	run(t, "nodes", "-o", "yaml").want(t, 2, "unknown output format")
	run(t, "nodes", "extra").want(t, 2, "unknown command")
	run(t, "nodes", "revoke").want(t, 2, "accepts 1 arg")
	run(t, "nodes", "remove").want(t, 2, "accepts 1 arg")
	run(t, "nodes", "remove", "node-a", "--admin-socket", sock, "--admin-dir", dir).want(t, 1, sock)
}

// writeAdminCredential writes an admin credential from a fresh CA into dir.
func writeAdminCredential(t *testing.T, dir string) {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.test")
	ca, err := identity.NewCA(td, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueSVID(identity.IssueRequest{PublicKey: key.Public(), ID: identity.AdminID(td), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "admin.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	writeFile(t, dir, "admin.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	writeFile(t, dir, "bundle.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw}))
}

func TestControlPlaneUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	run(t, "controlplane").want(t, 2, "--policy (policy): required")
	bad := writeFile(t, dir, "bad.yaml", []byte("policy: p.yaml\nstateDirectory: /x\n"))
	run(t, "controlplane", "--config", bad).want(t, 2, "--config", `unknown field "stateDirectory"`)
	run(t, "controlplane", "--config", filepath.Join(dir, "missing.yaml")).want(t, 2, "missing.yaml")
	run(t, "controlplane", "--policy", "p.yaml", "--sim-measurement", "00").want(t, 2, "needs --sim-dir")
	run(t, "controlplane", "--policy", "p.yaml", "--sim-dir", dir, "--sim-measurement", "abcd").want(t, 2, "--sim-measurement", "want 48")
	run(t, "controlplane", "--policy", "p.yaml", "--svid-ttl", "soon").want(t, 2, "svid-ttl")
	run(t, "controlplane", "--policy", "p.yaml", "--log-format", "xml").want(t, 2, "--log-format")
	run(t, "controlplane", "--policy", "p.yaml", "--store", "etcd").want(t, 2, "--store (store)", `"etcd"`, "want bolt", "kubernetes")
	run(t, "controlplane", "--policy", "p.yaml", "--kubeconfig", "k.yaml").want(t, 2, "--kubeconfig", "needs --store=kubernetes")
	run(t, "controlplane", "--policy", "p.yaml", "--store", "kubernetes", "--store-namespace", "Bad_NS").want(t, 2, "--store-namespace", `"Bad_NS"`)
	run(t, "controlplane", "--policy", filepath.Join(dir, "nope.yaml"), "--sim-dir", simDir).want(t, 2, "nope.yaml")
	run(t, "controlplane", "stray", "--policy", "p.yaml").want(t, 2, "unknown command")
	// An invalid policy is exit 1, naming the problem.
	inv := writeFile(t, dir, "inv.yaml", []byte("trustDomain: cluster.test\nmeasurements: []\n"))
	run(t, "controlplane", "--policy", inv, "--sim-dir", simDir).want(t, 1, "measurements")
	// A policy whose evidence age the renewal interval cannot meet.
	short := writeFile(t, dir, "short.yaml", e2ePolicy(filepath.Join(simDir, sim.RootFile), make([]byte, 48)))
	run(t, "controlplane", "--policy", short, "--sim-dir", simDir, "--svid-ttl", "4h").want(t, 1, "maxEvidenceAge 1h30m0s", "renewal interval 2h0m0s")
}

func TestControlPlaneFlagsOverrideConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := writeFile(t, dir, "cp.yaml", []byte(`
policy: policy.yaml
stateDir: state
listen: 127.0.0.1:1000
svidTTL: 2h
dnsNames: [file.example]
simDir: sim
`))
	cmd := newControlPlaneCmd()
	fv := config.Default()
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	fs.StringVar(&fv.Listen, "listen", fv.Listen, "")
	fs.DurationVar((*time.Duration)(&fv.SVIDTTL), "svid-ttl", time.Duration(fv.SVIDTTL), "")
	fs.StringSliceVar(&fv.DNSNames, "dns-name", nil, "")
	fs.StringVar(&fv.StateDir, "state-dir", fv.StateDir, "")
	if err := fs.Parse([]string{"--listen", "127.0.0.1:2000", "--dns-name", "a.example", "--dns-name", "b.example"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := resolveControlPlaneConfig(fs, file, &fv)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:2000" || strings.Join(cfg.DNSNames, ",") != "a.example,b.example" {
		t.Errorf("flags did not override the file: %+v", cfg)
	}
	if time.Duration(cfg.SVIDTTL) != 2*time.Hour || cfg.StateDir != filepath.Join(dir, "state") || cfg.SimDir != filepath.Join(dir, "sim") {
		t.Errorf("file values lost (an unset flag must not override): %+v", cfg)
	}
	if cfg.MetricsListen != config.DefaultMetricsListen {
		t.Errorf("default lost: %s", cfg.MetricsListen)
	}
	// Every flag of the command maps to a setting.
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		switch f.Name {
		case "config", "help", "tdx-collateral", "pcs-url", "pcs-cache": // the TDX collateral flags are flags only
			return
		}
		var a, b config.Config
		b = config.Default()
		b.Policy, b.SimDir, b.SimMeasurement, b.SimDebug, b.KDSCache = "x", "x", "x", true, "x"
		b.Store, b.Kubeconfig, b.StoreNamespace = "x", "x", "x"
		b.DNSNames, b.IPs = []string{"x"}, []string{"x"}
		b.NodePrefixLen, b.MTUHint = 99, 99
		b.SVIDTTL, b.WorkloadTTL, b.SweepInterval = 99, 99, 99
		b.Listen, b.StateDir, b.AdminSocket, b.MetricsListen, b.ClusterCIDR, b.SimName, b.LogFormat, b.LogLevel = "x", "x", "x", "x", "x", "x", "x", "x"
		applyFlag(&a, &b, f.Name)
		if fmt.Sprint(a) == fmt.Sprint(config.Config{}) {
			t.Errorf("flag --%s is not mapped to a setting", f.Name)
		}
	})
}

func TestControlPlaneWithoutSEVSNP(t *testing.T) {
	saved := NewHardwareProvider
	t.Cleanup(func() { NewHardwareProvider = saved })
	NewHardwareProvider = func() (attest.Provider, error) {
		return nil, fmt.Errorf("%w; pass --sim-dir to use the simulated TEE", snp.ErrNoDevice)
	}
	dir := t.TempDir()
	p := writeFile(t, dir, "p.yaml", []byte("trustDomain: cluster.test\nmeasurements: [\""+strings.Repeat("5e", 48)+"\"]\n"))
	r := run(t, "controlplane", "--policy", p, "--state-dir", filepath.Join(dir, "state"))
	r.want(t, 1, "/dev/sev-guest", "--sim-dir")
	if _, err := os.Stat(filepath.Join(dir, "state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state created before the TEE was found: %v", err)
	}
}

func TestAdminTLSVerifiesTheControlPlane(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("cluster.test")
	now := time.Now()
	ca, err := identity.NewCA(td, now)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.NewCA(td, now)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(c *identity.CA, id spiffeid.ID) [][]byte {
		cert, err := c.IssueSVID(identity.IssueRequest{PublicKey: key.Public(), ID: id, TTL: time.Hour, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return [][]byte{cert.Raw}
	}
	verify := verifyControlPlaneCert(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Certificate()}), identity.ControlPlaneID(td), time.Now)
	if err := verify(issue(ca, identity.ControlPlaneID(td)), nil); err != nil {
		t.Fatalf("the control plane refused: %v", err)
	}
	if err := verify(issue(ca, identity.AdminID(td)), nil); err == nil || !strings.Contains(err.Error(), "want spiffe://cluster.test/confmesh/controlplane") {
		t.Fatalf("another identity of the trust domain accepted: %v", err)
	}
	if err := verify(issue(other, identity.ControlPlaneID(td)), nil); err == nil {
		t.Fatal("a certificate from another CA accepted")
	}
	if err := verify(nil, nil); err == nil {
		t.Fatal("no certificate accepted")
	}
	late := verifyControlPlaneCert(x509bundle.FromX509Authorities(td, []*x509.Certificate{ca.Certificate()}), identity.ControlPlaneID(td), func() time.Time { return now.Add(2 * time.Hour) })
	if err := late(issue(ca, identity.ControlPlaneID(td)), nil); err == nil {
		t.Fatal("an expired certificate accepted")
	}
}

func TestNodesOutput(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	n := &cpv1.Node{
		Name: "node-a", State: "rejected", Reason: "measurement: not allowed", Endpoint: "10.0.0.1:51820", PodCidr: "10.244.0.0/24",
		Tee: "sim-snp", Measurement: bytes.Repeat([]byte{0xAB}, 48), ChipId: []byte{0xCD, 0xEF}, WireguardPublicKey: []byte{1, 2},
		AttestedAt: timestamppb.New(at), ExpiresAt: timestamppb.New(at.Add(time.Hour)),
	}
	var buf bytes.Buffer
	if err := writeNodesTable(&buf, []*cpv1.Node{n, {Name: "bare"}}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || strings.Join(strings.Fields(lines[0]), " ") != "NAME STATE ENDPOINT POD-CIDR TEE MEASUREMENT ATTESTED EXPIRES REASON" {
		t.Fatalf("table:\n%s", buf.String())
	}
	want := "node-a rejected 10.0.0.1:51820 10.244.0.0/24 sim-snp abababababababab 2026-01-02T03:04:05Z 2026-01-02T04:04:05Z measurement: not allowed"
	if got := strings.Join(strings.Fields(lines[1]), " "); got != want {
		t.Fatalf("row\n got %s\nwant %s", got, want)
	}
	if got := strings.Join(strings.Fields(lines[2]), " "); got != "bare - - - - - - - -" {
		t.Fatalf("empty row: %s", got)
	}
	j, err := json.Marshal(toNodeJSON(n))
	if err != nil {
		t.Fatal(err)
	}
	wantJSON := `{"name":"node-a","state":"rejected","reason":"measurement: not allowed","endpoint":"10.0.0.1:51820","podCIDR":"10.244.0.0/24","tee":"sim-snp","measurement":"` +
		strings.Repeat("ab", 48) + `","chipID":"cdef","wireguardPublicKey":"0102","attestedAt":"2026-01-02T03:04:05Z","expiresAt":"2026-01-02T04:04:05Z"}`
	if string(j) != wantJSON {
		t.Fatalf("JSON\n got %s\nwant %s", j, wantJSON)
	}
}

// TestControlPlaneDocsListEveryFlag keeps docs/controlplane.md in step with
// the flags of `confmesh controlplane` and `confmesh nodes`.
func TestControlPlaneDocsListEveryFlag(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "..", "docs", "controlplane.md"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(fs *pflag.FlagSet) {
		fs.VisitAll(func(f *pflag.Flag) {
			if f.Name != "help" && !bytes.Contains(doc, []byte("`--"+f.Name)) {
				t.Errorf("docs/controlplane.md does not document --%s", f.Name)
			}
		})
	}
	check(newControlPlaneCmd().Flags())
	nodes := newNodesCmd()
	check(nodes.Flags())
	check(nodes.PersistentFlags())
}

func TestSelfCheck(t *testing.T) {
	t.Parallel()
	ca, err := sim.OpenCA(simDir, "")
	if err != nil {
		t.Fatal(err)
	}
	m := bytes.Repeat([]byte{0x33}, 48)
	n, err := ca.NewNode(sim.NodeConfig{Measurement: m})
	if err != nil {
		t.Fatal(err)
	}
	p := &attest.Policy{
		TrustDomain: "cluster.test", AllowedVMPLs: []uint32{0}, MaxEvidenceAge: attest.Duration(time.Hour),
		TrustedRoots: []attest.RootRef{{Kind: attest.RootSimulated, File: filepath.Join(simDir, sim.RootFile)}},
		Measurements: []attest.HexBytes{bytes.Repeat([]byte{0x55}, 48)},
		ControlPlane: &attest.ControlPlanePolicy{Measurements: []attest.HexBytes{m}},
	}
	// The control-plane list decides, not the node list.
	if err := selfCheck(n, p, nil); err != nil {
		t.Fatalf("own evidence refused: %v", err)
	}
	q := *p
	q.Measurements = []attest.HexBytes{m}
	q.ControlPlane = &attest.ControlPlanePolicy{Measurements: []attest.HexBytes{bytes.Repeat([]byte{0x44}, 48)}}
	if err := selfCheck(n, &q, nil); err == nil || !strings.HasPrefix(err.Error(), "measurement:") {
		t.Fatalf("measurement not on the control-plane list: err = %v", err)
	}
	q.ControlPlane = nil
	if err := selfCheck(n, &q, nil); !errors.Is(err, attest.ErrNoControlPlaneTrust) {
		t.Fatalf("no control-plane list: err = %v", err)
	}
	amd := *p
	amd.TrustedRoots = []attest.RootRef{{Kind: attest.RootAMD}}
	if err := selfCheck(n, &amd, nil); err == nil || !strings.HasPrefix(err.Error(), "untrusted_root:") {
		t.Fatalf("simulated root not named: err = %v", err)
	}
}

func TestListenAdmin(t *testing.T) {
	t.Parallel()
	dir, err := os.MkdirTemp("", "cm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "sub", "admin.sock")
	l, err := listenAdmin(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// A live socket is not taken over.
	if _, err := listenAdmin(sock); err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("live socket: err = %v", err)
	}
	// A stale one (its listener gone, the file left) is replaced.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l, err = listenAdmin(sock)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l.Close()
	// Anything else is left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o644)
	if _, err := listenAdmin(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file: err = %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("regular file changed")
	}
}
