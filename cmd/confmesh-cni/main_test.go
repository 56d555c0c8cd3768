package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/cni"
	"github.com/confmesh/confmesh/cni/cnitest"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// These tests drive the built binary the way container runtimes do:
// through libcni, from a conflist that chains the reference portmap plugin
// (built from the module cache in TestMain), in fresh network namespaces.

var (
	binDir   string // confmesh-cni and portmap
	buildErr error
	havePM   bool // portmap built and a backend (nft or iptables) present
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "confmesh-cni-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binDir = dir
		buildErr = build(dir)
		_, nftErr := exec.LookPath("nft")
		_, iptErr := exec.LookPath("iptables")
		havePM = buildErr == nil && (nftErr == nil || iptErr == nil)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func build(dir string) error {
	for _, c := range [][]string{
		{"build", "-o", filepath.Join(dir, cni.PluginType), "."},
		{"build", "-o", filepath.Join(dir, "portmap"), "github.com/containernetworking/plugins/plugins/meta/portmap"},
	} {
		cmd := exec.Command(goTool(), c...)
		// Static, as shipped: the agent copies the plugin onto hosts whose
		// libc it does not know.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return nil
}

type env struct {
	t      *testing.T
	hostNS ns.NetNS
	agent  *cnitest.FakeAgent
	socket string
	cni    *libcni.CNIConfig
}

var podCIDR = netip.MustParsePrefix("10.244.3.0/24")

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veths")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	dir := t.TempDir()
	fa, err := cnitest.NewFakeAgent(dir, podCIDR, 1420)
	if err != nil {
		t.Fatal(err)
	}
	fa.SetReady(true, "")
	e := &env{t: t, hostNS: newNS(t), agent: fa, socket: filepath.Join(dir, "agent.sock")}
	// hostNS plays the node's namespace: the plugin runs there (e.in), and
	// the agent admits callers from there only.
	fa.NodeNetNS = e.hostNS.Path()
	if err := fa.Start(e.socket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fa.Stop)
	e.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "cache"), nil)
	return e
}

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// conflist is what the agent would install, pointed at the fake agent,
// with portmap chained when the machine can run it.
func (e *env) conflist(ver string, portmap bool) *libcni.NetworkConfigList {
	e.t.Helper()
	plugins := []any{map[string]any{"type": cni.PluginType, "agentSocket": e.socket, "gcGracePeriod": "0s"}}
	if portmap {
		plugins = append(plugins, map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}})
	}
	b, _ := json.Marshal(map[string]any{"cniVersion": ver, "name": "confmesh", "plugins": plugins})
	l, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func rt(id string, pod ns.NetNS) *libcni.RuntimeConf {
	r := &libcni.RuntimeConf{ContainerID: id, IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}, {"K8S_POD_UID", "uid-" + id},
	}}
	if pod != nil {
		r.NetNS = pod.Path()
	}
	return r
}

// in runs f in the host namespace: exec'd plugins inherit it.
func (e *env) in(f func() error) error { return e.hostNS.Do(func(ns.NetNS) error { return f() }) }

func (e *env) add(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) (*current.Result, error) {
	var res *current.Result
	err := e.in(func() error {
		out, err := e.cni.AddNetworkList(context.Background(), l, r)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(out)
		return err
	})
	return res, err
}

func (e *env) del(l *libcni.NetworkConfigList, r *libcni.RuntimeConf) error {
	return e.in(func() error { return e.cni.DelNetworkList(context.Background(), l, r) })
}

func (e *env) hostVeths() []string {
	var out []string
	_ = e.in(func() error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, cni.HostVethPrefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out
}

func (e *env) assertClean() {
	e.t.Helper()
	if a := e.agent.Allocations(); len(a) != 0 {
		e.t.Errorf("reservations left: %v", a)
	}
	if p := e.agent.Pods(); len(p) != 0 {
		e.t.Errorf("pod records left: %d", len(p))
	}
	if v := e.hostVeths(); len(v) != 0 {
		e.t.Errorf("host veths left: %v", v)
	}
}

func wantCode(t *testing.T, err error, code uint, words ...string) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T): want CNI error %d", err, err, code)
	}
	if e.Code != code {
		t.Fatalf("error %q has code %d, want %d", e, e.Code, code)
	}
	for _, w := range words {
		if !strings.Contains(e.Error(), w) {
			t.Fatalf("error %q does not mention %q", e, w)
		}
	}
}

