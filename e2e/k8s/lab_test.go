//go:build linux

package k8s_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
	"k8s.io/client-go/kubernetes"
)

// The lab's addresses are those the sim overlay names (its confmesh-cluster
// ConfigMap): the API server on the control-plane namespace, node 1 hosts
// the confmesh control plane, node 3 runs a debug TEE.
const (
	apiIP      = "198.19.64.1"
	bridgeIP   = "198.19.64.254"
	underlay   = 24
	nodeCount  = 3
	debugNode  = 3
	controlCPU = "confmesh.io/controlplane"
)

func nodeIP(i int) string { return fmt.Sprintf("198.19.64.%d", 10+i) }

// lab is a Kubernetes cluster in network namespaces: the API server,
// controller manager and scheduler in <prefix>-cp, and per node a network
// namespace <prefix>-n<i> plus a mount namespace in which that node's
// containerd and kubelet run, so that the hostPaths the manifests name
// (/var/lib/confmesh, /run/confmesh, /etc/cni/net.d, /opt/cni/bin,
// /var/run/wireguard, /var/lib/kubelet) are the node's own.
type lab struct {
	t      testing.TB
	prefix string
	dir    string
	tools  string
	bin    string // the repo's bin/ (make image)
	ul     string // underlay namespace
	bridge string
	cp     string
	api    *kubetest.APIServer
	admin  kubernetes.Interface
	kcfg   string // admin kubeconfig
	nodes  []*node
	procs  []*proc
	// createdDirs are host directories created as mount points.
	createdDirs []string
	mnt         string
	namespaces  []string
	cgroups     []string
}

