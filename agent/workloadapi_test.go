package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/podmeta"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestWorkloadBackendPods(t *testing.T) {
	a := newTestAgent(t)
	meta := filepath.Join(t.TempDir(), "pods.yaml")
	if err := os.Chmod(filepath.Dir(meta), 0o700); err != nil {
		t.Fatal(err)
	}
	a.cfg.PodMetadata = podmeta.File{Path: meta}
	if err := podmeta.WriteFile(meta, []podmeta.Entry{{Namespace: "shop", Name: "web-0", ServiceAccount: "web"}}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, p := range []*agentv1.Pod{
		{ContainerId: "c1", Netns: "/var/run/netns/c1", Namespace: "shop", Name: "web-0", Uid: "u1", ServiceAccount: "admin"}, // its word is ignored
		{ContainerId: "c2", Netns: "/var/run/netns/c2", Namespace: "shop", Name: "db-0", Uid: "u2"},                           // not in the metadata yet
		{ContainerId: "c3", Netns: "/var/run/netns/c3"},                                                                       // no Kubernetes identity
	} {
		if err := a.RegisterPod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	pods, err := workloadBackend{a}.Pods()
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) != 1 {
		t.Fatalf("pods %+v, want the one the metadata source knows", pods)
	}
	if p := pods[0]; p.UID != "u1" || p.Namespace != "shop" || p.Name != "web-0" || p.ServiceAccount != "web" || p.Netns != "/var/run/netns/c1" {
		t.Fatalf("pod %+v, want service account web from the metadata source", p)
	}
	// Metadata written after the pod started applies at the next lookup.
	if err := podmeta.WriteFile(meta, []podmeta.Entry{{Namespace: "shop", Name: "web-0", ServiceAccount: "web"}, {Namespace: "shop", Name: "db-0", ServiceAccount: "db"}}); err != nil {
		t.Fatal(err)
	}
	pods, err = workloadBackend{a}.Pods()
	if err != nil || len(pods) != 2 || pods[1].Name != "db-0" || pods[1].ServiceAccount != "db" {
		t.Fatalf("after the metadata named db-0: %+v, %v", pods, err)
	}
}

func TestAdoptJWTBundle(t *testing.T) {
	a := newTestAgent(t)
	jwks := []byte(`{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}`)
	a.adoptJWTBundle(jwks)
	jb := workloadBackend{a}.JWTBundle()
	if jb == nil || !jb.HasJWTAuthority("k1") || jb.TrustDomain() != a.td {
		t.Fatalf("JWT bundle %v", jb)
	}
	// Garbage and absence keep what the agent has.
	a.adoptJWTBundle([]byte("not json"))
	a.adoptJWTBundle(nil)
	if (workloadBackend{a}).JWTBundle() != jb {
		t.Fatal("a bad JWKS replaced the bundle")
	}
}

// TestWorkloadAPIWiring: the agent serves the Workload API on the
// configured socket; this test process is in the agent's own (host)
// network namespace, so it is denied.
func TestWorkloadAPIWiring(t *testing.T) {
	a := newTestAgent(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := a.startWorkloadAPI(ctx); err != nil || a.workload != nil {
		t.Fatalf("empty WorkloadSocket: err %v, server %v", err, a.workload)
	}
	dir, err := os.MkdirTemp("", "cmwl")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	a.cfg.WorkloadSocket = filepath.Join(dir, "workload.sock")
	if err := a.startWorkloadAPI(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(a.cfg.WorkloadSocket)
	if err != nil || st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o666 {
		t.Fatalf("socket %v, %v", st, err)
	}
	// A second agent on the same path does not steal the socket.
	b := newTestAgent(t)
	b.cfg.WorkloadSocket = a.cfg.WorkloadSocket
	if err := b.startWorkloadAPI(ctx); err == nil || !strings.Contains(err.Error(), "served by another process") {
		t.Fatalf("second server on the same socket: %v", err)
	}
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	defer ccancel()
	c, err := workloadapi.New(cctx, workloadapi.WithAddr("unix://"+a.cfg.WorkloadSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.FetchX509SVID(cctx)
	if os.Geteuid() != 0 {
		return // without root /proc/<pid>/ns/net of other processes may be unreadable; the denial still holds
	}
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "host network namespace") {
		t.Fatalf("host process: err = %v", err)
	}
}
