package kubestore_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/kubetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

const namespace = "confmesh-system"

// The control plane's and the agent's service accounts, as the API server
// authenticates them (static tokens stand in for projected ones).
var (
	cpUser    = kubetest.ServiceAccountUser(namespace, "confmesh-controlplane")
	agentUser = kubetest.ServiceAccountUser(namespace, "confmesh-agent")
)

// env is one API server with confmesh's CRDs and RBAC installed.
type env struct {
	api   *kubetest.APIServer
	admin kubernetes.Interface
	dyn   dynamic.Interface
}

// setup starts the API server with the control plane's and the agent's
// service accounts and the extra users, and installs the CRDs and RBAC.
func setup(t *testing.T, extra ...kubetest.User) *env {
	t.Helper()
	api := kubetest.StartAPIServer(t, kubetest.Options{Users: append([]kubetest.User{cpUser, agentUser}, extra...)})
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{api: api, admin: api.Client(t, api.Admin)}
	if e.dyn, err = dynamic.NewForConfig(api.Config(api.Admin)); err != nil {
		t.Fatal(err)
	}
	if n := kubetest.InstallCRDs(t, api.Config(api.Admin), filepath.Join(root, "manifests", "base", "crds.yaml")); n != 4 {
		t.Fatalf("crds.yaml has %d CRDs, want 4", n)
	}
	ctx := context.Background()
	if _, err := e.admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.ApplyRBAC(t, e.admin, filepath.Join(root, "manifests", "base", "rbac.yaml"), namespace)
	return e
}

// open opens a store as the control plane's service account, with the
// rights rbac.yaml grants and nothing more.
func (e *env) open(t *testing.T, name string) *kubestore.Store {
	t.Helper()
	return e.openGrace(t, name, 0)
}

