package cni

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func cniCode(t *testing.T, err error) uint {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return e.Code
}

func TestParseConfig(t *testing.T) {
	for _, c := range []struct {
		name, conf string
		code       uint
		msg        string
	}{
		{"malformed", `{"cniVersion": "1.0.0", "name": `, types.ErrDecodingFailure, "not valid JSON"},
		{"no name", `{"cniVersion": "1.0.0", "type": "confmesh-cni"}`, types.ErrInvalidNetworkConfig, `"name" is missing`},
		{"no version", `{"name": "n", "type": "confmesh-cni"}`, types.ErrIncompatibleCNIVersion, `"cniVersion" is missing`},
		{"unknown version", `{"cniVersion": "9.9.9", "name": "n"}`, types.ErrIncompatibleCNIVersion, `"9.9.9" is not supported`},
		{"old version", `{"cniVersion": "0.2.0", "name": "n"}`, types.ErrIncompatibleCNIVersion, `"0.2.0" is not supported`},
		{"relative socket", `{"cniVersion": "1.0.0", "name": "n", "agentSocket": "agent.sock"}`, types.ErrInvalidNetworkConfig, "agentSocket"},
		{"bad timeout", `{"cniVersion": "1.0.0", "name": "n", "agentTimeout": "soon"}`, types.ErrInvalidNetworkConfig, "agentTimeout"},
		{"bad grace", `{"cniVersion": "1.1.0", "name": "n", "gcGracePeriod": "-1s"}`, types.ErrInvalidNetworkConfig, "gcGracePeriod"},
		{"bad prevResult", `{"cniVersion": "1.0.0", "name": "n", "prevResult": {"ips": "x"}}`, types.ErrDecodingFailure, "prevResult"},
	} {
		_, err := ParseConfig([]byte(c.conf))
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if got := cniCode(t, err); got != c.code || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: code %d %q, want code %d mentioning %q", c.name, got, err, c.code, c.msg)
		}
	}
	c, err := ParseConfig([]byte(`{"cniVersion": "1.1.0", "name": "n", "type": "confmesh-cni",
		"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
		"cni.dev/attachments": [{"containerID": "b", "ifname": "eth0"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentSocket != DefaultAgentSocket || c.timeout != DefaultAgentTimeout || c.gcGrace != DefaultGCGrace {
		t.Errorf("defaults not applied: %+v", c)
	}
	keep := c.GCKeep()
	if len(keep) != 2 || !keep[types.GCAttachment{ContainerID: "a", IfName: "eth0"}] || !keep[types.GCAttachment{ContainerID: "b", IfName: "eth0"}] {
		t.Errorf("GC keep set %v: want both the valid-attachments and the older attachments key", keep)
	}
	for _, v := range SupportedVersions {
		if _, err := ParseConfig([]byte(`{"cniVersion": "` + v + `", "name": "n"}`)); err != nil {
			t.Errorf("version %s refused: %v", v, err)
		}
	}
}

func TestParseArgs(t *testing.T) {
	p, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=payments;K8S_POD_NAME=api-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")
	if err != nil || p != (PodArgs{Namespace: "payments", Name: "api-0", UID: "u-1"}) {
		t.Fatalf("ParseArgs = %+v, %v", p, err)
	}
	if p, err := ParseArgs(""); err != nil || p != (PodArgs{}) {
		t.Fatalf("empty CNI_ARGS: %+v, %v", p, err)
	}
	_, err = ParseArgs("K8S_POD_NAME")
	if cniCode(t, err) != types.ErrInvalidEnvironmentVariables || !strings.Contains(err.Error(), "CNI_ARGS") {
		t.Fatalf("malformed CNI_ARGS: %v", err)
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("c0ffee", "eth0")
	if len(a) != 10 || !strings.HasPrefix(a, HostVethPrefix) || a != HostVethName("c0ffee", "eth0") {
		t.Fatalf("HostVethName = %q: want stable cm + 8 hex", a)
	}
	if a == HostVethName("c0ffee", "eth1") || a == HostVethName("c0ffeE", "eth0") || HostVethName("ab", "ceth0") == HostVethName("abc", "eth0") {
		t.Fatal("host veth names collide for different attachments")
	}
}

func TestUsable(t *testing.T) {
	for p, want := range map[string]int{"10.244.1.0/24": 253, "10.0.0.0/30": 1, "10.0.0.0/29": 5, "fd00::/120": 254} {
		if got := usable(netip.MustParsePrefix(p)); got != want {
			t.Errorf("usable(%s) = %d, want %d", p, got, want)
		}
	}
}

func TestExpectedFromResult(t *testing.T) {
	gw := net.ParseIP("10.244.1.1").To4()
	res := &current.Result{
		Interfaces: []*current.Interface{
			{Name: "other0"},
			{Name: "cm12345678", Mac: "aa:bb:cc:dd:ee:01"},
			{Name: "eth0", Mac: "aa:bb:cc:dd:ee:02", Sandbox: "/run/netns/p"},
		},
		IPs: []*current.IPConfig{
			{Interface: current.Int(0), Address: net.IPNet{IP: net.ParseIP("192.0.2.9"), Mask: net.CIDRMask(24, 32)}},
			{Interface: current.Int(2), Address: net.IPNet{IP: net.ParseIP("10.244.1.7"), Mask: net.CIDRMask(32, 32)}, Gateway: gw},
		},
		Routes: []*types.Route{
			{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw},
			{Dst: net.IPNet{IP: net.ParseIP("192.0.2.0"), Mask: net.CIDRMask(24, 32)}},
		},
	}
	w, err := expectedFromResult(res, "/run/netns/p", "eth0", "cm12345678")
	if err != nil {
		t.Fatal(err)
	}
	if w.addr != netip.MustParseAddr("10.244.1.7") || w.gw != netip.MustParseAddr("10.244.1.1") || w.mac != "aa:bb:cc:dd:ee:02" ||
		w.hostMac != "aa:bb:cc:dd:ee:01" || len(w.routes) != 1 {
		t.Fatalf("expected = %+v", w)
	}
	if _, err := expectedFromResult(res, "/run/netns/q", "eth0", "cm12345678"); cniCode(t, err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("other netns: %v", err)
	}
}
