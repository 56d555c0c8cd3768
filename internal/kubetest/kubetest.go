// Package kubetest runs a real etcd and kube-apiserver on loopback for
// tests (in the manner of controller-runtime's envtest), from the binaries
// k8s/tools/build.sh caches outside the repository. A test that needs them
// skips, naming the command that builds them, when they are not built.
//
// The test helpers take TB, which testing.TB satisfies; the package does
// not import "testing", so a program (`confmesh bench soak`) can use the
// error-returning Start, ApplyRBACFile and InstallCRDsFile the helpers are
// built on.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// RepoRoot is the directory of the confmesh go.mod above the working
// directory (tests run in their package's directory).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/confmesh/confmesh\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("kubetest: no confmesh go.mod above the working directory")
		}
		dir = parent
	}
}

var (
	toolsOnce sync.Once
	toolsDir  string
	toolsErr  error
)

// ToolsDir is the cache directory k8s/tools/build.sh builds into (it may
// not exist yet).
func ToolsDir() (string, error) {
	toolsOnce.Do(func() {
		root, err := RepoRoot()
		if err != nil {
			toolsErr = err
			return
		}
		out, err := exec.Command("bash", filepath.Join(root, "k8s", "tools", "build.sh"), "--dir").Output()
		if err != nil {
			toolsErr = fmt.Errorf("k8s/tools/build.sh --dir: %w", err)
			return
		}
		toolsDir = strings.TrimSpace(string(out))
	})
	return toolsDir, toolsErr
}

// TB is what the test helpers need of their caller: testing.TB satisfies
// it.
type TB interface {
	Helper()
	Cleanup(func())
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	TempDir() string
}

// ErrToolMissing is wrapped by the errors that say a cached tool is not
// built.
var ErrToolMissing = errors.New("not built")

// ToolIn returns the path of tool name in the cache directory dir, or an
// error wrapping ErrToolMissing that names the command that builds it.
func ToolIn(dir, name string) (string, error) {
	p := filepath.Join(dir, name)
	if st, err := os.Stat(p); err != nil || st.IsDir() {
		return "", fmt.Errorf("%s is %w (%s missing): run `make k8s-tools` (k8s/tools/build.sh) first", name, ErrToolMissing, p)
	}
	return p, nil
}

// Tool returns the path of a cached tool, or skips t naming the command
// that builds it.
func Tool(t TB, name string) string {
	t.Helper()
	dir, err := ToolsDir()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ToolIn(dir, name)
	if err != nil {
		t.Skipf("%v", err)
	}
	return p
}

// User is a static-token identity the API server authenticates.
type User struct {
	Name   string
	Groups []string
	Token  string
}

// ServiceAccountUser is the user the API server authenticates a service
// account's token as: its name, the service-account groups and
// system:authenticated, with a static token that is unique to this
// process and moment (prefixed by the account's name).
func ServiceAccountUser(namespace, name string) User {
	return User{
		Name:   "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		Token:  fmt.Sprintf("%s-%d-%d", name, os.Getpid(), time.Now().UnixNano()),
	}
}

// APIServer is a running etcd + kube-apiserver pair.
type APIServer struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// CAFile holds the certificate authority of the serving certificate.
	CAFile string
	// Admin is in system:masters.
	Admin User
	// Dir holds the data, certificates and logs.
	Dir string

	// SAKey is the service-account signing key (for a controller manager).
	SAKey string

	netns   string
	procs   []*exec.Cmd
	apiBin  string
	apiArgs []string
}

// Options configures StartAPIServer.
type Options struct {
	// Users are extra token identities (e.g. a service account's).
	Users []User
	// BindAddress is where the API server listens (127.0.0.1 when empty).
	BindAddress string
	// Port is the API server's port (a free one when zero).
	Port int
	// ExtraArgs go to kube-apiserver as they are.
	ExtraArgs []string
	// NetNS, when set, is the named network namespace (/run/netns/NAME)
	// etcd and the API server run in; clients dial into it.
	NetNS string
	// Dir holds the data (a test temporary directory when empty; Start
	// needs it set).
	Dir string
	// ToolsDir holds etcd and kube-apiserver (Start only; empty: ToolsDir()).
	ToolsDir string
}

