package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// newTestAgent builds an agent that has not run: no device, no rules, not
// joined. StrictMode is off so nothing here touches the host's nftables.
func newTestAgent(t *testing.T) *Agent {
	t.Helper()
	pcFixture(t)
	node, err := pcSimCA.NewNode(sim.NodeConfig{Measurement: pcMeas})
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{
		NodeName: "node-a", ControlPlane: "127.0.0.1:1", Policy: pcPolicy(pcMeas), Provider: node,
		StateDir: t.TempDir(), Endpoint: netip.MustParseAddrPort("198.18.0.2:51820"), Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func localClient(t *testing.T, a *Agent) agentv1.AgentClient {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.ServeLocal(ctx, sock) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(30 * time.Second) // a loaded CI machine
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent socket never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := os.Stat(sock)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v err %v, want 0600", st.Mode().Perm(), err)
	}
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return agentv1.NewAgentClient(cc)
}

func TestLocalAPINotAttested(t *testing.T) {
	a := newTestAgent(t)
	c := localClient(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.Ready(ctx, &agentv1.ReadyRequest{})
	if err != nil || r.Ready || r.Reason == "" {
		t.Fatalf("Ready = %+v, %v; want not ready with a reason", r, err)
	}
	if _, err := c.NodeInfo(ctx, &agentv1.NodeInfoRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("NodeInfo before join: err = %v, want Unavailable", err)
	}
	st, err := c.Status(ctx, &agentv1.StatusRequest{})
	if err != nil || st.NodeName != "node-a" || st.Attested || !st.TrustsSimulatedRoot || len(st.WireguardPublicKey) != 32 {
		t.Fatalf("Status = %+v, %v", st, err)
	}
}

func TestLocalAPIPodRegistration(t *testing.T) {
	a := newTestAgent(t)
	c := localClient(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, p := range map[string]*agentv1.Pod{
		"no container id":   {Netns: "/run/netns/x"},
		"path in container": {ContainerId: "../etc/passwd"},
		"bad ip":            {ContainerId: "abc", Ip: "10.0.0.300"},
	} {
		if _, err := c.RegisterPod(ctx, &agentv1.RegisterPodRequest{Pod: p}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: err = %v, want InvalidArgument", name, err)
		}
	}
	pod := &agentv1.Pod{ContainerId: "c0ffee", Netns: "/run/netns/pod1", Interface: "eth0", Ip: "10.244.1.5", Namespace: "payments", Name: "api-0", Uid: "uid-1"}
	if _, err := c.RegisterPod(ctx, &agentv1.RegisterPodRequest{Pod: pod}); err != nil {
		t.Fatal(err)
	}
	pods, err := a.Pods()
	if err != nil || len(pods) != 1 || pods[0].Netns != "/run/netns/pod1" || pods[0].ServiceAccount != "" || pods[0].Registered {
		t.Fatalf("pods %+v err %v (not joined: registered locally only; no metadata source, so no service account)", pods, err)
	}
	// Survives a restart of the agent (a new Agent on the same state dir).
	again, err := openPodStore(a.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if l, _ := again.list(); len(l) != 1 {
		t.Fatalf("pod record lost across restart: %v", l)
	}
	for i := 0; i < 2; i++ { // idempotent
		if _, err := c.UnregisterPod(ctx, &agentv1.UnregisterPodRequest{ContainerId: "c0ffee"}); err != nil {
			t.Fatal(err)
		}
	}
	if pods, _ := a.Pods(); len(pods) != 0 {
		t.Fatalf("pods after unregister: %v", pods)
	}
}

func TestKeysPersistAndArePrivate(t *testing.T) {
	dir := t.TempDir()
	k1, err := loadOrCreateWireGuardKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := loadOrCreateWireGuardKey(dir)
	if err != nil || k1 != k2 {
		t.Fatalf("key not stable across restarts: %v", err)
	}
	if st, _ := os.Stat(filepath.Join(dir, wireGuardKeyFile)); st.Mode().Perm() != 0o600 {
		t.Fatalf("WireGuard key mode %v", st.Mode().Perm())
	}
	if err := os.Chmod(filepath.Join(dir, wireGuardKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateWireGuardKey(dir); err == nil {
		t.Fatal("a world-readable WireGuard key was accepted")
	}
	s1, err := loadOrCreateSVIDKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := loadOrCreateSVIDKey(dir)
	p1, _ := x509.MarshalPKIXPublicKey(s1.Public())
	p2, _ := x509.MarshalPKIXPublicKey(s2.Public())
	if err != nil || !bytes.Equal(p1, p2) {
		t.Fatalf("SVID key not stable: %v", err)
	}
}

func TestNetStateRemembered(t *testing.T) {
	dir := t.TempDir()
	if st, err := loadNetState(dir); err != nil || st.PodCIDR.IsValid() {
		t.Fatalf("empty dir: %+v %v", st, err)
	}
	want := netState{PodCIDR: netip.MustParsePrefix("10.244.3.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	if err := saveNetState(dir, want); err != nil {
		t.Fatal(err)
	}
	if got, err := loadNetState(dir); err != nil || got != want {
		t.Fatalf("got %+v %v, want %+v", got, err, want)
	}
	bad := netState{PodCIDR: netip.MustParsePrefix("10.9.0.0/24"), ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")}
	if err := saveNetState(dir, bad); err != nil {
		t.Fatal(err)
	}
	if _, err := loadNetState(dir); err == nil {
		t.Fatal("inconsistent remembered state accepted")
	}
}