type node struct {
	i      int
	name   string
	netns  string
	ip     string
	dir    string
	mntns  string // bind-mounted mount namespace file
	sock   string // containerd socket
	cgroup string // kubelet's cgroupRoot (and the runtime's pids cgroup prefix)
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func (l *lab) logf(format string, args ...any) {
	l.t.Helper()
	l.t.Logf("%s %s", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	c := exec.Command(name, args...)
	c.Stdout, c.Stderr = &out, &out
	err := c.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

func newLab(t testing.TB) *lab {
	if os.Getenv("CONFMESH_K8S_E2E") == "" {
		t.Skip("the real-cluster e2e runs with `make k8s-e2e` (CONFMESH_K8S_E2E=1): it builds Kubernetes and containerd first")
	}
	if os.Geteuid() != 0 {
		t.Skip("the real-cluster e2e needs root: network and mount namespaces, cgroups, containerd")
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl", "containerd", "containerd-shim-runc-v2", "ctr", "runc"} {
		kubetest.Tool(t, tool)
	}
	tools, _ := kubetest.ToolsDir()
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "bin")
	for _, f := range []string{"confmesh-image.tar", "pause-image.tar", "image/confmesh"} {
		if _, err := os.Stat(filepath.Join(bin, f)); err != nil {
			t.Skipf("%s is not built: run `make image` first (make k8s-e2e does)", filepath.Join(bin, f))
		}
	}
	b := make([]byte, 2)
	_, _ = rand.Read(b)
	prefix := "cmk8s-" + hex.EncodeToString(b)
	dir, err := os.MkdirTemp("", prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, prefix: prefix, dir: dir, tools: tools, bin: bin, bridge: "br0"}
	t.Cleanup(l.teardown)
	return l
}

// spawn starts argv in the given namespaces (nsenter execs it, so the PID
// is the program's own), logging to <dir>/<name>.log.
func (l *lab) spawn(name, netns, mntns string, env []string, argv ...string) *proc {
	l.t.Helper()
	logf, err := os.Create(filepath.Join(l.dir, name+".log"))
	if err != nil {
		l.t.Fatal(err)
	}
	defer logf.Close()
	pre := []string{"nsenter", "--net=/run/netns/" + netns}
	if mntns != "" {
		pre = append(pre, "--mount="+mntns)
	}
	cmd := exec.Command(pre[0], append(append(pre[1:], "--"), argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	l.procs = append(l.procs, p)
	return p
}

func (p *proc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// underlay creates the bridge namespace and attaches a namespace to it.
func (l *lab) setupUnderlay() {
	l.ul = l.prefix + "-ul"
	l.mustNS(l.ul)
	for _, args := range [][]string{
		{"link", "add", l.bridge, "type", "bridge"},
		{"addr", "add", bridgeIP + "/24", "dev", l.bridge},
		{"link", "set", l.bridge, "up"},
	} {
		l.must(run("ip", append([]string{"-n", l.ul}, args...)...))
	}
}

func (l *lab) mustNS(name string) {
	l.t.Helper()
	l.namespaces = append(l.namespaces, name)
	if err := netlab.AddNetns(name); err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) must(_ string, err error) {
	l.t.Helper()
	if err != nil {
		l.t.Fatal(err)
	}
}

func (l *lab) attach(name, port, addr string) {
	l.t.Helper()
	l.mustNS(name)
	for _, step := range []struct {
		ns   string
		args []string
	}{
		{name, []string{"link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", l.ul}},
		{l.ul, []string{"link", "set", port, "master", l.bridge}},
		{l.ul, []string{"link", "set", port, "up"}},
		{name, []string{"addr", "add", addr + "/24", "dev", "eth0"}},
		{name, []string{"link", "set", "eth0", "up"}},
		{name, []string{"route", "add", "default", "via", bridgeIP}},
	} {
		l.must(run("ip", append([]string{"-n", step.ns}, step.args...)...))
	}
}

// startControlPlane starts etcd, the API server (with a token per node
// and for the admin), the controller manager and the scheduler.
func (l *lab) startControlPlane() {
	l.cp = l.prefix + "-cp"
	l.attach(l.cp, "cp", apiIP)
	var users []kubetest.User
	for i := 1; i <= nodeCount; i++ {
		name := l.nodeName(i)
		users = append(users, kubetest.User{Name: "system:node:" + name, Groups: []string{"system:nodes"}, Token: "node-token-" + name})
	}
	apiDir := filepath.Join(l.dir, "apiserver")
	if err := os.MkdirAll(apiDir, 0o700); err != nil {
		l.t.Fatal(err)
	}
	l.api = kubetest.StartAPIServer(l.t, kubetest.Options{
		Users: users, BindAddress: apiIP, Port: 6443, NetNS: l.cp, Dir: apiDir,
		ExtraArgs: []string{"--enable-admission-plugins=NodeRestriction", "--allow-privileged=true"},
	})
	l.admin = l.api.Client(l.t, l.api.Admin)
	l.kcfg = filepath.Join(l.dir, "admin.kubeconfig")
	if err := l.api.WriteKubeconfig(l.kcfg, l.api.Admin); err != nil {
		l.t.Fatal(err)
	}
	l.spawn("kube-controller-manager", l.cp, "", nil, filepath.Join(l.tools, "kube-controller-manager"),
		"--kubeconfig="+l.kcfg, "--leader-elect=false", "--service-account-private-key-file="+l.api.SAKey,
		"--root-ca-file="+l.api.CAFile, "--use-service-account-credentials=false", "--controllers=*,-nodeipam",
		"--bind-address=127.0.0.1", "--secure-port=10257", "--node-monitor-grace-period=20s")
	l.spawn("kube-scheduler", l.cp, "", nil, filepath.Join(l.tools, "kube-scheduler"),
		"--kubeconfig="+l.kcfg, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259")
}

// mntDir is a private mount (a bind of itself) holding the mount
// namespace files: a namespace file cannot live on a shared mount.
func (l *lab) mntDir() string {
	d := filepath.Join(l.dir, "mnt")
	if l.mnt == "" {
		if err := os.MkdirAll(d, 0o700); err != nil {
			l.t.Fatal(err)
		}
		l.must(run("mount", "--bind", d, d))
		l.mnt = d
		l.must(run("mount", "--make-private", d))
	}
	return d
}

func (l *lab) nodeName(i int) string { return fmt.Sprintf("confmesh-k8s-n%d", i) }

// kubectl runs the cached kubectl against the lab (from the control-plane
// namespace, where the API server's address is reachable).
func (l *lab) kubectl(args ...string) (string, error) {
	argv := append([]string{"--net=/run/netns/" + l.cp, "--", filepath.Join(l.tools, "kubectl"), "--kubeconfig=" + l.kcfg}, args...)
	return run("nsenter", argv...)
}

// nodeMounts are the host paths each node has its own copy of.
var nodeMounts = []string{"/var/lib/confmesh", "/run/confmesh", "/run/wireguard", "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/kubelet", "/var/log/pods", "/var/log/containers"}

// startNode creates node i: its network namespace, a persistent mount
// namespace with the node's own directories bound over nodeMounts (and the
// shared simulated CA), containerd with the images imported, and kubelet.
func (l *lab) startNode(i int, simCA string) *node {
	n := &node{i: i, name: l.nodeName(i), netns: fmt.Sprintf("%s-n%d", l.prefix, i), ip: nodeIP(i),
		dir: filepath.Join(l.dir, fmt.Sprintf("n%d", i)), cgroup: fmt.Sprintf("/%s-n%d", l.prefix, i)}
	l.nodes = append(l.nodes, n)
	l.attach(n.netns, fmt.Sprintf("n%d", i), n.ip)
	// A persistent mount namespace, a slave of the host's: the host's
	// mounts (new network namespaces) reach it, its own stay inside.
	n.mntns = filepath.Join(l.mntDir(), fmt.Sprintf("n%d", i))
	l.must(run("touch", n.mntns))
	l.must(run("unshare", "--mount="+n.mntns, "--propagation=slave", "true"))
	in := func(args ...string) {
		l.t.Helper()
		l.must(run("nsenter", append([]string{"--mount=" + n.mntns, "--"}, args...)...))
	}
	for _, m := range nodeMounts {
		if _, err := os.Stat(m); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(m, 0o755); err != nil {
				l.t.Fatal(err)
			}
			l.createdDirs = append(l.createdDirs, m)
		}
		own := filepath.Join(n.dir, "root", m)
		if err := os.MkdirAll(own, 0o755); err != nil {
			l.t.Fatal(err)
		}
		in("mount", "--bind", own, m)
	}
	if err := os.MkdirAll(filepath.Join(n.dir, "root", "/var/lib/confmesh/sim-ca"), 0o700); err != nil {
		l.t.Fatal(err)
	}
	in("mount", "--bind", simCA, "/var/lib/confmesh/sim-ca")
	// Pod network namespaces that containerd mounts here must reach the
	// agent's container (HostToContainer propagation).
	in("mount", "--make-rshared", "/run/netns")

	rt := filepath.Join(n.dir, "containerd")
	n.sock = filepath.Join(rt, "containerd.sock")
	cfg := fmt.Sprintf(containerdConfig, rt, rt, n.sock, n.sock, filepath.Join(l.tools, "runc"))
	if err := os.MkdirAll(rt, 0o700); err != nil {
		l.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rt, "config.toml"), []byte(cfg), 0o600); err != nil {
		l.t.Fatal(err)
	}
	env := []string{"PATH=" + l.tools + ":" + os.Getenv("PATH")}
	ctrd := l.spawn(n.name+"-containerd", n.netns, n.mntns, env, filepath.Join(l.tools, "containerd"), "--config", filepath.Join(rt, "config.toml"))
	// containerd and its shims (which outlive it) go into a pids cgroup of
	// ours, so that teardown finds every process of the node by cgroup.
	cg := filepath.Join("/sys/fs/cgroup/pids", n.cgroup+"-runtime")
	if err := os.Mkdir(cg, 0o755); err != nil {
		l.t.Fatal(err)
	}
	l.cgroups = append(l.cgroups, cg)
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(ctrd.cmd.Process.Pid)), 0o644); err != nil {
		l.t.Fatal(err)
	}
	l.waitFor(fmt.Sprintf("%s containerd socket", n.name), time.Minute, func() bool {
		_, err := os.Stat(n.sock)
		return err == nil && !ctrd.exited()
	})
	for _, img := range []string{"confmesh-image.tar", "pause-image.tar"} {
		l.must(run(filepath.Join(l.tools, "ctr"), "--address", n.sock, "-n", "k8s.io", "images", "import", filepath.Join(l.bin, img)))
	}

	// The kubelet's cgroupRoot must exist in every (v1) hierarchy.
	for _, ctrl := range cgroupControllers() {
		d := filepath.Join("/sys/fs/cgroup", ctrl, n.cgroup)
		if err := os.Mkdir(d, 0o755); err != nil {
			l.t.Fatal(err)
		}
		if ctrl == "cpuset" {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				v, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/cpuset", f))
				if err == nil {
					err = os.WriteFile(filepath.Join(d, f), v, 0o644)
				}
				if err != nil {
					l.t.Fatal(err)
				}
			}
		}
	}
	kc := filepath.Join(n.dir, "kubelet.kubeconfig")
	if err := l.api.WriteKubeconfig(kc, kubetest.User{Name: "system:node:" + n.name, Token: "node-token-" + n.name}); err != nil {
		l.t.Fatal(err)
	}
	kcfg := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(kcfg, []byte(fmt.Sprintf(kubeletConfig, n.cgroup, n.sock)), 0o600); err != nil {
		l.t.Fatal(err)
	}
	labels := ""
	switch i {
	case 1, 2: // the control plane's two replicas
		labels = controlCPU + "=true"
	case debugNode:
		labels = "confmesh.io/sim-tee=debug"
	}
	l.spawn(n.name+"-kubelet", n.netns, n.mntns, env, filepath.Join(l.tools, "kubelet"),
		"--config="+kcfg, "--kubeconfig="+kc, "--root-dir=/var/lib/kubelet", "--cert-dir="+filepath.Join(n.dir, "kubelet-pki"),
		"--hostname-override="+n.name, "--node-ip="+n.ip, "--node-labels="+labels, "--v=1")
	return n
}

// containerdConfig: root, state, socket, ttrpc socket, runc.
const containerdConfig = `version = 3
root = %q
state = "%s/state"
[grpc]
  address = %q
[ttrpc]
  address = "%s.ttrpc"
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      SystemdCgroup = false
      BinaryName = %q
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/opt/cni/bin']
    conf_dir = '/etc/cni/net.d'
    use_internal_loopback = true
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = 'localhost/confmesh/pause:1'
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`

// kubeletConfig: cgroupRoot, containerd socket.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: %s
failSwapOn: false
containerRuntimeEndpoint: unix://%s
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
healthzPort: 0
resolvConf: ""
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 30
serializeImagePulls: false
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
`

func (l *lab) waitFor(what string, limit time.Duration, cond func() bool) {
	l.t.Helper()
	if !kubetest.WaitFor(context.Background(), limit, cond) {
		l.t.Fatalf("%s: not within %v", what, limit)
	}
}

// simCA creates the simulated TEE's CA that every node and the control
// plane share (a hostPath in the sim overlay).
func (l *lab) simCA() string {
	dir := filepath.Join(l.dir, "sim-ca")
	if _, err := sim.OpenCA(dir, ""); err != nil {
		l.t.Fatal(err)
	}
	return dir
}

// teardown stops everything by PID (kubelets, then every process in each
// node's runtime cgroup and pod cgroups, then the control plane), removes
// the mount namespaces, network namespaces, cgroups and directories it
// created.
func (l *lab) teardown() {
	if l.t.Failed() {
		l.dumpLogs()
	}
	for i := len(l.procs) - 1; i >= 0; i-- {
		if strings.HasSuffix(l.procs[i].name, "-kubelet") {
			l.procs[i].stop()
		}
	}
	for _, n := range l.nodes {
		killCgroupTree(filepath.Join("/sys/fs/cgroup/pids", n.cgroup))
	}
	for i := len(l.procs) - 1; i >= 0; i-- {
		l.procs[i].stop()
	}
	for _, cg := range l.cgroups {
		killCgroupTree(cg)
	}
	if l.api != nil {
		l.api.Stop()
	}
	for _, n := range l.nodes {
		// The kubelet also makes its root in the hybrid "unified" (v2) tree.
		for _, ctrl := range append(cgroupControllers(), "unified") {
			removeCgroupTree(filepath.Join("/sys/fs/cgroup", ctrl, n.cgroup))
		}
		if n.mntns != "" {
			_ = syscall.Unmount(n.mntns, syscall.MNT_DETACH)
		}
	}
	for _, cg := range l.cgroups {
		removeCgroupTree(cg)
	}
	if l.mnt != "" {
		_ = syscall.Unmount(l.mnt, syscall.MNT_DETACH)
	}
	for i := len(l.namespaces) - 1; i >= 0; i-- {
		if err := netlab.DelNetns(l.namespaces[i]); err != nil {
			l.t.Errorf("teardown: %v", err)
		}
	}
	for _, d := range l.createdDirs {
		_ = os.Remove(d)
	}
	if os.Getenv("CONFMESH_K8S_KEEP_LOGS") == "" || !l.t.Failed() {
		_ = os.RemoveAll(l.dir)
	} else {
		l.t.Logf("logs kept in %s", l.dir)
	}
}

// cgroupControllers are the cgroup v1 hierarchies mounted under
// /sys/fs/cgroup (a directory each; "unified" is not one).
func cgroupControllers() []string {
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	var out []string
	for _, e := range entries {
		if e.IsDir() && e.Name() != "unified" {
			if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", e.Name(), "cgroup.procs")); err == nil {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

// alive fails the test at once when a lab process has exited.
func (l *lab) alive() error {
	for _, p := range l.procs {
		if p.exited() {
			return fmt.Errorf("%s exited (log: %s)", p.name, filepath.Join(l.dir, p.name+".log"))
		}
	}
	return nil
}

// killCgroupTree SIGKILLs every process in a cgroup (v1) and its
// children, until none is left (bounded).
func killCgroupTree(dir string) {
	for range 50 {
		pids := cgroupPIDs(dir)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cgroupPIDs(dir string) []int {
	var pids []int
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		data, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupTree removes a cgroup directory and its children, deepest
// first (cgroup directories are removed with rmdir).
func removeCgroupTree(dir string) {
	var dirs []string
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = syscall.Rmdir(dirs[i])
	}
}

func (l *lab) dumpLogs() {
	entries, _ := filepath.Glob(filepath.Join(l.dir, "*.log"))
	for _, e := range entries {
		data, _ := os.ReadFile(e)
		l.t.Logf("=== %s (last lines)\n%s", filepath.Base(e), lastLines(string(data), 25))
	}
	// What the cluster says of confmesh's pods, and their own last lines.
	if out, err := l.kubectl("get", "pods", "-A", "-o", "wide"); err == nil {
		l.t.Logf("=== kubectl get pods -A -o wide\n%s", out)
	}
	if out, err := l.kubectl("get", "events", "-n", "confmesh-system", "--sort-by=.lastTimestamp"); err == nil {
		l.t.Logf("=== kubectl get events -n confmesh-system\n%s", lastLines(out, 30))
	}
	names, err := l.kubectl("get", "pods", "-n", "confmesh-system", "-o", "name")
	if err != nil {
		return
	}
	for _, pod := range strings.Fields(names) {
		if out, err := l.kubectl("logs", "-n", "confmesh-system", pod, "--all-containers", "--tail=20"); err == nil {
			l.t.Logf("=== kubectl logs %s (last lines)\n%s", pod, out)
		}
	}
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