// uplink connects a "client" namespace to the host namespace, as the
// node's network would: host 198.18.0.1/24, client 198.18.0.2/24.
func (e *env) uplink(client ns.NetNS) {
	e.t.Helper()
	err := e.in(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink0"}, PeerName: "uplink1",
			PeerNamespace: netlink.NsFd(int(client.Fd()))}); err != nil {
			return err
		}
		return configure("uplink0", "198.18.0.1/24")
	})
	if err == nil {
		err = client.Do(func(ns.NetNS) error { return configure("uplink1", "198.18.0.2/24") })
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

func configure(name, cidr string) error {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// serve answers every TCP connection on :port inside pod with greeting.
func serve(t *testing.T, pod ns.NetNS, port int, greeting string) {
	t.Helper()
	var lis net.Listener
	if err := pod.Do(func(ns.NetNS) error {
		var err error
		lis, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(greeting))
			c.Close()
		}
	}()
}

func dial(from ns.NetNS, addr string) (string, error) {
	var got string
	err := from.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		got = string(b)
		return err
	})
	return got, err
}

// TestLibcniLifecycle: ADD (with a port mapping that forwards), CHECK,
// STATUS, GC (keeping the live attachment, reclaiming a leaked one), DEL,
// DEL again, through libcni and the chained portmap plugin.
func TestLibcniLifecycle(t *testing.T) {
	e := newEnv(t)
	if !havePM {
		t.Fatalf("the chained portmap plugin is unavailable (build error: %v); it also needs nft or iptables on this machine: run `make deps` (installs nftables)", buildErr)
	}
	l := e.conflist("1.1.0", true)
	pod := newNS(t)
	r := rt("lifecycle", pod)
	r.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}}}
	res, err := e.add(l, r)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if len(res.IPs) != 1 || !podCIDR.Contains(netip.MustParseAddr(res.IPs[0].Address.IP.String())) {
		t.Fatalf("result IPs %v", res.IPs)
	}

	// The port mapping forwards: client -> host:18080 -> pod:8080.
	serve(t, pod, 8080, "hello from the pod")
	client := newNS(t)
	e.uplink(client)
	if got, err := dial(client, "198.18.0.1:18080"); err != nil || got != "hello from the pod" {
		t.Fatalf("through the port mapping: %q, %v", got, err)
	}

	if err := e.in(func() error { return e.cni.CheckNetworkList(context.Background(), l, r) }); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.in(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) }); err != nil {
		t.Fatalf("STATUS: %v", err)
	}

	// A leak: DEL while the agent is down keeps the reservation.
	pod2 := newNS(t)
	r2 := rt("leaked", pod2)
	if _, err := e.add(l, r2); err != nil {
		t.Fatal(err)
	}
	e.agent.Stop()
	if err := e.del(l, r2); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	if err := e.agent.Start(e.socket); err != nil {
		t.Fatal(err)
	}
	if got := e.agent.Allocations(); len(got) != 2 {
		t.Fatalf("reservations before GC: %v", got)
	}
	gc := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "lifecycle", IfName: "eth0"}}}
	if err := e.in(func() error { return e.cni.GCNetworkList(context.Background(), l, gc) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := e.agent.Allocations(); len(got) != 1 || !strings.HasPrefix(got[0], "lifecycle/eth0=") {
		t.Fatalf("reservations after GC: %v (want only the valid attachment)", got)
	}
	if got, err := dial(client, "198.18.0.1:18080"); err != nil || got != "hello from the pod" {
		t.Fatalf("GC disturbed the live pod: %q, %v", got, err)
	}

	for i := 0; i < 2; i++ {
		if err := e.del(l, r); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if _, err := dial(client, "198.18.0.1:18080"); err == nil {
		t.Fatal("the port mapping still forwards after DEL")
	}
	e.assertClean()
}

// TestLibcniSpecVersions runs ADD, CHECK (0.4.0 on) and DEL through libcni
// in each supported version, chained with portmap when available.
func TestLibcniSpecVersions(t *testing.T) {
	e := newEnv(t)
	for _, ver := range cni.SupportedVersions {
		l := e.conflist(ver, havePM)
		pod := newNS(t)
		r := rt("v"+strings.ReplaceAll(ver, ".", ""), pod)
		res, err := e.add(l, r)
		if err != nil {
			t.Fatalf("%s ADD: %v", ver, err)
		}
		if len(res.Interfaces) != 2 || len(res.IPs) != 1 {
			t.Fatalf("%s result %v", ver, res)
		}
		if testutils.SpecVersionHasCHECK(ver) {
			if err := e.in(func() error { return e.cni.CheckNetworkList(context.Background(), l, r) }); err != nil {
				t.Fatalf("%s CHECK: %v", ver, err)
			}
		}
		if err := e.del(l, r); err != nil {
			t.Fatalf("%s DEL: %v", ver, err)
		}
	}
	e.assertClean()
}

func TestLibcniNotAttested(t *testing.T) {
	e := newEnv(t)
	e.agent.SetReady(false, "not attested yet: join refused: measurement not accepted")
	l := e.conflist("1.1.0", havePM)
	_, err := e.add(l, rt("early", newNS(t)))
	wantCode(t, err, types.ErrTryAgainLater, "not attested yet: join refused")
	err = e.in(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) })
	wantCode(t, err, types.ErrPluginNotAvailable, "not attested yet")
	e.assertClean()
}

