package cli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/kubetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
)

// TestControlPlaneBinaryKubernetesStore runs two `confmesh controlplane
// --store=kubernetes` processes (two replicas) on a real kube-apiserver
// with the CRDs and RBAC of manifests/base, as the control plane's service
// account: a node joins through one, `confmesh nodes` on the other lists
// it, a revoke through the other keeps the machine out of both, and the
// API lists the AttestedNode and NodeRevocation.
//
// Not parallel: an API server starting next to the package's parallel
// tests on a loaded machine can miss its two-minute readiness limit.
func TestControlPlaneBinaryKubernetesStore(t *testing.T) {
	const ns = "confmesh-system"
	sa := kubetest.ServiceAccountUser(ns, "confmesh-controlplane")
	api := kubetest.StartAPIServer(t, kubetest.Options{Users: []kubetest.User{sa}})
	bin := buildConfmesh(t)
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	admin := api.Client(t, api.Admin)
	kubetest.InstallCRDs(t, api.Config(api.Admin), filepath.Join(root, "manifests", "base", "crds.yaml"))
	if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.ApplyRBAC(t, admin, filepath.Join(root, "manifests", "base", "rbac.yaml"), ns)

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := api.WriteKubeconfig(kubeconfig, sa); err != nil {
		t.Fatal(err)
	}
	ca, err := sim.OpenCA(simDir, "")
	if err != nil {
		t.Fatal(err)
	}
	goodMeas := bytes.Repeat([]byte{0x11}, 48)
	policyPath := writeFile(t, dir, "policy.yaml", e2ePolicy(ca.RootPath(), goodMeas))
	sockDir, err := os.MkdirTemp("", "cmk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })

	type replica struct{ addr, sock, adminDir string }
	start := func(name string) replica {
		r := replica{addr: freePort(t), sock: filepath.Join(sockDir, name+".sock"), adminDir: filepath.Join(dir, name, "admin")}
		metrics := freePort(t)
		cp := startControlPlaneProcess(t, bin, "--store", "kubernetes", "--kubeconfig", kubeconfig, "--store-namespace", ns,
			"--policy", policyPath, "--sim-dir", simDir, "--sim-name", name, "--sim-measurement", hex.EncodeToString(goodMeas),
			"--state-dir", filepath.Join(dir, name), "--listen", r.addr, "--admin-socket", r.sock, "--metrics-listen", metrics, "--log-format", "text")
		eventually(t, 60*time.Second, name+" /readyz 200", func() (bool, string) {
			if cp.exited() {
				t.Fatalf("%s exited early (%v):\n%s", name, cp.waitErr, cp.logs)
			}
			c := http.Client{Timeout: time.Second}
			resp, err := c.Get("http://" + metrics + "/readyz")
			if err != nil {
				return false, err.Error()
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK, resp.Status
		})
		return r
	}
	r1, r2 := start("cp-1"), start("cp-2")

	agentPolicy := &attest.Policy{
		TrustDomain: "cluster.test", AllowedVMPLs: []uint32{0}, MaxEvidenceAge: attest.Duration(90 * time.Minute),
		TrustedRoots: []attest.RootRef{{Kind: attest.RootSimulated, File: ca.RootPath()}},
		Measurements: []attest.HexBytes{goodMeas},
		ControlPlane: &attest.ControlPlanePolicy{Measurements: []attest.HexBytes{goodMeas}},
	}
	a := newE2EAgent(t, ca, "node-a", goodMeas)
	joined := a.join(t, r1.addr, agentPolicy)

	eventually(t, 30*time.Second, "replica 2 lists node-a", func() (bool, string) {
		r := runBinary(t, bin, "nodes", "-o", "json", "--admin-socket", r2.sock, "--admin-dir", r2.adminDir)
		var list []nodeJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil {
			return false, r.stderr + r.stdout
		}
		return len(list) == 1 && list[0].Name == "node-a" && list[0].State == "active" && list[0].PodCIDR == joined.PodCidr, r.stdout
	})
	if r := runBinary(t, bin, "nodes", "revoke", "node-a", "--admin-socket", r2.sock, "--admin-dir", r2.adminDir); r.code != 0 {
		t.Fatalf("nodes revoke through replica 2: exit %d\n%s", r.code, r.stderr)
	}
	for _, r := range []replica{r1, r2} {
		if _, err := a.tryJoin(t, r.addr, agentPolicy); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("revoked machine joins %s: %v", r.addr, err)
		}
	}
	dyn, err := dynamic.NewForConfig(api.Config(api.Admin))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if l, err := dyn.Resource(kubestore.NodesGVR).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Fatalf("AttestedNodes after the revoke: %v, %v", l, err)
	}
	if l, err := dyn.Resource(kubestore.RevocationsGVR).List(ctx, metav1.ListOptions{}); err != nil || len(l.Items) != 1 {
		t.Fatalf("NodeRevocations: %v, %v", l, err)
	}
	if _, err := admin.CoreV1().Secrets(ns).Get(ctx, "confmesh-controlplane-state", metav1.GetOptions{}); err != nil {
		t.Fatalf("the CA's Secret: %v", err)
	}
}