// StartAPIServer starts etcd and kube-apiserver in a temporary directory
// and waits (up to two minutes, the machine may be loaded) until the API
// server is ready. Both stop, by PID, when the test ends.
func StartAPIServer(t TB, opt Options) *APIServer {
	t.Helper()
	etcdBin := Tool(t, "etcd")
	apiBin := Tool(t, "kube-apiserver")
	dir := opt.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	s, err := start(dir, etcdBin, apiBin, opt)
	t.Cleanup(s.Stop)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Start is StartAPIServer for a program: etcd and kube-apiserver from
// opt.ToolsDir, data in opt.Dir (required). On error whatever it started
// is stopped again; otherwise the caller calls Stop. The processes also
// die (Pdeathsig) when the caller's process does.
func Start(opt Options) (*APIServer, error) {
	if opt.Dir == "" {
		return nil, errors.New("kubetest: Start needs Options.Dir")
	}
	dir := opt.ToolsDir
	if dir == "" {
		var err error
		if dir, err = ToolsDir(); err != nil {
			return nil, err
		}
	}
	etcdBin, err := ToolIn(dir, "etcd")
	if err != nil {
		return nil, err
	}
	apiBin, err := ToolIn(dir, "kube-apiserver")
	if err != nil {
		return nil, err
	}
	s, err := start(opt.Dir, etcdBin, apiBin, opt)
	if err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func start(dir, etcdBin, apiBin string, opt Options) (*APIServer, error) {
	s := &APIServer{Dir: dir, CAFile: filepath.Join(dir, "certs", "apiserver.crt"), netns: opt.NetNS}
	s.SAKey = filepath.Join(dir, "sa.key")
	ports, err := freePorts(3)
	if err != nil {
		return s, err
	}
	if opt.Port != 0 {
		ports[2] = opt.Port
	}
	bind := opt.BindAddress
	if bind == "" {
		bind = "127.0.0.1"
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	if err := s.spawn("etcd", etcdBin, "--name=kubetest", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL, "--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return s, err
	}
	saKey, saPub, err := serviceAccountKeys(dir)
	if err != nil {
		return s, err
	}
	s.Admin = User{Name: "kubetest-admin", Groups: []string{"system:masters"}, Token: randomToken()}
	var tokens strings.Builder
	for _, u := range append([]User{s.Admin}, opt.Users...) {
		fmt.Fprintf(&tokens, "%s,%s,%s,\"%s\"\n", u.Token, u.Name, u.Name, strings.Join(u.Groups, ","))
	}
	tokenFile := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(tokens.String()), 0o600); err != nil {
		return s, err
	}
	s.URL = fmt.Sprintf("https://%s", net.JoinHostPort(bind, fmt.Sprint(ports[2])))
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + bind, fmt.Sprintf("--secure-port=%d", ports[2]), "--advertise-address=" + bind,
		"--cert-dir=" + filepath.Join(dir, "certs"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + saPub, "--service-account-signing-key-file=" + saKey,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=Node,RBAC",
		"--endpoint-reconciler-type=none",
		"--kubelet-preferred-address-types=InternalIP,Hostname",
		"--enable-priority-and-fairness=false",
	}
	s.apiBin, s.apiArgs = apiBin, append(args, opt.ExtraArgs...)
	if err := s.spawn("kube-apiserver", apiBin, s.apiArgs...); err != nil {
		return s, err
	}
	return s, s.waitReady(2 * time.Minute)
}

// StopAPI stops kube-apiserver (by PID) and leaves etcd running: clients
// see the API server go away; RestartAPI brings it back on the same
// address with the same data.
func (s *APIServer) StopAPI() {
	for i, p := range s.procs {
		if logName(p) == "kube-apiserver" {
			stopProc(p)
			s.procs = append(s.procs[:i], s.procs[i+1:]...)
			return
		}
	}
}

// RestartAPI starts kube-apiserver again after StopAPI (same port,
// certificates and etcd) and waits until it is ready.
func (s *APIServer) RestartAPI() error {
	for _, p := range s.procs {
		if logName(p) == "kube-apiserver" {
			return errors.New("kubetest: kube-apiserver is running")
		}
	}
	if err := os.Rename(filepath.Join(s.Dir, "kube-apiserver.log"), filepath.Join(s.Dir, fmt.Sprintf("kube-apiserver.%d.log", time.Now().UnixNano()))); err != nil {
		return err
	}
	if err := s.spawn("kube-apiserver", s.apiBin, s.apiArgs...); err != nil {
		return err
	}
	return s.waitReady(2 * time.Minute)
}

// spawn starts a process whose output goes to <dir>/<name>.log; it dies
// with the test process (Pdeathsig) if the test is killed.
func (s *APIServer) spawn(name, bin string, args ...string) error {
	logf, err := os.Create(filepath.Join(s.Dir, name+".log"))
	if err != nil {
		return err
	}
	argv := append([]string{bin}, args...)
	if s.netns != "" {
		// nsenter execs the program: the PID is the program's own.
		argv = append([]string{"nsenter", "--net=/run/netns/" + s.netns, "--"}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	logf.Close()
	s.procs = append(s.procs, cmd)
	return nil
}

func (s *APIServer) waitReady(limit time.Duration) error {
	cl := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: insecureTLS(), DialContext: s.Dial}}
	deadline := time.Now().Add(limit)
	var last string
	for time.Now().Before(deadline) {
		for _, p := range s.procs {
			if p.ProcessState != nil {
				return fmt.Errorf("%s exited: %s", p.Args[len(p.Args)-1], s.logTail(logName(p)))
			}
		}
		req, _ := http.NewRequest(http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Admin.Token)
		resp, err := cl.Do(req)
		if err == nil {
			body := new(bytes.Buffer)
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d %s", resp.StatusCode, lastLines(body.String(), 3))
		} else {
			last = err.Error()
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready within %v (%s); log: %s", limit, last, s.logTail("kube-apiserver"))
}

func (s *APIServer) logTail(name string) string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, name+".log"))
	return lastLines(string(data), 15)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Stop kills the API server and etcd by PID and waits for them.
func (s *APIServer) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		stopProc(s.procs[i])
	}
	s.procs = nil
}

