// Package store holds the control plane's state: admitted (and rejected) nodes,
// revocations, pods registered for workload SVID signing, secrets (CA key and
// certificate, admin credential) and a monotonically increasing revision.
//
// The Store interface is implementation neutral. Bolt (a single bbolt file) is
// the standalone default; a Kubernetes-API backed implementation will satisfy
// the same interface in a cluster, so nothing here mentions bbolt types.
//
// Revision semantics: the revision counts changes to the node set, which is
// what peers watch. PutNode, DeleteNode and RevokeNode each bump it exactly once
// in the same transaction as the change. Pod and secret mutations do not bump
// it (they are not part of the peer set).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNotFound is returned (wrapped; test with errors.Is) when a record is absent.
var ErrNotFound = errors.New("not found")

// ErrConflict is returned (wrapped) when a write lost a race with another
// writer (another replica): the caller reads again and decides again.
var ErrConflict = errors.New("conflicting write")

// ErrPodCIDRTaken is returned (wrapped) by PutNodeIf of a store that keeps
// pod CIDRs unique across writers when another node holds the record's pod
// CIDR. It wraps ErrConflict; the caller allocates another CIDR.
var ErrPodCIDRTaken = fmt.Errorf("pod CIDR held by another node: %w", ErrConflict)

// ErrPartialSecrets is returned (wrapped) by CreateSecrets when only some of
// the secrets exist: state no control plane wrote, repaired by an operator.
var ErrPartialSecrets = errors.New("only some of the secrets exist")

// NodeRecord is one admitted (or rejected) node.
type NodeRecord struct {
	Name         string    `json:"name"`
	Endpoint     string    `json:"endpoint"`
	WireGuardKey []byte    `json:"wireguardKey"`
	PodCIDR      string    `json:"podCIDR"`
	ChipID       []byte    `json:"chipID"`
	TEE          string    `json:"tee"`
	Measurement  []byte    `json:"measurement"`
	SVID         [][]byte  `json:"svid"`     // node SVID chain, DER, leaf first
	Evidence     []byte    `json:"evidence"` // marshalled attest/v1 Evidence
	AttestedAt   time.Time `json:"attestedAt"`
	ExpiresAt    time.Time `json:"expiresAt"` // SVID expiry
	State        string    `json:"state"`     // StateActive or StateRejected
	Reason       string    `json:"reason,omitempty"`
	Revision     uint64    `json:"revision"` // store revision of its last change (set by the store)
}

// Node states.
const (
	StateActive   = "active"
	StateRejected = "rejected"
)

// Revocation blocks a chip (and the WireGuard key it used) from joining again.
type Revocation struct {
	Name         string    `json:"name"`
	ChipID       []byte    `json:"chipID"`
	WireGuardKey []byte    `json:"wireguardKey"`
	RevokedAt    time.Time `json:"revokedAt"`
}

// PodRecord is a pod a node registered (for workload SVID signing).
type PodRecord struct {
	UID            string `json:"uid"`
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	ServiceAccount string `json:"serviceAccount"`
	Node           string `json:"node"`
}

// Store is the control plane's state. All methods are safe for concurrent use.
// Every mutation is atomic. Returned records are copies: mutating them does not
// change stored data.
type Store interface {
	// GetNode returns the node, or an error wrapping ErrNotFound.
	GetNode(name string) (*NodeRecord, error)
	// ListNodes returns all nodes sorted by name.
	ListNodes() ([]*NodeRecord, error)
	// PutNode creates or replaces n. In one transaction it bumps the revision
	// and stores n with Revision set to it; on success n.Revision is set too
	// and the new revision is returned. An empty Name is an error.
	PutNode(n *NodeRecord) (uint64, error)
	// PutNodeIf is PutNode with a compare-and-swap condition: it writes only
	// if the stored node's Revision is prevRevision, or, with prevRevision
	// 0, if the node does not exist. Otherwise (another writer, another
	// replica, changed or deleted the node since the caller read it) it
	// returns an error wrapping ErrConflict and changes nothing; the caller
	// reads the node again and decides again. A store that keeps pod CIDRs
	// unique across writers (the Kubernetes API store) also returns
	// ErrConflict when another node holds n.PodCIDR.
	PutNodeIf(n *NodeRecord, prevRevision uint64) (uint64, error)
	// DeleteNode deletes the node and its pods and bumps the revision. If the
	// node is absent it returns an error wrapping ErrNotFound and does not bump.
	DeleteNode(name string) (uint64, error)
	// RevokeNode, in one transaction, deletes the node and its pods, records a
	// Revocation with the node's chip ID and WireGuard key, and bumps the
	// revision. Absent node: an error wrapping ErrNotFound, nothing changes.
	RevokeNode(name string, at time.Time) (*Revocation, uint64, error)
	// Revision returns the current revision (0 for a new store).
	Revision() (uint64, error)
	// Revoked reports whether chipID is revoked. An empty chip ID is never revoked.
	Revoked(chipID []byte) (*Revocation, bool, error)
	// RevokedKey reports whether a WireGuard key is revoked. An empty key is never revoked.
	RevokedKey(wireguardKey []byte) (*Revocation, bool, error)
	// ListRevocations returns all revocations, oldest first.
	ListRevocations() ([]*Revocation, error)
	// PutPod creates or replaces a pod. UID and Node must be set; the node must
	// exist (else an error wrapping ErrNotFound), and a UID registered by one
	// node cannot be re-registered by another.
	PutPod(p *PodRecord) error
	// GetPod returns the pod, or an error wrapping ErrNotFound.
	GetPod(uid string) (*PodRecord, error)
	// DeletePod deletes the pod; deleting an absent pod is not an error.
	DeletePod(uid string) error
	// ListPods returns the pods of node sorted by UID (all pods if node is "").
	ListPods(node string) ([]*PodRecord, error)
	// GetSecret returns a copy of the named secret, or an error wrapping ErrNotFound.
	GetSecret(name string) ([]byte, error)
	// PutSecret creates or replaces the named secret.
	PutSecret(name string, value []byte) error
	// CreateSecrets creates every named secret at once if none of them
	// exists, and returns what is stored afterwards: values when it created
	// them, else the stored ones (another replica won the race). Some but
	// not all existing is an error wrapping ErrPartialSecrets and changes
	// nothing. Used for secrets that must be made exactly once (the CA).
	CreateSecrets(values map[string][]byte) (map[string][]byte, error)
	// Close releases the store.
	Close() error
}

