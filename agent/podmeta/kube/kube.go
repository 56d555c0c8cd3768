// Package kube is the pod-metadata source of an agent in a Kubernetes
// cluster: an informer on the pods scheduled to the agent's own node
// (field selector spec.nodeName), so each pod's service account and UID
// come from the API server, which only the cluster writes.
//
// A pod the informer has not seen (the list has not synced, the API is
// unreachable, the pod is on another node or already deleted) or whose UID
// differs from the runtime's (a stale record of an older pod under the
// same name) is unknown: Lookup returns an error wrapping
// podmeta.ErrUnknown with the reason, and the pod gets no identity.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/confmesh/confmesh/agent/podmeta"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// DefaultWait is how long a Lookup waits for a pod the informer has not
// seen yet: the runtime learned of the pod from the same API server, so the
// watch normally delivers it within milliseconds.
const DefaultWait = 5 * time.Second

// Config configures a Source.
type Config struct {
	// Client reaches the API server (in-cluster or from a kubeconfig).
	Client kubernetes.Interface
	// NodeName is this node's name as the API knows it (spec.nodeName).
	NodeName string
	// Wait bounds how long Lookup waits for a pod not seen yet (DefaultWait
	// when zero).
	Wait   time.Duration
	Logger *slog.Logger
}

// Source answers Lookup from the informer's cache.
type Source struct {
	node     string
	wait     time.Duration
	log      *slog.Logger
	informer cache.SharedIndexInformer

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every pod event
	lastErr error         // the last list or watch failure, for the reason
}

// Start starts the informer and returns at once; Lookup answers ErrUnknown
// until the first list has arrived. The informer stops with ctx.
func Start(ctx context.Context, cfg Config) (*Source, error) {
	if cfg.Client == nil {
		return nil, errors.New("kubernetes pod metadata: no API client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("kubernetes pod metadata: the node name is required (it selects the pods on this node)")
	}
	s := &Source{node: cfg.NodeName, wait: cfg.Wait, log: cfg.Logger, changed: make(chan struct{})}
	if s.wait <= 0 {
		s.wait = DefaultWait
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	sel := fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	f := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }))
	s.informer = f.Core().V1().Pods().Informer()
	// Keep only what Lookup reads: a node's pods stay cheap to hold.
	if err := s.informer.SetTransform(slim); err != nil {
		return nil, fmt.Errorf("kubernetes pod metadata: %w", err)
	}
	if err := s.informer.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		s.log.Warn("kubernetes pod metadata: list/watch of this node's pods failed; pods not seen yet get no identity", "node", s.node, "err", err)
	}); err != nil {
		return nil, fmt.Errorf("kubernetes pod metadata: %w", err)
	}
	notify := func(any) { s.notify() }
	if _, err := s.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, n any) { s.notify() },
		DeleteFunc: notify,
	}); err != nil {
		return nil, fmt.Errorf("kubernetes pod metadata: %w", err)
	}
	go s.informer.RunWithContext(ctx)
	return s, nil
}

func (s *Source) notify() {
	s.mu.Lock()
	close(s.changed)
	s.changed = make(chan struct{})
	s.lastErr = nil
	s.mu.Unlock()
}

// slim drops everything from a pod but what Lookup needs.
func slim(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.Namespace, Name: p.Name, UID: p.UID, ResourceVersion: p.ResourceVersion,
			DeletionTimestamp: p.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName, ServiceAccountName: p.Spec.ServiceAccountName},
	}, nil
}

func (s *Source) String() string { return "kubernetes API (pods on node " + s.node + ")" }

// Synced reports whether the first list of this node's pods has arrived.
func (s *Source) Synced() bool { return s.informer.HasSynced() }

// Lookup returns the service account the API server holds for p, waiting
// up to the configured Wait for a pod the watch has not delivered yet.
func (s *Source) Lookup(ctx context.Context, p podmeta.Pod) (podmeta.Metadata, error) {
	if p.Namespace == "" || p.Name == "" || p.UID == "" {
		return podmeta.Metadata{}, fmt.Errorf("%w: the runtime named pod %q/%q with UID %q; namespace, name and UID are all needed to check it against the Kubernetes API", podmeta.ErrUnknown, p.Namespace, p.Name, p.UID)
	}
	ctx, cancel := context.WithTimeout(ctx, s.wait)
	defer cancel()
	for {
		s.mu.Lock()
		changed, lastErr := s.changed, s.lastErr
		s.mu.Unlock()
		pod, found, err := s.get(p)
		if err != nil {
			return podmeta.Metadata{}, err
		}
		if found && string(pod.UID) == p.UID {
			if pod.Spec.ServiceAccountName == "" {
				return podmeta.Metadata{}, fmt.Errorf("%w: the Kubernetes API's pod %s/%s names no service account", podmeta.ErrUnknown, p.Namespace, p.Name)
			}
			return podmeta.Metadata{ServiceAccount: pod.Spec.ServiceAccountName}, nil
		}
		select {
		case <-changed:
			continue
		case <-ctx.Done():
		}
		switch {
		case !s.informer.HasSynced():
			reason := "the list of this node's pods has not arrived from the Kubernetes API yet"
			if lastErr != nil {
				reason += " (last error: " + lastErr.Error() + ")"
			}
			return podmeta.Metadata{}, fmt.Errorf("%w: pod %s/%s: %s", podmeta.ErrUnknown, p.Namespace, p.Name, reason)
		case found:
			return podmeta.Metadata{}, fmt.Errorf("%w: the Kubernetes API's pod %s/%s on node %s has UID %s, the runtime's is %s (a stale record of another pod under that name)", podmeta.ErrUnknown, p.Namespace, p.Name, s.node, pod.UID, p.UID)
		default:
			return podmeta.Metadata{}, fmt.Errorf("%w: the Kubernetes API shows no pod %s/%s on node %s (not scheduled here, deleted, or not delivered within %v)", podmeta.ErrUnknown, p.Namespace, p.Name, s.node, s.wait)
		}
	}
}

func (s *Source) get(p podmeta.Pod) (*corev1.Pod, bool, error) {
	obj, found, err := s.informer.GetStore().GetByKey(p.Namespace + "/" + p.Name)
	if err != nil || !found {
		return nil, false, err
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, false, fmt.Errorf("kubernetes pod metadata: unexpected object %T in the pod cache", obj)
	}
	return pod, true, nil
}
