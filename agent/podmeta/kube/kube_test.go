package kube_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/podmeta"
	"github.com/confmesh/confmesh/agent/podmeta/kube"
	"github.com/confmesh/confmesh/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// agentUser is the agent's service account as the API server sees it; its
// rights come only from manifests/base/rbac.yaml, applied by the test.
var agentUser = kubetest.User{
	Name:   "system:serviceaccount:confmesh-system:confmesh-agent",
	Groups: []string{"system:serviceaccounts", "system:serviceaccounts:confmesh-system", "system:authenticated"},
	Token:  "confmesh-agent-test-token",
}

func createPod(t *testing.T, c kubernetes.Interface, ns, name, sa, node string) *corev1.Pod {
	t.Helper()
	p, err := c.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: sa,
			Containers: []corev1.Container{{Name: "c", Image: "example.invalid/none"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func asPod(p *corev1.Pod) podmeta.Pod {
	return podmeta.Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
}

// TestKubernetesSourceAgainstAPIServer runs the source against a real
// kube-apiserver with the agent's RBAC from the manifests: a pod's service
// account comes from the API, and a pod the API does not show on this node
// under this UID gets none, with the reason.
func TestKubernetesSourceAgainstAPIServer(t *testing.T) {
	api := kubetest.StartAPIServer(t, kubetest.Options{Users: []kubetest.User{agentUser}})
	admin := api.Client(t, api.Admin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, ns := range []string{"confmesh-system", "shop"} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := kubetest.ApplyRBAC(t, admin, filepath.Join("..", "..", "..", "manifests", "base", "rbac.yaml"), "confmesh-system"); n < 2 {
		t.Fatalf("manifests/base/rbac.yaml: %d RBAC objects", n)
	}
	// No controller manager runs: create the service accounts the pods name
	// (the ServiceAccount admission plugin insists they exist).
	for _, sa := range []string{"default", "frontend", "payments"} {
		if _, err := admin.CoreV1().ServiceAccounts("shop").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	frontend := createPod(t, admin, "shop", "frontend", "frontend", "node-a")
	payments := createPod(t, admin, "shop", "payments", "payments", "node-a")
	plain := createPod(t, admin, "shop", "plain", "", "node-a")
	elsewhere := createPod(t, admin, "shop", "elsewhere", "payments", "node-b")

	src, err := kube.Start(ctx, kube.Config{Client: api.Client(t, agentUser), NodeName: "node-a", Wait: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !kubetest.WaitFor(ctx, 30*time.Second, src.Synced) {
		t.Fatal("the agent's informer did not sync within 30 s with the manifests' RBAC")
	}
	for _, tc := range []struct {
		pod  *corev1.Pod
		want string
	}{{frontend, "frontend"}, {payments, "payments"}, {plain, "default"}} {
		md, err := src.Lookup(ctx, asPod(tc.pod))
		if err != nil || md.ServiceAccount != tc.want {
			t.Errorf("%s: %+v, %v; want service account %q", tc.pod.Name, md, err, tc.want)
		}
	}

	unknown := func(name string, p podmeta.Pod, reason string) {
		t.Helper()
		md, err := src.Lookup(ctx, p)
		if !errors.Is(err, podmeta.ErrUnknown) || !strings.Contains(err.Error(), reason) {
			t.Errorf("%s: %+v, %v; want ErrUnknown naming %q", name, md, err, reason)
		}
	}
	unknown("pod on another node", asPod(elsewhere), "shows no pod shop/elsewhere on node node-a")
	stale := asPod(frontend)
	stale.UID = "5e5e5e5e-0000-0000-0000-000000000000"
	unknown("runtime's UID differs from the API's", stale, "has UID "+string(frontend.UID))
	unknown("no UID from the runtime", podmeta.Pod{Namespace: "shop", Name: "frontend"}, "UID are all needed")
	unknown("pod that never existed", podmeta.Pod{Namespace: "shop", Name: "ghost", UID: "u"}, "shows no pod shop/ghost")

	// A pod created after the informer synced is found once the watch
	// delivers it: Lookup waits for it rather than failing at once.
	late := createPod(t, admin, "shop", "late", "payments", "node-a")
	if md, err := src.Lookup(ctx, asPod(late)); err != nil || md.ServiceAccount != "payments" {
		t.Errorf("pod created after sync: %+v, %v; want payments", md, err)
	}

	// Deleted, then recreated under the same name with another service
	// account: the old UID is refused, the new one gets the new account.
	zero := int64(0)
	if err := admin.CoreV1().Pods("shop").Delete(ctx, "payments", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	gone := kubetest.WaitFor(ctx, 20*time.Second, func() bool {
		_, err := src.Lookup(ctx, asPod(payments))
		return errors.Is(err, podmeta.ErrUnknown)
	})
	if !gone {
		t.Fatal("deleted pod still has an identity after 20 s")
	}
	again := createPod(t, admin, "shop", "payments", "frontend", "node-a")
	if md, err := src.Lookup(ctx, asPod(again)); err != nil || md.ServiceAccount != "frontend" {
		t.Errorf("recreated pod: %+v, %v; want frontend", md, err)
	}
	unknown("old UID of a recreated pod", asPod(payments), "a stale record")
}

// TestKubernetesSourceUnreachable: with no API server to answer, nothing is
// known, and the reason says the list has not arrived.
func TestKubernetesSourceUnreachable(t *testing.T) {
	api := kubetest.StartAPIServer(t, kubetest.Options{})
	client := api.Client(t, api.Admin)
	api.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src, err := kube.Start(ctx, kube.Config{Client: client, NodeName: "node-a", Wait: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	md, err := src.Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "frontend", UID: "u"})
	if !errors.Is(err, podmeta.ErrUnknown) || !strings.Contains(err.Error(), "has not arrived from the Kubernetes API") {
		t.Fatalf("API unreachable: %+v, %v; want ErrUnknown saying the list has not arrived", md, err)
	}
}

func TestStartNeedsNodeAndClient(t *testing.T) {
	if _, err := kube.Start(context.Background(), kube.Config{NodeName: "n"}); err == nil {
		t.Error("Start without a client succeeded")
	}
	if _, err := kube.Start(context.Background(), kube.Config{Client: &kubernetes.Clientset{}}); err == nil || !strings.Contains(err.Error(), "node name") {
		t.Errorf("Start without a node name: %v; want an error naming it", err)
	}
}