// ClusterPodCIDRs is implemented by a store that knows the pod CIDR the
// cluster itself assigned to a node (the Kubernetes API store reads
// Node.spec.podCIDR), so confmesh routes the pod CIDR the kubelet uses.
type ClusterPodCIDRs interface {
	// ClusterPodCIDR returns the pod CIDR the cluster assigned to the node
	// named name, or "" when it assigned none (no such Node, or no CIDR).
	ClusterPodCIDR(name string) (string, error)
}

// ClaimSweeper is implemented by a store that keeps pod CIDR claims apart
// from node records (the Kubernetes API store, where no transaction spans
// both). A claim whose node write never came, or whose node moved to
// another CIDR or was deleted, is released by the leader's sweep once it
// is older than the store's grace (younger ones may belong to a node write
// still in flight on another replica).
type ClaimSweeper interface {
	// ReleaseStaleClaims deletes claims older than the grace on CIDRs their
	// node does not hold and returns how many it deleted. held is the pod
	// CIDR the caller's view has for each node name; a claim that view
	// does not account for is checked against the store before it goes.
	ReleaseStaleClaims(held map[string]string) (int, error)
}

// ProgressInterval is the longest a live WatchNodes of a Shared store
// goes without calling change or progress, and how often the control
// plane probes a store that is not shared (Prober). A caller's deadline
// for progress is several of these.
const ProgressInterval = 3 * time.Second

// Prober is implemented by a store that is not Shared (no watch tells the
// control plane it still works): Probe completes a durable write and
// returns, so a store that stopped answering (a hung disk under the bbolt
// file) shows as a Probe that does not return. The control plane probes
// every ProgressInterval and treats a store whose probe has not succeeded
// within its progress deadline as lost, as it does a silent watch.
type Prober interface {
	// Probe writes and syncs a marker the store's data does not depend on.
	Probe() error
}

// Change is one change to the node set as a shared store reports it.
type Change struct {
	// Revision is the store revision of the change. Revisions increase
	// strictly from change to change but need not be consecutive (the
	// Kubernetes API store's are resourceVersions).
	Revision uint64
	// Node is the node after the change; nil when the node was deleted.
	Node *NodeRecord
	// Deleted names the deleted node; empty when Node is set.
	Deleted string
}

// Shared is implemented by a store that several control-plane replicas use
// at once (the Kubernetes API store). Each replica builds its peer-set cache
// and its watch log from WatchNodes alone, its own writes included, so every
// replica sees the same changes with the same revisions in the same order
// and an agent resumes on any replica from the revision it last saw. Bolt
// (one process, one file) is not Shared: there the server publishes its own
// writes directly.
type Shared interface {
	Store
	// WatchNodes calls sync with every node and the revision of that list,
	// then change for every later change in revision order, until ctx ends
	// (it returns ctx.Err()) or the watch breaks (it returns the error; the
	// caller calls it again and gets a fresh sync). Callbacks run on one
	// goroutine, one at a time.
	//
	// Between changes a live watch calls progress (with the revision it
	// has reached, possibly the last one again) whenever the store proves
	// the watch is still live and current: a bookmark, a watch the store's
	// server ended normally and that was started again. A live watch calls
	// change or progress at least every ProgressInterval, so a caller
	// treats one that stays silent for longer (a connection that drops
	// bytes without an error) as broken: it cancels ctx and calls again.
	WatchNodes(ctx context.Context, sync func(nodes []*NodeRecord, rev uint64), change func(Change), progress func(rev uint64)) error
	// Lead runs fn while this replica holds the store's leader lease (fn's
	// context ends when the lease is lost) and returns when ctx ends. Work
	// that wants one writer at a time across replicas (the periodic
	// re-evaluation sweep) runs inside it; correctness never depends on it
	// (writes are checked by the store's optimistic concurrency).
	Lead(ctx context.Context, fn func(ctx context.Context)) error
}
