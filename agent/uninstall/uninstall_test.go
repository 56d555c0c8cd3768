package uninstall_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/uninstall"
	"github.com/confmesh/confmesh/internal/kubetest"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// agentUser is the agent's service account; its rights come only from
// manifests/base/rbac.yaml.
var agentUser = kubetest.User{
	Name:   "system:serviceaccount:confmesh-system:confmesh-agent",
	Groups: []string{"system:serviceaccounts", "system:serviceaccounts:confmesh-system", "system:authenticated"},
	Token:  "confmesh-agent-test-token",
}

// startAPI starts an API server with confmesh-system and the manifests'
// RBAC; it returns an admin client and one with the agent's rights.
func startAPI(t *testing.T) (admin, agent kubernetes.Interface) {
	api := kubetest.StartAPIServer(t, kubetest.Options{Users: []kubetest.User{agentUser}})
	admin = api.Client(t, api.Admin)
	if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "confmesh-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	kubetest.ApplyRBAC(t, admin, filepath.Join("..", "..", "manifests", "base", "rbac.yaml"), "confmesh-system")
	return admin, api.Client(t, agentUser)
}

// watchLimit bounds how long the watch may take to deliver an event: sized
// for a loaded 2-core CI machine, where the API server competes for CPU.
const watchLimit = 30 * time.Second

// waitSeen waits until the watch has seen the DaemonSet alive (it is only
// then that its deletion counts).
func waitSeen(ctx context.Context, t *testing.T, w *uninstall.Watch) {
	t.Helper()
	if !kubetest.WaitFor(ctx, watchLimit, w.Seen) {
		t.Fatalf("the watch did not see the DaemonSet within %s", watchLimit)
	}
}

func daemonSet(name string) *appsv1.DaemonSet {
	labels := map[string]string{"app": name}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "example.invalid/none"}}},
			},
		},
	}
}

// TestDeletedOnlyWhenTheDaemonSetGoes: an update of the DaemonSet (what
// `kubectl rollout restart` does) is no uninstall; deleting it, or another
// DaemonSet's deletion, is told apart.
func TestDeletedOnlyWhenTheDaemonSetGoes(t *testing.T) {
	c, agent := startAPI(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dsc := c.AppsV1().DaemonSets("confmesh-system")
	for _, n := range []string{"confmesh-agent", "other"} {
		if _, err := dsc.Create(ctx, daemonSet(n), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := uninstall.Start(ctx, agent, "confmesh-system", "confmesh-agent")
	if err != nil {
		t.Fatal(err)
	}
	waitSeen(ctx, t, w)
	// The other DaemonSet goes first, then the rollout restart: once the
	// watch has delivered the update, it has delivered anything before it.
	if err := dsc.Delete(ctx, "other", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ds, err := dsc.Get(ctx, "confmesh-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ds.Spec.Template.Annotations = map[string]string{"kubectl.kubernetes.io/restartedAt": time.Now().Format(time.RFC3339)}
	updated, err := dsc.Update(ctx, ds, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !kubetest.WaitFor(ctx, watchLimit, func() bool { return w.CachedVersion() == updated.ResourceVersion }) {
		t.Fatalf("the watch did not deliver the update (resourceVersion %s) within %s; it has %q", updated.ResourceVersion, watchLimit, w.CachedVersion())
	}
	if w.Deleted() {
		t.Fatal("a rollout restart or another DaemonSet's deletion counts as uninstalling the agent")
	}
	if err := dsc.Delete(ctx, "confmesh-agent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !kubetest.WaitFor(ctx, watchLimit, w.Deleted) {
		t.Fatalf("the agent's DaemonSet was deleted and the watch did not tell within %s", watchLimit)
	}
}

// TestConfirmAsksAgain: the SIGTERM of an uninstall can overtake the watch
// event; Confirm then reads the DaemonSet itself.
func TestConfirmAsksAgain(t *testing.T) {
	c, agent := startAPI(t)
	ctx := context.Background()
	dsc := c.AppsV1().DaemonSets("confmesh-system")
	if _, err := dsc.Create(ctx, daemonSet("confmesh-agent"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wctx, stopWatch := context.WithCancel(ctx)
	w, err := uninstall.Start(wctx, agent, "confmesh-system", "confmesh-agent")
	if err != nil {
		t.Fatal(err)
	}
	waitSeen(ctx, t, w)
	if w.Confirm(ctx) {
		t.Fatal("Confirm with the DaemonSet in place")
	}
	stopWatch() // no event will arrive now
	if !kubetest.WaitFor(ctx, watchLimit, w.Stopped) {
		t.Fatalf("the watch did not stop within %s of its context's end", watchLimit)
	}
	if err := dsc.Delete(ctx, "confmesh-agent", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !w.Confirm(ctx) {
		t.Fatal("Confirm after the DaemonSet was deleted (no watch event): false")
	}
}