// stopProc terminates p (SIGKILL after ten seconds) and waits for it.
func stopProc(p *exec.Cmd) {
	_ = p.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.Process.Kill()
		<-done
	}
}

// Config is a client configuration for u.
func (s *APIServer) Config(u User) *rest.Config {
	return &rest.Config{Host: s.URL, BearerToken: u.Token, TLSClientConfig: rest.TLSClientConfig{CAFile: s.CAFile}, Dial: s.Dial}
}

// Client is a clientset authenticated as u.
func (s *APIServer) Client(t TB, u User) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(s.Config(u))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// WriteKubeconfig writes a kubeconfig for u to path.
func (s *APIServer) WriteKubeconfig(path string, u User) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: s.URL, CertificateAuthority: s.CAFile}
	cfg.AuthInfos[u.Name] = &clientcmdapi.AuthInfo{Token: u.Token}
	cfg.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: u.Name}
	cfg.CurrentContext = "kubetest"
	return clientcmd.WriteToFile(*cfg, path)
}

// WaitFor polls cond every 200 ms until it holds or limit passes.
func WaitFor(ctx context.Context, limit time.Duration, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Dial connects from the API server's network namespace (the caller's
// when it has none).
func (s *APIServer) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if s.netns == "" {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := InNetNS(s.netns, func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// InNetNS runs f on an OS thread switched into the named network
// namespace; sockets f creates stay there.
func InNetNS(name string, f func() error) error {
	n, err := ns.GetNS("/run/netns/" + name)
	if err != nil {
		return err
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

func logName(c *exec.Cmd) string {
	for _, a := range c.Args {
		if b := filepath.Base(a); b == "etcd" || b == "kube-apiserver" {
			return b
		}
	}
	return filepath.Base(c.Path)
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// serviceAccountKeys writes a fresh ECDSA key pair for service account
// tokens.
func serviceAccountKeys(dir string) (keyPath, pubPath string, err error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return "", "", err
	}
	pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return "", "", err
	}
	keyPath, pubPath = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	return keyPath, pubPath, os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// insecureTLS is for the readiness poll only: the serving certificate is
// written by the API server while it starts, so there is nothing to pin
// before the first answer; every client after that checks CAFile.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} }

// ApplyRBAC creates the ClusterRoles, ClusterRoleBindings, Roles and
// RoleBindings of a manifest file (other kinds are skipped) and returns how
// many it created, so a test runs with exactly the rights a manifest grants.
// Namespaced objects without a namespace go into namespace.
func ApplyRBAC(t TB, c kubernetes.Interface, path, namespace string) int {
	t.Helper()
	n, err := ApplyRBACFile(c, path, namespace)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ApplyRBACFile is ApplyRBAC returning its error.
func ApplyRBACFile(c kubernetes.Interface, path, namespace string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	ctx := context.Background()
	n := 0
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			return n, err
		}
		switch meta.Kind {
		case "ClusterRole":
			var r rbacv1.ClusterRole
			if err := strict(doc, &r); err != nil {
				return n, err
			}
			_, err = c.RbacV1().ClusterRoles().Create(ctx, &r, metav1.CreateOptions{})
		case "ClusterRoleBinding":
			var b rbacv1.ClusterRoleBinding
			if err := strict(doc, &b); err != nil {
				return n, err
			}
			_, err = c.RbacV1().ClusterRoleBindings().Create(ctx, &b, metav1.CreateOptions{})
		case "Role":
			var r rbacv1.Role
			if err := strict(doc, &r); err != nil {
				return n, err
			}
			if r.Namespace == "" {
				r.Namespace = namespace
			}
			_, err = c.RbacV1().Roles(r.Namespace).Create(ctx, &r, metav1.CreateOptions{})
		case "RoleBinding":
			var b rbacv1.RoleBinding
			if err := strict(doc, &b); err != nil {
				return n, err
			}
			if b.Namespace == "" {
				b.Namespace = namespace
			}
			_, err = c.RbacV1().RoleBindings(b.Namespace).Create(ctx, &b, metav1.CreateOptions{})
		default:
			continue
		}
		if err != nil {
			return n, fmt.Errorf("%s: %s: %v", path, meta.Kind, err)
		}
		n++
	}
	return n, nil
}

// InstallCRDs creates the CustomResourceDefinitions of a manifest file
// (other kinds are skipped) and waits until the API server serves them
// (Established). It returns how many it created.
func InstallCRDs(t TB, cfg *rest.Config, path string) int {
	t.Helper()
	n, err := InstallCRDsFile(cfg, path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// InstallCRDsFile is InstallCRDs returning its error.
func InstallCRDsFile(cfg *rest.Config, path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return 0, err
	}
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	ctx := context.Background()
	var names []string
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return 0, err
		}
		u := &unstructured.Unstructured{Object: obj}
		if obj == nil || u.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if _, err := crds.Create(ctx, u, metav1.CreateOptions{}); err != nil {
			return 0, fmt.Errorf("%s: CRD %s: %v", path, u.GetName(), err)
		}
		names = append(names, u.GetName())
	}
	for _, name := range names {
		ok := WaitFor(ctx, time.Minute, func() bool {
			crd, err := crds.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
					return true
				}
			}
			return false
		})
		if !ok {
			return 0, fmt.Errorf("CRD %s not established within a minute", name)
		}
	}
	return len(names), nil
}

func strict(doc string, into any) error { return yaml.UnmarshalStrict([]byte(doc), into) }
