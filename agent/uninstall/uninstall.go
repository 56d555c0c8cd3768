// Package uninstall tells an agent in a cluster whether it is stopping
// because confmesh is being uninstalled (its DaemonSet deleted) rather than
// restarted (a rollout, a node drain, an evicted pod): only then does the
// agent remove what it otherwise keeps in place across restarts (the
// strict rules, the fail-closed routes, the WireGuard device, the CNI
// plugin and its conflist, its keys).
//
// It watches the one DaemonSet by name from the start, so that the deletion
// is seen over an established watch even when `kubectl delete -k` removes
// the agent's service account and RBAC in the same breath.
package uninstall

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Watch follows one DaemonSet.
type Watch struct {
	client          kubernetes.Interface
	namespace, name string
	informer        cache.SharedIndexInformer
	seen            atomic.Bool // the DaemonSet was seen alive
	deleted         atomic.Bool // then deleted, or marked for deletion
}

// Start watches DaemonSet namespace/name until ctx ends.
func Start(ctx context.Context, client kubernetes.Interface, namespace, name string) (*Watch, error) {
	if client == nil || namespace == "" || name == "" {
		return nil, errors.New("uninstall watch: a client, a namespace and a DaemonSet name are required")
	}
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
		}))
	w := &Watch{client: client, namespace: namespace, name: name, informer: f.Apps().V1().DaemonSets().Informer()}
	update := func(obj any) {
		if ds, ok := obj.(*appsv1.DaemonSet); ok {
			w.seen.Store(true)
			if ds.DeletionTimestamp != nil {
				w.deleted.Store(true)
			}
		}
	}
	if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, n any) { update(n) },
		DeleteFunc: func(any) {
			if w.seen.Load() {
				w.deleted.Store(true)
			}
		},
	}); err != nil {
		return nil, err
	}
	go w.informer.RunWithContext(ctx)
	return w, nil
}

// Deleted reports whether the DaemonSet, once seen, has been deleted (or
// marked for deletion). A DaemonSet never seen (no API access yet) is not
// deleted: in doubt the agent keeps everything in place.
func (w *Watch) Deleted() bool { return w.deleted.Load() }

// Confirm is Deleted, or else asks the API server once more (the pod's
// SIGTERM may overtake the watch event): the DaemonSet, seen before, is now
// gone or marked for deletion. Any other answer, an error included, means
// not deleted.
func (w *Watch) Confirm(ctx context.Context) bool {
	if w.Deleted() {
		return true
	}
	if !w.seen.Load() {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	ds, err := w.client.AppsV1().DaemonSets(w.namespace).Get(ctx, w.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || (err == nil && ds.DeletionTimestamp != nil) {
		w.deleted.Store(true)
	}
	return w.Deleted()
}
