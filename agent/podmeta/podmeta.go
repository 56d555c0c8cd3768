// Package podmeta tells the agent what it may not learn from a pod or from
// the container runtime: the pod's service account, which names its SPIFFE
// ID (spiffe://<trust domain>/ns/<namespace>/sa/<service account>).
//
// A container runtime passes the CNI plugin a pod's namespace, name and UID
// (CNI_ARGS K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID) but never its
// service account, and whatever the pod says about itself is worth nothing.
// So the agent asks a Source that only the cluster or root on the node can
// write: the Kubernetes API in a cluster, a root-owned file standalone
// (File). A pod the source does not know gets no identity: the agent never
// falls back to a default service account.
package podmeta

import (
	"context"
	"errors"
)

// Pod names the pod being looked up, as the runtime named it.
type Pod struct {
	Namespace string
	Name      string
	UID       string
}

// Metadata is what a source knows about a pod.
type Metadata struct {
	ServiceAccount string
}

// ErrUnknown is returned (wrapped) by a Source that does not know the pod:
// the pod gets no workload identity.
var ErrUnknown = errors.New("pod metadata unknown")

// Source looks pods up. Implementations must only return what the cluster
// or the node's root wrote, and must be safe for concurrent use.
type Source interface {
	// Lookup returns the pod's metadata, or an error wrapping ErrUnknown
	// when the source does not know the pod (or knows it under another
	// UID), or another error when the source cannot be read.
	Lookup(ctx context.Context, p Pod) (Metadata, error)
	// String names the source for logs and status ("file /etc/...").
	String() string
}

// None is the source of an agent that was given none: it knows no pod, so
// no pod gets an identity.
type None struct{}

// Lookup always fails with ErrUnknown.
func (None) Lookup(context.Context, Pod) (Metadata, error) {
	return Metadata{}, errors.Join(ErrUnknown, errors.New("the agent has no pod-metadata source (--pod-metadata)"))
}

func (None) String() string { return "none" }