// openGrace is open with Options.ClaimGrace set (0: the default).
func (e *env) openGrace(t *testing.T, name string, grace time.Duration) *kubestore.Store {
	t.Helper()
	s, err := kubestore.Open(context.Background(), kubestore.Options{
		Config: e.api.Config(cpUser), Namespace: namespace, Identity: name,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		ClaimGrace: grace,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// reset removes every confmesh object, the Secret and the Lease, so each
// contract test starts from an empty store.
func (e *env) reset(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, gvr := range []schema.GroupVersionResource{kubestore.NodesGVR, kubestore.RevocationsGVR, kubestore.PodsGVR, kubestore.ClaimsGVR} {
		if err := e.dyn.Resource(gvr).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatalf("delete %s: %v", gvr.Resource, err)
		}
	}
	if err := e.admin.CoreV1().Secrets(namespace).Delete(ctx, "confmesh-controlplane-state", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := e.admin.CoordinationV1().Leases(namespace).Delete(ctx, "confmesh-controlplane", metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
}

// TestKubeContract runs the store contract and the shared-store contract
// against kubestore on a real etcd and kube-apiserver, as the control
// plane's service account, then the API server going away and coming back.
func TestKubeContract(t *testing.T) {
	e := setup(t)
	opt := storetest.Options{UniquePodCIDR: true}
	// The contract's CIDR release is immediate: a claim grace of 1 ns makes
	// every claim the record does not hold old enough to go at once
	// (testClaimRaces covers the default grace).
	storetest.Run(t, func(t *testing.T) store.Store {
		e.reset(t)
		return e.openGrace(t, "replica-a", time.Nanosecond)
	}, opt)
	storetest.RunShared(t, func(t *testing.T) (store.Shared, store.Shared) {
		e.reset(t)
		return e.openGrace(t, "replica-a", time.Nanosecond), e.openGrace(t, "replica-b", time.Nanosecond)
	}, opt)
	testClaimRaces(t, e)
	t.Run("OnlyTheControlPlaneReadsTheSecret", func(t *testing.T) {
		e.reset(t)
		s := e.open(t, "replica-a")
		if _, err := s.CreateSecrets(map[string][]byte{"ca.key": []byte("k")}); err != nil {
			t.Fatal(err)
		}
		agent := e.api.Client(t, agentUser)
		_, err := agent.CoreV1().Secrets(namespace).Get(context.Background(), "confmesh-controlplane-state", metav1.GetOptions{})
		if !apierrors.IsForbidden(err) {
			t.Fatalf("the agent's service account reads the control plane's Secret: %v", err)
		}
		if _, err := agent.CoreV1().Secrets(namespace).List(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
			t.Fatalf("the agent's service account lists Secrets: %v", err)
		}
	})
	t.Run("KubectlView", func(t *testing.T) {
		e.reset(t)
		s := e.open(t, "replica-a")
		n := storetest.Node("web-1", "10.244.5.0/24")
		if _, err := s.PutNode(n); err != nil {
			t.Fatal(err)
		}
		u, err := e.dyn.Resource(kubestore.NodesGVR).Get(context.Background(), "web-1", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for path, want := range map[string]string{
			"status.podCIDR": "10.244.5.0/24", "status.tee": "sev-snp", "status.state": "active",
			"status.measurementPrefix": "abababababababab", "status.expiresAt": "2026-03-01T13:00:00.123456789Z",
		} {
			got, _, _ := unstructured.NestedString(u.Object, strings.Split(path, ".")...)
			if got != want {
				t.Errorf("%s = %q, want %q", path, got, want)
			}
		}
		claims, err := e.dyn.Resource(kubestore.ClaimsGVR).List(context.Background(), metav1.ListOptions{})
		if err != nil || len(claims.Items) != 1 {
			t.Fatalf("PodCIDRClaims: %v, %v", claims, err)
		}
		if cidr, _, _ := unstructured.NestedString(claims.Items[0].Object, "spec", "cidr"); cidr != "10.244.5.0/24" {
			t.Fatalf("claim for %q", cidr)
		}
		if _, _, err := s.RevokeNode("web-1", time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutNode(n); err != nil {
			t.Fatal(err)
		}
		// The printer columns, as an operator sees them.
		kubectl := kubetest.Tool(t, "kubectl")
		kc := filepath.Join(t.TempDir(), "kubeconfig")
		if err := e.api.WriteKubeconfig(kc, e.api.Admin); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(kubectl, "--kubeconfig", kc, "get", "attestednodes").CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl get attestednodes: %v\n%s", err, out)
		}
		t.Logf("kubectl get attestednodes:\n%s", out)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "NAME TEE MEASUREMENT POD CIDR ATTESTED EXPIRES STATE" {
			t.Fatalf("kubectl get attestednodes header:\n%s", out)
		}
		if f := strings.Fields(lines[1]); len(f) != 7 || f[0] != "web-1" || f[1] != "sev-snp" || f[2] != "abababababababab" || f[3] != "10.244.5.0/24" || f[6] != "active" {
			t.Fatalf("kubectl get attestednodes row: %q", f)
		}
		out, err = exec.Command(kubectl, "--kubeconfig", kc, "get", "noderevocations").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "web-1") {
			t.Fatalf("kubectl get noderevocations: %v\n%s", err, out)
		}
		t.Logf("kubectl get noderevocations:\n%s", out)
	})
	t.Run("RecordIsTheStatusSubresource", func(t *testing.T) {
		e.reset(t)
		s := e.open(t, "replica-a")
		ctx := context.Background()
		nodes := e.dyn.Resource(kubestore.NodesGVR)
		// A first write that stopped after its create: an AttestedNode
		// without a record. It is no node, and the next first write of
		// the name takes it over.
		empty := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": kubestore.Group + "/" + kubestore.Version, "kind": "AttestedNode",
			"metadata": map[string]any{"name": "half"}, "spec": map[string]any{},
			"status": map[string]any{"state": "active", "endpoint": "198.18.0.66:51820", "wireguardKey": "AAAA"},
		}}
		if _, err := nodes.Create(ctx, empty, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := nodes.Get(ctx, "half", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, has := got.Object["status"]; has {
			t.Fatalf("the main resource accepted a status on create: %v (no status subresource?)", got.Object["status"])
		}
		if _, err := s.GetNode("half"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetNode of an object without a record: %v, want ErrNotFound", err)
		}
		if l, err := s.ListNodes(); err != nil || len(l) != 0 {
			t.Fatalf("ListNodes with an object without a record: %v, %v", l, err)
		}
		rev, err := s.PutNodeIf(storetest.Node("half", "10.244.6.0/24"), 0)
		if err != nil {
			t.Fatalf("a first write over an object without a record: %v", err)
		}
		// Writing the main resource cannot change the record.
		got, err = nodes.Get(ctx, "half", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := unstructured.SetNestedField(got.Object, "rejected", "status", "state"); err != nil {
			t.Fatal(err)
		}
		if _, err := nodes.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		n, err := s.GetNode("half")
		if err != nil || n.State != store.StateActive || n.PodCIDR != "10.244.6.0/24" || n.Revision != rev {
			t.Fatalf("after a write to the main resource: %+v, %v; want the record of revision %d unchanged", n, err, rev)
		}
		if _, err := s.PutNodeIf(storetest.Node("half", "10.244.6.0/24"), 0); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("a first write over a node with a record: %v, want ErrConflict", err)
		}
	})
	t.Run("APIServerGoesAwayAndComesBack", func(t *testing.T) {
		e.reset(t)
		s := e.open(t, "replica-a")
		n := storetest.Node("a", "10.244.1.0/24")
		if _, err := s.PutNode(n); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		synced := make(chan uint64, 4)
		ended := make(chan error, 1)
		go func() {
			ended <- s.WatchNodes(ctx, func(_ []*store.NodeRecord, rev uint64) { synced <- rev }, func(store.Change) {}, func(uint64) {})
		}()
		first := <-synced
		e.api.StopAPI()
		restarted := false
		t.Cleanup(func() {
			if !restarted {
				_ = e.api.RestartAPI()
			}
		})
		select {
		case err := <-ended:
			if err == nil || errors.Is(err, context.Canceled) {
				t.Fatalf("WatchNodes ended with %v when the API server went away", err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("WatchNodes did not notice the API server going away within 60 s")
		}
		// Fail closed: no write succeeds and no revocation check passes.
		m := storetest.Node("b", "10.244.2.0/24")
		if _, err := s.PutNodeIf(m, 0); err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutNodeIf without an API server: %v, want a non-conflict error", err)
		}
		if _, _, err := s.Revoked(n.ChipID); err == nil {
			t.Fatal("Revoked answered without an API server")
		}
		if err := e.api.RestartAPI(); err != nil {
			t.Fatal(err)
		}
		restarted = true
		// The caller watches again: a fresh sync with the state, at or
		// after the revision it had.
		go func() {
			ended <- s.WatchNodes(ctx, func(nodes []*store.NodeRecord, rev uint64) {
				if len(nodes) == 1 && storetest.Equal(nodes[0], n) {
					synced <- rev
				} else {
					synced <- 0
				}
			}, func(store.Change) {}, func(uint64) {})
		}()
		select {
		case rev := <-synced:
			if rev < first {
				t.Fatalf("sync after the restart at revision %d (state wrong if 0), before %d", rev, first)
			}
		case err := <-ended:
			t.Fatalf("WatchNodes after the restart: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("no sync within 60 s of the restart")
		}
		if _, err := s.PutNodeIf(m, 0); err != nil {
			t.Fatalf("PutNodeIf after the restart: %v", err)
		}
	})
}

// TestOpenWithoutCRDs names what is missing.
func TestOpenWithoutCRDs(t *testing.T) {
	api := kubetest.StartAPIServer(t, kubetest.Options{})
	_, err := kubestore.Open(context.Background(), kubestore.Options{Config: api.Config(api.Admin), Namespace: namespace})
	if err == nil || !strings.Contains(err.Error(), "install the CRDs") {
		t.Fatalf("Open without CRDs: %v", err)
	}
	if _, err := kubestore.Open(context.Background(), kubestore.Options{Config: api.Config(api.Admin), Namespace: "Not_A_Namespace"}); err == nil {
		t.Fatal("Open with an invalid namespace succeeded")
	}
}

// TestReplicasOnTheAPI runs two control-plane replicas on kubestore: a node
// joins through one, the other lists it (what `confmesh nodes` shows), an
// operator revokes it through the other, and the machine cannot join
// again through either.
func TestReplicasOnTheAPI(t *testing.T) {
	e := setup(t)
	start := func(name string) *cptest.ControlPlane {
		return cptest.Start(t, cptest.Options{Store: e.open(t, name), Tune: func(c *controlplane.Config) { c.SweepInterval = 200 * time.Millisecond }})
	}
	r1, r2 := start("replica-1"), start("replica-2")
	ctx := context.Background()
	// The cluster assigned node-a a pod CIDR (inside confmesh's cluster
	// CIDR): the join takes it. node-b's is outside: the allocator picks.
	for name, cidr := range map[string]string{"node-a": "10.244.77.0/24", "node-b": "192.168.7.0/24"} {
		kn := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
		if _, err := e.admin.CoreV1().Nodes().Create(ctx, kn, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	joined := a.Join(t, r1)
	if joined.GetPodCidr() != "10.244.77.0/24" {
		t.Fatalf("node-a got pod CIDR %s, not its Node.spec.podCIDR 10.244.77.0/24", joined.GetPodCidr())
	}
	b := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if got := b.Join(t, r2).GetPodCidr(); got == "192.168.7.0/24" || got == joined.GetPodCidr() {
		t.Fatalf("node-b got pod CIDR %s", got)
	}
	var listed *cpv1.ListNodesResponse
	if !kubetest.WaitFor(ctx, 30*time.Second, func() bool {
		var err error
		listed, err = r2.AdminClient(t).ListNodes(ctx, &cpv1.ListNodesRequest{})
		return err == nil && len(listed.GetNodes()) == 2
	}) {
		t.Fatalf("the other replica does not list the joined node: %v", listed)
	}
	if n := listed.GetNodes()[0]; n.GetName() != "node-a" || n.GetPodCidr() != joined.GetPodCidr() {
		t.Fatalf("the other replica lists %v; want node-a with %s", n, joined.GetPodCidr())
	}
	if _, err := r2.AdminClient(t).RevokeNode(ctx, &cpv1.RevokeNodeRequest{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*cptest.ControlPlane{r1, r2} {
		if _, err := a.TryJoin(t, r); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("a revoked machine joins again: %v", err)
		}
	}
	revs, err := e.dyn.Resource(kubestore.RevocationsGVR).List(ctx, metav1.ListOptions{})
	if err != nil || len(revs.Items) != 1 {
		t.Fatalf("NodeRevocations: %v, %v", revs, err)
	}
	// node-a's pod CIDR claim outlives its record for the claim grace;
	// once older, the leader's sweep releases it.
	if got := e.claimsOf(t, "node-a"); len(got) != 1 || got[0] != joined.GetPodCidr() {
		t.Fatalf("right after the revocation node-a holds claims %v, want [%s] until the grace passes", got, joined.GetPodCidr())
	}
	e.backdate(t, "node-a")
	if !kubetest.WaitFor(ctx, 30*time.Second, func() bool { return len(e.claimsOf(t, "node-a")) == 0 }) {
		t.Fatalf("the sweep did not release the revoked node's old claim: %v", e.claimsOf(t, "node-a"))
	}
	if got := e.claimsOf(t, "node-b"); len(got) != 1 {
		t.Fatalf("node-b's claims after the sweep: %v", got)
	}
}

// TestWatchResumesAfterServerTimeout: the API server ends every watch
// after its request timeout (here 1 to 2 s). WatchNodes resumes from the
// last revision without a new sync and without losing or repeating a
// change.
func TestWatchResumesAfterServerTimeout(t *testing.T) {
	api := kubetest.StartAPIServer(t, kubetest.Options{ExtraArgs: []string{"--min-request-timeout=1"}})
	root, err := kubetest.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	kubetest.InstallCRDs(t, api.Config(api.Admin), filepath.Join(root, "manifests", "base", "crds.yaml"))
	s, err := kubestore.Open(context.Background(), kubestore.Options{Config: api.Config(api.Admin), Namespace: namespace})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var syncs atomic.Int32
	changes := make(chan store.Change, 64)
	ended := make(chan error, 1)
	go func() {
		ended <- s.WatchNodes(ctx, func([]*store.NodeRecord, uint64) { syncs.Add(1) }, func(c store.Change) { changes <- c }, func(uint64) {})
	}()
	if !kubetest.WaitFor(ctx, 30*time.Second, func() bool { return syncs.Load() == 1 }) {
		t.Fatal("no sync")
	}
	// One write a second for 6 s: the watch is ended by the server several
	// times in between.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := range 6 {
		<-tick.C
		n := storetest.Node(fmt.Sprintf("n%d", i), fmt.Sprintf("10.244.%d.0/24", i))
		rev, err := s.PutNode(n)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case c := <-changes:
			if c.Revision != rev || c.Node == nil || c.Node.Name != n.Name {
				t.Fatalf("change %d: %+v, want %s at %d", i, c, n.Name, rev)
			}
		case err := <-ended:
			t.Fatalf("WatchNodes ended: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d not delivered", i)
		}
	}
	if n := syncs.Load(); n != 1 {
		t.Fatalf("%d syncs; a server timeout must resume the watch, not relist", n)
	}
	select {
	case c := <-changes:
		t.Fatalf("extra change %+v", c)
	default:
	}
}
