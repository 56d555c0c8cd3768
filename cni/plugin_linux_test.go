package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/cni/cnitest"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// These tests run the plugin's commands in-process (as ptp's tests do)
// with pkg/testutils, each in a fresh "host" network namespace with fresh
// pod namespaces, against a fake agent on a real unix socket. The built
// binary under libcni is tested in cmd/confmesh-cni.

const testMTU = 1420

var testCIDR = netip.MustParsePrefix("10.244.7.0/24")

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and veths")
	}
}

type env struct {
	t      *testing.T
	hostNS ns.NetNS
	agent  *cnitest.FakeAgent
	socket string
	plugin *Plugin
	log    bytes.Buffer
}

func newEnv(t *testing.T, cidr netip.Prefix) *env {
	t.Helper()
	requireRoot(t)
	e := &env{t: t, hostNS: newNS(t)}
	dir := t.TempDir()
	fa, err := cnitest.NewFakeAgent(dir, cidr, testMTU)
	if err != nil {
		t.Fatal(err)
	}
	fa.SetReady(true, "")
	e.agent, e.socket = fa, filepath.Join(dir, "agent.sock")
	if err := fa.Start(e.socket); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fa.Stop)
	e.plugin = &Plugin{Log: &e.log}
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

func (e *env) conf(ver string, extra map[string]any) []byte {
	m := map[string]any{"cniVersion": ver, "name": "confmesh", "type": PluginType, "agentSocket": e.socket}
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func prevResult(t *testing.T, r types.Result) map[string]any {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (e *env) args(id string, pod ns.NetNS, conf []byte) *skel.CmdArgs {
	a := &skel.CmdArgs{ContainerID: id, IfName: "eth0", StdinData: conf,
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=payments;K8S_POD_NAME=" + id + ";K8S_POD_UID=uid-" + id}
	if pod != nil {
		a.Netns = pod.Path()
	}
	return a
}

func (e *env) add(a *skel.CmdArgs) (types.Result, error) {
	var r types.Result
	err := e.hostNS.Do(func(ns.NetNS) error {
		var err error
		r, _, err = testutils.CmdAddWithArgs(a, func() error { return e.plugin.Add(a) })
		return err
	})
	return r, err
}

func (e *env) check(a *skel.CmdArgs) error {
	return e.hostNS.Do(func(ns.NetNS) error {
		return testutils.CmdCheckWithArgs(a, func() error { return e.plugin.Check(a) })
	})
}

func (e *env) del(a *skel.CmdArgs) error {
	return e.hostNS.Do(func(ns.NetNS) error {
		return testutils.CmdDelWithArgs(a, func() error { return e.plugin.Del(a) })
	})
}

func (e *env) inHost(f func() error) error {
	return e.hostNS.Do(func(ns.NetNS) error { return f() })
}

// hostVeths lists the confmesh host veths in the host namespace.
func (e *env) hostVeths() []string {
	var out []string
	_ = e.inHost(func() error {
		links, err := netlinksafe.LinkList()
		if err != nil {
			e.t.Fatal(err)
		}
		for _, l := range links {
			if strings.HasPrefix(l.Attrs().Name, HostVethPrefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out
}

// assertClean fails unless no reservation, pod record or host veth is left.
func (e *env) assertClean() {
	e.t.Helper()
	if a := e.agent.Allocations(); len(a) != 0 {
		e.t.Errorf("reservations left: %v", a)
	}
	if p := e.agent.Pods(); len(p) != 0 {
		e.t.Errorf("pod records left: %v", p)
	}
	if v := e.hostVeths(); len(v) != 0 {
		e.t.Errorf("host veths left: %v", v)
	}
}

func wantCode(t *testing.T, err error, code uint, words ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded; want CNI error %d", code)
	}
	if got := cniCode(t, err); got != code {
		t.Fatalf("error %q has code %d, want %d", err, got, code)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not mention %q", err, w)
		}
	}
}

// TestSpecVersions is the ptp-style matrix: ADD, CHECK, DEL, DEL again, in
// every supported spec version.
func TestSpecVersions(t *testing.T) {
	for _, ver := range SupportedVersions {
		t.Run(ver, func(t *testing.T) {
			e := newEnv(t, testCIDR)
			pod := newNS(t)
			a := e.args("c0ffee"+strings.ReplaceAll(ver, ".", ""), pod, e.conf(ver, nil))
			r, err := e.add(a)
			if err != nil {
				t.Fatal(err)
			}
			if r.Version() != ver {
				t.Fatalf("result version %s, want %s", r.Version(), ver)
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatal(err)
			}
			hostVeth := HostVethName(a.ContainerID, "eth0")
			if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostVeth || res.Interfaces[1].Name != "eth0" ||
				res.Interfaces[1].Sandbox != pod.Path() || res.Interfaces[0].Sandbox != "" {
				t.Fatalf("interfaces %v", res.Interfaces)
			}
			if len(res.IPs) != 1 || *res.IPs[0].Interface != 1 || !res.IPs[0].Gateway.Equal(e.agent.Gateway().AsSlice()) {
				t.Fatalf("IPs %v", res.IPs)
			}
			podIP, _ := netip.AddrFromSlice(res.IPs[0].Address.IP.To4())
			if ones, _ := res.IPs[0].Address.Mask.Size(); ones != 32 || !testCIDR.Contains(podIP) || podIP == e.agent.Gateway() {
				t.Fatalf("pod address %v", res.IPs[0].Address)
			}
			if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
				t.Fatalf("routes %v", res.Routes)
			}
			if got := e.agent.Allocations(); len(got) != 1 || got[0] != a.ContainerID+"/eth0="+podIP.String() {
				t.Fatalf("reservations %v", got)
			}
			if p := e.agent.Pods()[a.ContainerID]; p == nil || p.Ip != podIP.String() || p.Netns != pod.Path() ||
				p.Interface != "eth0" || p.Namespace != "payments" || p.Name != a.ContainerID || p.Uid != "uid-"+a.ContainerID {
				t.Fatalf("registered pod %v", p)
			}
			err = pod.Do(func(ns.NetNS) error {
				l, err := netlinksafe.LinkByName("eth0")
				if err != nil {
					return err
				}
				if l.Attrs().MTU != testMTU {
					return fmt.Errorf("pod MTU %d, want %d", l.Attrs().MTU, testMTU)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			assertPodReachesGateway(t, e, pod)

			if SpecVersionHasCheck(ver) {
				ca := *a
				ca.StdinData = e.conf(ver, map[string]any{"prevResult": prevResult(t, r)})
				if err := e.check(&ca); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}

			da := *a
			if ver != "0.3.0" && ver != "0.3.1" {
				da.StdinData = e.conf(ver, map[string]any{"prevResult": prevResult(t, r)})
			}
			for i := 0; i < 2; i++ { // DEL is idempotent
				if err := e.del(&da); err != nil {
					t.Fatalf("DEL #%d: %v", i+1, err)
				}
			}
			_ = pod.Do(func(ns.NetNS) error {
				if _, err := netlinksafe.LinkByName("eth0"); err == nil {
					t.Error("eth0 still in the pod after DEL")
				}
				return nil
			})
			e.assertClean()
		})
	}
}

// SpecVersionHasCheck is whether CHECK exists in ver (0.4.0 on).
func SpecVersionHasCheck(ver string) bool { return testutils.SpecVersionHasCHECK(ver) }

// assertPodReachesGateway opens a TCP connection from the pod to a
// listener on the gateway address in the host namespace: ARP, the
// pod's routes and the host's route back all have to work.
func assertPodReachesGateway(t *testing.T, e *env, pod ns.NetNS) {
	t.Helper()
	var lis net.Listener
	if err := e.inHost(func() error {
		var err error
		lis, err = net.Listen("tcp4", net.JoinHostPort(e.agent.Gateway().String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		c, err := lis.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hello pod"))
			c.Close()
		}
	}()
	err := pod.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", lis.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		if err != nil || string(b) != "hello pod" {
			return fmt.Errorf("read %q, %v", b, err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("pod -> gateway: %v", err)
	}
}

func TestCheckFindsDamage(t *testing.T) {
	e := newEnv(t, testCIDR)
	pod := newNS(t)
	a := e.args("damaged", pod, e.conf("1.0.0", nil))
	r, err := e.add(a)
	if err != nil {
		t.Fatal(err)
	}
	ca := *a
	ca.StdinData = e.conf("1.0.0", map[string]any{"prevResult": prevResult(t, r)})
	// The reservation is part of what CHECK checks.
	if _, err := e.agent.IPAM.Release(attachment(a)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.check(&ca), types.ErrInternal, "no address reservation")
	// A reservation of another address than the interface's is found.
	if _, err := e.agent.IPAM.Allocate(testCIDR, attachment(a)); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.check(&ca), types.ErrInternal, "the agent reserved")
	// A removed default route is found.
	if err := pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: e.agent.Gateway().AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, e.check(&ca), types.ErrInternal, "no route to 0.0.0.0/0")
	// CHECK without prevResult is a configuration error.
	wantCode(t, e.check(a), types.ErrInvalidNetworkConfig, "prevResult")
	if err := e.del(a); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestDelWithoutNetns(t *testing.T) {
	e := newEnv(t, testCIDR)
	pod := newNS(t)
	a := e.args("nonetns", pod, e.conf("1.1.0", nil))
	if _, err := e.add(a); err != nil {
		t.Fatal(err)
	}
	da := *a
	da.Netns = ""
	if err := e.del(&da); err != nil {
		t.Fatalf("DEL without CNI_NETNS: %v", err)
	}
	// The derived host veth name finds the pair, so the pod side is gone too.
	_ = pod.Do(func(ns.NetNS) error {
		if _, err := netlinksafe.LinkByName("eth0"); err == nil {
			t.Error("eth0 left in the pod")
		}
		return nil
	})
	e.assertClean()
}

func TestDelWhenNetnsGone(t *testing.T) {
	e := newEnv(t, testCIDR)
	pod, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	a := e.args("gone", pod, e.conf("1.1.0", nil))
	if _, err := e.add(a); err != nil {
		t.Fatal(err)
	}
	pod.Close()
	if err := testutils.UnmountNS(pod); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := e.del(a); err != nil {
			t.Fatalf("DEL #%d with the netns gone: %v", i+1, err)
		}
	}
	e.assertClean()
}

func TestAddRefusedUntilReady(t *testing.T) {
	e := newEnv(t, testCIDR)
	e.agent.SetReady(false, "not attested yet: control plane unreachable")
	pod := newNS(t)
	a := e.args("early", pod, e.conf("1.1.0", nil))
	_, err := e.add(a)
	wantCode(t, err, types.ErrTryAgainLater, "not ready", "not attested yet: control plane unreachable")
	wantCode(t, e.plugin.Status(a), types.ErrPluginNotAvailable, "not attested yet")
	e.assertClean()

	e.agent.SetReady(true, "")
	if err := e.plugin.Status(a); err != nil {
		t.Fatalf("STATUS when ready: %v", err)
	}
	if _, err := e.add(a); err != nil {
		t.Fatalf("ADD once ready: %v", err)
	}
	if err := e.del(a); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestAgentDown(t *testing.T) {
	e := newEnv(t, testCIDR)
	pod := newNS(t)
	a := e.args("down", pod, e.conf("1.1.0", nil))
	if _, err := e.add(a); err != nil {
		t.Fatal(err)
	}
	e.agent.Stop()
	b := e.args("down2", newNS(t), e.conf("1.1.0", nil))
	_, err := e.add(b)
	wantCode(t, err, types.ErrTryAgainLater, "confmesh agent unreachable", e.socket)
	wantCode(t, e.plugin.Status(b), types.ErrPluginNotAvailable, "confmesh agent unreachable", e.socket)
	// DEL succeeds and removes the interface; the reservation waits for GC.
	if err := e.del(a); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	if !strings.Contains(e.log.String(), "stays reserved") {
		t.Errorf("no warning about the kept reservation; log: %q", e.log.String())
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("host veths left: %v", v)
	}
	// The agent comes back: GC with an empty valid set reclaims the leak.
	if err := e.agent.Start(e.socket); err != nil {
		t.Fatal(err)
	}
	if got := e.agent.Allocations(); len(got) != 1 {
		t.Fatalf("reservations before GC: %v", got)
	}
	gc := &skel.CmdArgs{StdinData: e.conf("1.1.0", map[string]any{"gcGracePeriod": "0s", "cni.dev/valid-attachments": []any{}})}
	if err := e.inHost(func() error { return e.plugin.GC(gc) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.assertClean()
}

func TestInterfaceAlreadyPresent(t *testing.T) {
	e := newEnv(t, testCIDR)
	pod := newNS(t)
	// Someone else's eth0 in the pod.
	if err := pod.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"})
	}); err != nil {
		t.Fatal(err)
	}
	a := e.args("dup", pod, e.conf("1.1.0", nil))
	_, err := e.add(a)
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME", `"eth0" already exists`)
	e.assertClean()
	if err := pod.Do(func(ns.NetNS) error { _, err := netlinksafe.LinkByName("eth0"); return err }); err != nil {
		t.Fatalf("the existing eth0 was touched: %v", err)
	}
}

func TestBadNetns(t *testing.T) {
	e := newEnv(t, testCIDR)
	a := e.args("nons", nil, e.conf("1.1.0", nil))
	a.Netns = "/run/netns/confmesh-does-not-exist"
	_, err := e.add(a)
	wantCode(t, err, types.ErrUnknownContainer, "CNI_NETNS", a.Netns)
	f := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a.Netns = f
	_, err = e.add(a)
	wantCode(t, err, types.ErrInvalidNetNS, "CNI_NETNS", "not a network namespace")
	a.Netns = ""
	_, err = e.add(a)
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_NETNS")
	e.assertClean()
}

func TestExhaustion(t *testing.T) {
	e := newEnv(t, netip.MustParsePrefix("10.244.9.0/29")) // 5 pod addresses
	var args []*skel.CmdArgs
	for i := 0; i < 5; i++ {
		a := e.args(fmt.Sprintf("full%d", i), newNS(t), e.conf("1.1.0", nil))
		if _, err := e.add(a); err != nil {
			t.Fatal(err)
		}
		args = append(args, a)
	}
	wantCode(t, e.plugin.Status(args[0]), types.ErrPluginNotAvailable, "exhausted")
	_, err := e.add(e.args("full5", newNS(t), e.conf("1.1.0", nil)))
	wantCode(t, err, types.ErrTryAgainLater, "exhausted")
	for _, a := range args {
		if err := e.del(a); err != nil {
			t.Fatal(err)
		}
	}
	e.assertClean()
}

func TestGCKeepsValidAndYoung(t *testing.T) {
	e := newEnv(t, testCIDR)
	a := e.args("keep", newNS(t), e.conf("1.1.0", nil))
	b := e.args("drop", newNS(t), e.conf("1.1.0", nil))
	for _, x := range []*skel.CmdArgs{a, b} {
		if _, err := e.add(x); err != nil {
			t.Fatal(err)
		}
	}
	valid := []any{map[string]any{"containerID": "keep", "ifname": "eth0"}}
	// Within the grace period nothing is collected.
	gc := &skel.CmdArgs{StdinData: e.conf("1.1.0", map[string]any{"cni.dev/valid-attachments": valid})}
	if err := e.inHost(func() error { return e.plugin.GC(gc) }); err != nil {
		t.Fatal(err)
	}
	if got := e.agent.Allocations(); len(got) != 2 {
		t.Fatalf("GC collected a young reservation: %v", got)
	}
	// The older key name works too.
	gc.StdinData = e.conf("1.1.0", map[string]any{"gcGracePeriod": "0s", "cni.dev/attachments": valid})
	if err := e.inHost(func() error { return e.plugin.GC(gc) }); err != nil {
		t.Fatal(err)
	}
	if got := e.agent.Allocations(); len(got) != 1 || !strings.HasPrefix(got[0], "keep/") {
		t.Fatalf("after GC: %v", got)
	}
	if _, ok := e.agent.Pods()["drop"]; ok {
		t.Fatal("GC left the collected pod registered")
	}
	if v := e.hostVeths(); len(v) != 1 || v[0] != HostVethName("keep", "eth0") {
		t.Fatalf("host veths after GC: %v", v)
	}
	if err := e.del(a); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func TestChainedAfterAnotherPlugin(t *testing.T) {
	e := newEnv(t, testCIDR)
	prev := &current.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*current.Interface{{Name: "lo", Sandbox: "x"}},
		IPs:        []*current.IPConfig{{Interface: current.Int(0), Address: net.IPNet{IP: net.ParseIP("127.0.0.1").To4(), Mask: net.CIDRMask(8, 32)}}},
		DNS:        types.DNS{Nameservers: []string{"192.0.2.53"}},
	}
	pod := newNS(t)
	a := e.args("chained", pod, e.conf("1.0.0", map[string]any{"prevResult": prevResult(t, prev)}))
	r, err := e.add(a)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := current.NewResultFromResult(r)
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "lo" || len(res.IPs) != 2 || *res.IPs[1].Interface != 2 ||
		len(res.DNS.Nameservers) != 1 {
		t.Fatalf("prevResult not passed through with ours appended: %v", res)
	}
	if err := e.del(a); err != nil {
		t.Fatal(err)
	}
	e.assertClean()
}

func attachment(a *skel.CmdArgs) agent.Attachment {
	return agent.Attachment{ContainerID: a.ContainerID, Interface: a.IfName}
}
