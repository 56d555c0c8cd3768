package kubestore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
	"github.com/confmesh/confmesh/internal/kubetest"
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
	cpUser = kubetest.User{
		Name:   "system:serviceaccount:" + namespace + ":confmesh-controlplane",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		Token:  "controlplane-token-" + fmt.Sprint(time.Now().UnixNano()),
	}
	agentUser = kubetest.User{
		Name:   "system:serviceaccount:" + namespace + ":confmesh-agent",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
		Token:  "agent-token-" + fmt.Sprint(time.Now().UnixNano()),
	}
)

// env is one API server with confmesh's CRDs and RBAC installed.
type env struct {
	api   *kubetest.APIServer
	admin kubernetes.Interface
	dyn   dynamic.Interface
}

func setup(t *testing.T) *env {
	t.Helper()
	api := kubetest.StartAPIServer(t, kubetest.Options{Users: []kubetest.User{cpUser, agentUser}})
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
	s, err := kubestore.Open(context.Background(), kubestore.Options{
		Config: e.api.Config(cpUser), Namespace: namespace, Identity: name,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
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
	storetest.Run(t, func(t *testing.T) store.Store {
		e.reset(t)
		return e.open(t, "replica-a")
	}, opt)
	storetest.RunShared(t, func(t *testing.T) (store.Shared, store.Shared) {
		e.reset(t)
		return e.open(t, "replica-a"), e.open(t, "replica-b")
	}, opt)
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
			"spec.podCIDR": "10.244.5.0/24", "status.tee": "sev-snp", "status.state": "active",
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
			ended <- s.WatchNodes(ctx, func(_ []*store.NodeRecord, rev uint64) { synced <- rev }, func(store.Change) {})
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
			}, func(store.Change) {})
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