func TestLibcniAgentDown(t *testing.T) {
	e := newEnv(t)
	e.agent.Stop()
	l := e.conflist("1.1.0", havePM)
	err := e.in(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) })
	wantCode(t, err, types.ErrPluginNotAvailable, "confmesh agent unreachable", e.socket)
	_, err = e.add(l, rt("down", newNS(t)))
	wantCode(t, err, types.ErrTryAgainLater, "confmesh agent unreachable")
	if err := e.del(l, rt("down", nil)); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
}

// TestParallel: 100 ADDs at once, then 100 DELs at once: no address twice,
// nothing left afterwards; then GC reclaims a deliberately leaked one.
func TestParallel(t *testing.T) {
	const n = 100
	e := newEnv(t)
	l := e.conflist("1.1.0", havePM)
	pods := make([]ns.NetNS, n)
	for i := range pods {
		pods[i] = newNS(t)
	}
	ips := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := e.add(l, rt(fmt.Sprintf("par%03d", i), pods[i]))
			if err == nil {
				ips[i] = res.IPs[0].Address.IP.String()
			}
			errs[i] = err
		}(i)
	}
	wg.Wait()
	seen := map[string]int{}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
		if j, dup := seen[ips[i]]; dup {
			t.Fatalf("ADD %d and %d both got %s", i, j, ips[i])
		}
		seen[ips[i]] = i
	}
	if got := len(e.agent.Allocations()); got != n {
		t.Fatalf("%d reservations, want %d", got, n)
	}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = e.del(l, rt(fmt.Sprintf("par%03d", i), pods[i]))
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	e.assertClean()

	// A reservation nobody will DEL (its runtime lost it): GC reclaims it.
	if _, err := e.agent.IPAM.Allocate(podCIDR, agent.Attachment{ContainerID: "lost", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if err := e.in(func() error { return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{}) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.assertClean()
}

// run execs the binary directly, in the node's namespace, with the given
// environment and stdin.
func (e *env) run(envv []string, stdin string) (*types.Error, string) {
	e.t.Helper()
	return e.runIn(e.hostNS, envv, stdin)
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	pod := newNS(t)
	busy := newNS(t)
	if err := busy.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"})
	}); err != nil {
		t.Fatal(err)
	}
	good := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "confmesh", "type": "confmesh-cni", "agentSocket": %q}`, e.socket)
	addEnv := func(netns, ifname string) []string {
		v := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=bad1"}
		if netns != "" {
			v = append(v, "CNI_NETNS="+netns)
		}
		if ifname != "" {
			v = append(v, "CNI_IFNAME="+ifname)
		}
		return v
	}
	for _, c := range []struct {
		name  string
		env   []string
		stdin string
		code  uint
		words []string
	}{
		{"malformed JSON", addEnv(pod.Path(), "eth0"), `{"cniVersion": "1.1.0", "name": `, types.ErrDecodingFailure, []string{"not valid JSON"}},
		{"missing name", addEnv(pod.Path(), "eth0"), `{"cniVersion": "1.1.0", "type": "confmesh-cni"}`, types.ErrInvalidNetworkConfig, []string{`"name" is missing`}},
		{"missing cniVersion", addEnv(pod.Path(), "eth0"), `{"name": "confmesh", "type": "confmesh-cni"}`, types.ErrIncompatibleCNIVersion, []string{`"cniVersion" is missing`}},
		{"unknown cniVersion", addEnv(pod.Path(), "eth0"), `{"cniVersion": "7.0.0", "name": "confmesh"}`, types.ErrIncompatibleCNIVersion, []string{`"7.0.0" is not supported`}},
		{"relative agentSocket", addEnv(pod.Path(), "eth0"), `{"cniVersion": "1.1.0", "name": "confmesh", "agentSocket": "x.sock"}`, types.ErrInvalidNetworkConfig, []string{"agentSocket"}},
		{"missing CNI_NETNS", addEnv("", "eth0"), good, types.ErrInvalidEnvironmentVariables, []string{"CNI_NETNS"}},
		{"missing CNI_IFNAME", addEnv(pod.Path(), ""), good, types.ErrInvalidEnvironmentVariables, []string{"CNI_IFNAME"}},
		{"missing CNI_CONTAINERID", []string{"CNI_COMMAND=ADD", "CNI_NETNS=" + pod.Path(), "CNI_IFNAME=eth0"}, good, types.ErrInvalidEnvironmentVariables, []string{"CNI_CONTAINERID"}},
		{"netns does not exist", addEnv("/run/netns/confmesh-nope", "eth0"), good, types.ErrUnknownContainer, []string{"CNI_NETNS", "does not exist"}},
		{"interface already present", addEnv(busy.Path(), "eth0"), good, types.ErrInvalidEnvironmentVariables, []string{"CNI_IFNAME", `"eth0" already exists`}},
		{"unknown command", []string{"CNI_COMMAND=FROB"}, good, types.ErrInvalidEnvironmentVariables, []string{"FROB"}},
	} {
		ce, out := e.run(c.env, c.stdin)
		if ce == nil {
			t.Errorf("%s: succeeded: %s", c.name, out)
			continue
		}
		if ce.Code != c.code {
			t.Errorf("%s: code %d (%s), want %d", c.name, ce.Code, ce.Error(), c.code)
		}
		for _, w := range c.words {
			if !strings.Contains(ce.Error(), w) {
				t.Errorf("%s: %q does not mention %q", c.name, ce.Error(), w)
			}
		}
	}
	e.assertClean()
	if err := busy.Do(func(ns.NetNS) error { _, err := netlinksafe.LinkByName("eth0"); return err }); err != nil {
		t.Fatalf("the pod's existing eth0 was touched: %v", err)
	}

	// VERSION and the about text.
	if ce, out := e.run([]string{"CNI_COMMAND=VERSION"}, `{"cniVersion": "1.1.0"}`); ce != nil || !strings.Contains(out, `"0.3.0"`) || !strings.Contains(out, `"1.1.0"`) {
		t.Fatalf("VERSION: %v %s", ce, out)
	}
}

// runIn execs the binary in the network namespace where (not the node's
// own, e.hostNS, unless where is it) with the given environment and stdin.
func (e *env) runIn(where ns.NetNS, envv []string, stdin string) (*types.Error, string) {
	e.t.Helper()
	var out, stderr bytes.Buffer
	err := where.Do(func(ns.NetNS) error {
		cmd := exec.Command(filepath.Join(binDir, cni.PluginType))
		cmd.Env = append([]string{"CNI_PATH=" + binDir}, envv...)
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &stderr
		return cmd.Run()
	})
	if err == nil {
		return nil, out.String()
	}
	var ce types.Error
	if jerr := json.Unmarshal(out.Bytes(), &ce); jerr != nil {
		e.t.Fatalf("failed (%v) without an error result on stdout: %q (stderr %q)", err, out.String(), stderr.String())
	}
	return &ce, out.String()
}

// sysctls reads the forwarding switches the plugin could touch in n.
func sysctls(t *testing.T, n ns.NetNS) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := n.Do(func(ns.NetNS) error {
		for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			b, err := os.ReadFile("/proc/sys/" + k)
			if err != nil {
				return err
			}
			out[k] = strings.TrimSpace(string(b))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func linkNames(t *testing.T, n ns.NetNS) []string {
	t.Helper()
	var names []string
	err := n.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// TestWrongNamespaceRefused (issue 9, item 9): the plugin binary exec'd
// from a network namespace other than the node's (the one the agent runs
// in) is refused with CNI error 101 before it changes anything: ADD turns
// on no forwarding and creates no interface there or in the pod, reserves
// no address; DEL and GC from there leave a live pod's interface and
// reservation alone; STATUS says the plugin is not available from there.
func TestWrongNamespaceRefused(t *testing.T) {
	e := newEnv(t)
	wrong, pod := newNS(t), newNS(t)
	if err := wrong.Do(func(ns.NetNS) error {
		for _, k := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
			if err := os.WriteFile("/proc/sys/"+k, []byte("0"), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantSys, wantLinks := sysctls(t, wrong), linkNames(t, wrong)
	conf := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "confmesh", "type": "confmesh-cni", "agentSocket": %q}`, e.socket)
	envFor := func(cmd, id string, netns ns.NetNS) []string {
		return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns.Path(), "CNI_IFNAME=eth0",
			"CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + id + ";K8S_POD_UID=uid-" + id}
	}
	unchanged := func(what string) {
		t.Helper()
		if got := sysctls(t, wrong); fmt.Sprint(got) != fmt.Sprint(wantSys) {
			t.Errorf("%s: sysctls in the wrong namespace went from %v to %v", what, wantSys, got)
		}
		if got := linkNames(t, wrong); len(got) != len(wantLinks) {
			t.Errorf("%s: interfaces in the wrong namespace went from %v to %v", what, wantLinks, got)
		}
	}
	refused := func(what string, ce *types.Error, out string, code uint) {
		t.Helper()
		switch {
		case ce == nil:
			t.Errorf("%s from another network namespace succeeded: %s", what, out)
		case ce.Code != code || !strings.Contains(ce.Msg, "network namespace"):
			t.Errorf("%s from another network namespace: code %d %q, want %d naming the network namespace", what, ce.Code, ce.Error(), code)
		default:
			t.Logf("%s refused: %d %s", what, ce.Code, ce.Msg)
		}
	}

	ce, out := e.runIn(wrong, envFor("ADD", "wrongadd", pod), conf)
	refused("ADD", ce, out, 101)
	unchanged("ADD")
	if got := linkNames(t, pod); len(got) != 1 {
		t.Errorf("ADD from the wrong namespace: the pod has interfaces %v, want only lo", got)
	}
	e.assertClean()

	// A live pod, networked from the node's namespace.
	live := newNS(t)
	if ce, out := e.run(envFor("ADD", "live", live), conf); ce != nil {
		t.Fatalf("ADD from the node's namespace: %v", ce)
	} else if !strings.Contains(out, `"ips"`) {
		t.Fatalf("ADD result %s", out)
	}
	ce, out = e.runIn(wrong, envFor("DEL", "live", live), conf)
	refused("DEL", ce, out, 101)
	ce, out = e.runIn(wrong, []string{"CNI_COMMAND=GC"}, conf)
	refused("GC", ce, out, 101)
	ce, out = e.runIn(wrong, []string{"CNI_COMMAND=STATUS"}, conf)
	refused("STATUS", ce, out, types.ErrPluginNotAvailable)
	unchanged("DEL, GC, STATUS")
	if got := linkNames(t, live); len(got) != 2 {
		t.Errorf("the live pod's interfaces after DEL/GC from the wrong namespace: %v, want lo and eth0", got)
	}
	if got := e.agent.Allocations(); len(got) != 1 {
		t.Errorf("reservations after DEL/GC from the wrong namespace: %v, want the live pod's", got)
	}
	if ce, _ := e.run(envFor("DEL", "live", live), conf); ce != nil {
		t.Fatalf("DEL from the node's namespace: %v", ce)
	}
	e.assertClean()
}
