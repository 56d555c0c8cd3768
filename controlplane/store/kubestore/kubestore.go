// Package kubestore keeps the control plane's state in the Kubernetes API,
// so several control-plane replicas share it (store.Shared).
//
// Layout (custom resources of group confmesh.io/v1alpha1, cluster scoped,
// defined in manifests/base/crds.yaml):
//
//   - AttestedNode, named after the node: the record (endpoint, WireGuard
//     key, pod CIDR, chip ID, TEE, measurement, SVID, evidence, times,
//     state) is its status, written only through the status subresource, so
//     a record change is one write, one resourceVersion and one watch event;
//     the spec is empty. A first write creates the object, then writes its
//     status; an object without a status is no node.
//   - NodeRevocation: a revoked chip ID and WireGuard key.
//   - PodRegistration, named after the pod's UID, owned by its AttestedNode.
//   - PodCIDRClaim, named after a pod CIDR: the node it belongs to. Creating
//     the claim is what makes a CIDR a node's, so two replicas allocating
//     the same CIDR at once cannot both win.
//
// Secrets (CA key and certificate, JWT signing key) are the data of one
// Secret in the control plane's namespace, and Lead holds a
// coordination.k8s.io Lease there.
//
// Revisions are resourceVersions, which the API server takes from etcd's
// global, increasing revision: a node's Revision is its resourceVersion,
// PutNode returns the resourceVersion of the write, DeleteNode that of the
// deletion, Revision the current list resourceVersion (it also counts writes
// to other objects, so it increases by more than one per node change).
package kubestore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Options configures Open.
type Options struct {
	// Config reaches the API server as the control plane's ServiceAccount.
	Config *rest.Config
	// Namespace holds the secrets' Secret and the leader Lease.
	Namespace string
	// SecretName is the Secret holding the secrets
	// (default "confmesh-controlplane-state").
	SecretName string
	// LeaseName is the leader Lease (default "confmesh-controlplane").
	LeaseName string
	// Identity names this replica in the Lease (default: host name and a
	// random suffix).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod tune Lead (defaults 15 s,
	// 10 s and 2 s).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Timeout bounds each API request (default 15 s).
	Timeout time.Duration
	// ClaimGrace is how long a pod CIDR claim that its node's record does
	// not hold is left alone, because another replica's node write that
	// relies on it may still be in flight (default 2 min: a claim and its
	// node write happen within one Timeout, and the API server ends any
	// request within its own request timeout, 1 min by default). An older
	// one is released by the leader's sweep (ReleaseStaleClaims).
	ClaimGrace time.Duration
}

// DefaultClaimGrace is Options.ClaimGrace when zero.
const DefaultClaimGrace = 2 * time.Minute

// Store is a store.Shared on the Kubernetes API. Safe for concurrent use.
type Store struct {
	opt         Options
	core        kubernetes.Interface
	nodes       dynamic.ResourceInterface
	revocations dynamic.ResourceInterface
	pods        dynamic.ResourceInterface
	claims      dynamic.ResourceInterface
}

var _ store.Shared = (*Store)(nil)

// Open connects to the API server and checks that the CRDs are installed
// and the Secret's namespace is set, so a misconfigured control plane fails
// at start with a message naming what is missing.
func Open(ctx context.Context, opt Options) (*Store, error) {
	if opt.Config == nil {
		return nil, errors.New("kubestore: no API server configuration")
	}
	if opt.Namespace == "" {
		return nil, errors.New("kubestore: namespace for the control plane's Secret and Lease is empty")
	}
	if errs := validation.IsDNS1123Label(opt.Namespace); len(errs) > 0 {
		return nil, fmt.Errorf("kubestore: namespace %q: %s", opt.Namespace, strings.Join(errs, "; "))
	}
	if opt.SecretName == "" {
		opt.SecretName = "confmesh-controlplane-state"
	}
	if opt.LeaseName == "" {
		opt.LeaseName = "confmesh-controlplane"
	}
	if opt.Identity == "" {
		host, _ := os.Hostname()
		opt.Identity = host + "-" + rand.String(6)
	}
	if opt.LeaseDuration == 0 {
		opt.LeaseDuration = 15 * time.Second
	}
	if opt.RenewDeadline == 0 {
		opt.RenewDeadline = 10 * time.Second
	}
	if opt.RetryPeriod == 0 {
		opt.RetryPeriod = 2 * time.Second
	}
	if opt.Timeout == 0 {
		opt.Timeout = 15 * time.Second
	}
	if opt.ClaimGrace == 0 {
		opt.ClaimGrace = DefaultClaimGrace
	}
	if opt.Timeout < 0 || opt.ClaimGrace < 0 {
		return nil, fmt.Errorf("kubestore: request timeout %s, claim grace %s: want positive durations", opt.Timeout, opt.ClaimGrace)
	}
	cfg := rest.CopyConfig(opt.Config)
	if cfg.QPS == 0 && cfg.RateLimiter == nil {
		// client-go's default (5/s, bursts of 10) would throttle joins.
		cfg.QPS, cfg.Burst = 100, 200
	}
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubestore: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubestore: %w", err)
	}
	s := &Store{
		opt: opt, core: core,
		nodes: dyn.Resource(NodesGVR), revocations: dyn.Resource(RevocationsGVR),
		pods: dyn.Resource(PodsGVR), claims: dyn.Resource(ClaimsGVR),
	}
	for _, r := range []struct {
		ri   dynamic.ResourceInterface
		name string
	}{{s.nodes, "attestednodes"}, {s.revocations, "noderevocations"}, {s.pods, "podregistrations"}, {s.claims, "podcidrclaims"}} {
		c, cancel := context.WithTimeout(ctx, opt.Timeout)
		_, err := r.ri.List(c, metav1.ListOptions{Limit: 1})
		cancel()
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("kubestore: the API server does not serve %s.%s/%s: install the CRDs (manifests/base/crds.yaml) first", r.name, Group, Version)
		}
		if err != nil {
			return nil, fmt.Errorf("kubestore: list %s: %w", r.name, err)
		}
	}
	return s, nil
}

// Identity is this replica's name in the leader Lease.
func (s *Store) Identity() string { return s.opt.Identity }

// Close implements store.Store; the store holds no resources of its own.
func (s *Store) Close() error { return nil }

func (s *Store) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.opt.Timeout)
}

// ---- nodes ----

// GetNode implements store.Store.
func (s *Store) GetNode(name string) (*store.NodeRecord, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	u, err := s.getNode(ctx, name)
	if err != nil {
		return nil, err
	}
	n, err := nodeRecord(u)
	if errors.Is(err, errIncomplete) {
		return nil, fmt.Errorf("kubestore: node %q: %w", name, store.ErrNotFound)
	}
	return n, err
}

func (s *Store) getNode(ctx context.Context, name string) (*unstructured.Unstructured, error) {
	if name == "" {
		return nil, fmt.Errorf("kubestore: node %q: %w", name, store.ErrNotFound)
	}
	u, err := s.nodes.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) || apierrors.IsInvalid(err) {
		return nil, fmt.Errorf("kubestore: node %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("kubestore: get node %q: %w", name, err)
	}
	return u, nil
}

// ListNodes implements store.Store.
func (s *Store) ListNodes() ([]*store.NodeRecord, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	nodes, _, err := s.listNodes(ctx)
	return nodes, err
}

// listNodes returns every node, sorted by name, and the list's
// resourceVersion.
func (s *Store) listNodes(ctx context.Context) ([]*store.NodeRecord, uint64, error) {
	l, err := s.nodes.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, 0, fmt.Errorf("kubestore: list nodes: %w", err)
	}
	rev, err := revisionOf(l.GetResourceVersion())
	if err != nil {
		return nil, 0, fmt.Errorf("kubestore: list nodes: %w", err)
	}
	out := make([]*store.NodeRecord, 0, len(l.Items))
	for i := range l.Items {
		if incomplete(&l.Items[i]) {
			continue
		}
		n, err := nodeRecord(&l.Items[i])
		if err != nil {
			return nil, 0, fmt.Errorf("kubestore: %w", err)
		}
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *store.NodeRecord) int { return strings.Compare(a.Name, b.Name) })
	return out, rev, nil
}

// PutNode implements store.Store: it replaces whatever is stored, retrying
// when another writer changes the node in between.
func (s *Store) PutNode(n *store.NodeRecord) (uint64, error) {
	if err := checkNode(n); err != nil {
		return 0, err
	}
	for {
		var prev uint64
		cur, err := s.GetNode(n.Name)
		switch {
		case err == nil:
			prev = cur.Revision
		case !errors.Is(err, store.ErrNotFound):
			return 0, err
		}
		rev, err := s.PutNodeIf(n, prev)
		if errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrPodCIDRTaken) {
			continue
		}
		return rev, err
	}
}

func checkNode(n *store.NodeRecord) error {
	if n == nil {
		return errors.New("kubestore: put node: record is nil")
	}
	if n.Name == "" {
		return errors.New("kubestore: put node: Name is empty")
	}
	if errs := validation.IsDNS1123Subdomain(n.Name); len(errs) > 0 {
		return fmt.Errorf("kubestore: put node: name %q: %s", n.Name, strings.Join(errs, "; "))
	}
	return nil
}

// PutNodeIf implements store.Store. The record is the AttestedNode's
// status, written through the status subresource with metadata.
// resourceVersion = prevRevision, which the API server refuses (409) when
// the object changed since. prevRevision 0 first creates the object (an
// empty one, since the main resource ignores status) or takes over one
// whose record was never written, then writes the record conditional on
// that version: AlreadyExists with a record, or another writer in between,
// is a conflict. A pod CIDR is first claimed (see claimCIDR), so another
// node's CIDR is refused with ErrPodCIDRTaken.
func (s *Store) PutNodeIf(n *store.NodeRecord, prevRevision uint64) (uint64, error) {
	if err := checkNode(n); err != nil {
		return 0, err
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if n.PodCIDR != "" {
		if err := s.claimCIDR(ctx, n.PodCIDR, n.Name); err != nil {
			return 0, err
		}
	}
	u, err := nodeObject(n)
	if err != nil {
		return 0, fmt.Errorf("kubestore: encode node %q: %w", n.Name, err)
	}
	if prevRevision == 0 {
		rv, err := s.createEmptyNode(ctx, n.Name)
		if err != nil {
			return 0, err
		}
		u.SetResourceVersion(rv)
	} else {
		u.SetResourceVersion(fmt.Sprint(prevRevision))
	}
	out, err := s.nodes.UpdateStatus(ctx, u, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
		return 0, fmt.Errorf("kubestore: write node %q from revision %d: %w", n.Name, prevRevision, store.ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("kubestore: write node %q: %w", n.Name, err)
	}
	rev, err := revisionOf(out.GetResourceVersion())
	if err != nil {
		return 0, fmt.Errorf("kubestore: node %q: %w", n.Name, err)
	}
	n.Revision = rev
	return rev, nil
}

// createEmptyNode creates the AttestedNode name without a record and
// returns its resourceVersion; an existing one without a record (a first
// write that stopped after the create) is taken over. One with a record is
// a conflict.
func (s *Store) createEmptyNode(ctx context.Context, name string) (string, error) {
	u := newObject("AttestedNode", name)
	u.Object["spec"] = map[string]any{}
	out, err := s.nodes.Create(ctx, u, metav1.CreateOptions{})
	if err == nil {
		return out.GetResourceVersion(), nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("kubestore: create node %q: %w", name, err)
	}
	have, err := s.getNode(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return "", fmt.Errorf("kubestore: create node %q: deleted meanwhile: %w", name, store.ErrConflict)
	}
	if err != nil {
		return "", err
	}
	if !incomplete(have) {
		return "", fmt.Errorf("kubestore: create node %q: it exists: %w", name, store.ErrConflict)
	}
	return have.GetResourceVersion(), nil
}

// claimCIDR makes cidr node's: it creates the PodCIDRClaim, or finds it
// already node's and, when its claimed-at time is past half the grace,
// sets it to now, so that no sweep takes it while this write is in flight.
// A claim is never taken from another node name: a replica cannot tell a
// stale claim from one whose node write is in flight. Claims of CIDRs
// their node does not hold (it moved, was deleted, or its write never
// came) are released by ReleaseStaleClaims once older than the grace: a
// left-over costs one CIDR for a while, never a duplicate.
func (s *Store) claimCIDR(ctx context.Context, cidr, node string) error {
	name, p, err := claimName(cidr)
	if err != nil {
		return fmt.Errorf("kubestore: put node %q: %w", node, err)
	}
	now := time.Now()
	c, err := claimObject(name, p, node, now)
	if err != nil {
		return err
	}
	_, err = s.claims.Create(ctx, c, metav1.CreateOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kubestore: claim pod CIDR %s: %w", p, err)
	}
	have, err := s.claims.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("kubestore: claim pod CIDR %s: released meanwhile, try again: %w", p, store.ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("kubestore: read claim of pod CIDR %s: %w", p, err)
	}
	var spec claimSpec
	if err := fromField(have, "spec", &spec); err != nil {
		return err
	}
	if spec.Node != node {
		return fmt.Errorf("kubestore: pod CIDR %s belongs to node %q: %w", p, spec.Node, store.ErrPodCIDRTaken)
	}
	if now.Sub(claimedAt(have)) < s.opt.ClaimGrace/2 {
		return nil
	}
	// Refresh it, conditional on the version read: a clean-up that listed
	// it before fails its delete, one that deleted it first fails this.
	setClaimedAt(have, now)
	_, err = s.claims.Update(ctx, have, metav1.UpdateOptions{})
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		return fmt.Errorf("kubestore: claim pod CIDR %s: changed meanwhile, try again: %w", p, store.ErrConflict)
	case err != nil:
		return fmt.Errorf("kubestore: refresh claim of pod CIDR %s: %w", p, err)
	}
	return nil
}

var _ store.ClaimSweeper = (*Store)(nil)

// ReleaseStaleClaims implements store.ClaimSweeper: it lists the claims
// and deletes each one older than the grace whose CIDR held (the caller's
// view) does not give its node, after reading that node from the API (it
// may have moved there since the view was taken), conditional on the
// claim being unchanged since listed.
func (s *Store) ReleaseStaleClaims(held map[string]string) (int, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	l, err := s.claims.List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("kubestore: list pod CIDR claims: %w", err)
	}
	now := time.Now()
	released := 0
	var errs []error
	for i := range l.Items {
		c := &l.Items[i]
		var spec claimSpec
		if fromField(c, "spec", &spec) != nil || now.Sub(claimedAt(c)) < s.opt.ClaimGrace {
			continue
		}
		if cidr, ok := held[spec.Node]; ok && sameCIDR(cidr, spec.CIDR) {
			continue
		}
		cur, err := s.getNode(ctx, spec.Node)
		switch {
		case err == nil:
			if sameCIDR(podCIDROf(cur), spec.CIDR) {
				continue
			}
		case !errors.Is(err, store.ErrNotFound):
			errs = append(errs, err)
			continue
		}
		rv := c.GetResourceVersion()
		err = s.claims.Delete(ctx, c.GetName(), metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
		switch {
		case err == nil:
			released++
		case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
			// Claimed again or released meanwhile: not stale.
		default:
			errs = append(errs, fmt.Errorf("kubestore: release claim %s: %w", c.GetName(), err))
		}
	}
	return released, errors.Join(errs...)
}

// podCIDROf is the pod CIDR an AttestedNode's record holds ("" for none).
func podCIDROf(u *unstructured.Unstructured) string {
	cidr, _, _ := unstructured.NestedString(u.Object, "status", "podCIDR")
	return cidr
}

// sameCIDR reports whether two pod CIDR strings name the same prefix.
func sameCIDR(a, b string) bool {
	pa, erra := netip.ParsePrefix(a)
	pb, errb := netip.ParsePrefix(b)
	return erra == nil && errb == nil && pa.Masked() == pb.Masked()
}

// DeleteNode implements store.Store.
func (s *Store) DeleteNode(name string) (uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	for {
		u, err := s.getNode(ctx, name)
		if err != nil {
			return 0, fmt.Errorf("kubestore: delete: %w", err)
		}
		rev, err := s.deleteNode(ctx, u)
		if errors.Is(err, store.ErrConflict) {
			continue // changed meanwhile: delete what is there now
		}
		return rev, err
	}
}

// deleteNode deletes u if unchanged since read, then its pods and claims,
// and returns the resourceVersion of the deletion, read from a watch on the
// one object (the DELETE answer carries the object's last resourceVersion,
// not the deletion's).
func (s *Store) deleteNode(ctx context.Context, u *unstructured.Unstructured) (uint64, error) {
	name, rv, uid := u.GetName(), u.GetResourceVersion(), u.GetUID()
	w, werr := s.nodes.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name, ResourceVersion: rv})
	if werr == nil {
		defer w.Stop()
	}
	err := s.nodes.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv, UID: &uid}})
	switch {
	case apierrors.IsConflict(err):
		return 0, fmt.Errorf("kubestore: delete node %q: changed since read: %w", name, store.ErrConflict)
	case apierrors.IsNotFound(err):
		return 0, fmt.Errorf("kubestore: delete node %q: %w", name, store.ErrNotFound)
	case err != nil:
		return 0, fmt.Errorf("kubestore: delete node %q: %w", name, err)
	}
	s.deletePodsOf(ctx, name, string(uid))
	if werr == nil {
		for ev := range w.ResultChan() {
			if ev.Type != "DELETED" {
				continue
			}
			if o, ok := ev.Object.(*unstructured.Unstructured); ok {
				if rev, err := revisionOf(o.GetResourceVersion()); err == nil {
					return rev, nil
				}
			}
			break
		}
	}
	// No watch (its start revision was compacted away): the current
	// revision, which is at or after the deletion's.
	return s.Revision()
}

// deletePodsOf deletes the pods the node with uid registered. Pods left
// by a crash here are removed by the garbage collector (they are owned by
// the node) and are never served: a pod's node must be an active caller.
func (s *Store) deletePodsOf(ctx context.Context, node, uid string) {
	l, err := s.pods.List(ctx, metav1.ListOptions{LabelSelector: labelNode + "=" + labelHash([]byte(node))})
	if err != nil {
		return
	}
	for i := range l.Items {
		p := &l.Items[i]
		owned := false
		for _, o := range p.GetOwnerReferences() {
			owned = owned || string(o.UID) == uid
		}
		if owned {
			_ = s.pods.Delete(ctx, p.GetName(), metav1.DeleteOptions{})
		}
	}
}

// RevokeNode implements store.Store. The API has no transaction over two
// objects, so it records the NodeRevocation first and deletes the node
// second. A crash in between leaves the node in the peer set but revoked:
// renewals and joins check revocations, so its key and chip get no new
// SVID, and repeating the revoke (the operator's command fails, so they
// do) deletes it. The other order could lose the revocation.
func (s *Store) RevokeNode(name string, at time.Time) (*store.Revocation, uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	var recorded []*store.Revocation
	for {
		u, err := s.getNode(ctx, name)
		if err != nil {
			return nil, 0, fmt.Errorf("kubestore: revoke: %w", err)
		}
		n, err := nodeRecord(u)
		if errors.Is(err, errIncomplete) {
			return nil, 0, fmt.Errorf("kubestore: revoke: node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return nil, 0, fmt.Errorf("kubestore: revoke: %w", err)
		}
		r := &store.Revocation{Name: n.Name, ChipID: n.ChipID, WireGuardKey: n.WireGuardKey, RevokedAt: at}
		if !slices.ContainsFunc(recorded, func(o *store.Revocation) bool { return sameRevocation(o, r) }) {
			obj, err := revocationObject(r)
			if err != nil {
				return nil, 0, err
			}
			if _, err := s.revocations.Create(ctx, obj, metav1.CreateOptions{}); err != nil {
				return nil, 0, fmt.Errorf("kubestore: record revocation of node %q: %w", name, err)
			}
			recorded = append(recorded, r)
		}
		rev, err := s.deleteNode(ctx, u)
		if errors.Is(err, store.ErrConflict) {
			continue // renewed (maybe with a new key) meanwhile: revoke that too
		}
		if err != nil {
			return nil, 0, fmt.Errorf("kubestore: revoke: %w", err)
		}
		return r, rev, nil
	}
}

func sameRevocation(a, b *store.Revocation) bool {
	return a.Name == b.Name && string(a.ChipID) == string(b.ChipID) && string(a.WireGuardKey) == string(b.WireGuardKey)
}

// Revision implements store.Store: the resourceVersion of a node list,
// which is the API server's current revision.
func (s *Store) Revision() (uint64, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	l, err := s.nodes.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return 0, fmt.Errorf("kubestore: revision: %w", err)
	}
	rev, err := revisionOf(l.GetResourceVersion())
	if err != nil {
		return 0, fmt.Errorf("kubestore: revision: %w", err)
	}
	return rev, nil
}

// ClusterPodCIDR implements store.ClusterPodCIDRs: the spec.podCIDR of
// the Kubernetes Node named name ("" when there is no such Node or it has
// no pod CIDR).
func (s *Store) ClusterPodCIDR(name string) (string, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	n, err := s.core.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("kubestore: read Node %q: %w", name, err)
	}
	return n.Spec.PodCIDR, nil
}

var _ store.ClusterPodCIDRs = (*Store)(nil)

// ---- revocations ----

func (s *Store) findRevocation(label string, value []byte, match func(*store.Revocation) bool) (*store.Revocation, bool, error) {
	if len(value) == 0 {
		return nil, false, nil
	}
	ctx, cancel := s.ctx()
	defer cancel()
	l, err := s.revocations.List(ctx, metav1.ListOptions{LabelSelector: label + "=" + labelHash(value)})
	if err != nil {
		return nil, false, fmt.Errorf("kubestore: list revocations: %w", err)
	}
	for i := range l.Items {
		r, err := revocationRecord(&l.Items[i])
		if err != nil {
			return nil, false, fmt.Errorf("kubestore: %w", err)
		}
		if match(r) {
			return r, true, nil
		}
	}
	return nil, false, nil
}

// Revoked implements store.Store.
func (s *Store) Revoked(chipID []byte) (*store.Revocation, bool, error) {
	return s.findRevocation(labelChip, chipID, func(r *store.Revocation) bool { return string(r.ChipID) == string(chipID) })
}

// RevokedKey implements store.Store.
func (s *Store) RevokedKey(key []byte) (*store.Revocation, bool, error) {
	return s.findRevocation(labelKey, key, func(r *store.Revocation) bool { return string(r.WireGuardKey) == string(key) })
}

// ListRevocations implements store.Store: oldest first (by the revision
// that created each).
func (s *Store) ListRevocations() ([]*store.Revocation, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	l, err := s.revocations.List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubestore: list revocations: %w", err)
	}
	type item struct {
		rev uint64
		r   *store.Revocation
	}
	items := make([]item, 0, len(l.Items))
	for i := range l.Items {
		rev, err := revisionOf(l.Items[i].GetResourceVersion())
		if err != nil {
			return nil, fmt.Errorf("kubestore: revocation %q: %w", l.Items[i].GetName(), err)
		}
		r, err := revocationRecord(&l.Items[i])
		if err != nil {
			return nil, fmt.Errorf("kubestore: %w", err)
		}
		items = append(items, item{rev, r})
	}
	slices.SortFunc(items, func(a, b item) int { return cmpU64(a.rev, b.rev) })
	out := make([]*store.Revocation, len(items))
	for i, it := range items {
		out[i] = it.r
	}
	return out, nil
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// ---- pods ----

// PutPod implements store.Store.
func (s *Store) PutPod(p *store.PodRecord) error {
	if p == nil {
		return errors.New("kubestore: put pod: record is nil")
	}
	if p.UID == "" {
		return errors.New("kubestore: put pod: UID is empty")
	}
	if p.Node == "" {
		return fmt.Errorf("kubestore: put pod %q: Node is empty", p.UID)
	}
	if errs := validation.IsDNS1123Subdomain(p.UID); len(errs) > 0 {
		return fmt.Errorf("kubestore: put pod: UID %q is not a valid object name: %s", p.UID, strings.Join(errs, "; "))
	}
	ctx, cancel := s.ctx()
	defer cancel()
	node, err := s.getNode(ctx, p.Node)
	if err != nil {
		return fmt.Errorf("kubestore: put pod %q: %w", p.UID, err)
	}
	for {
		u, err := podObject(p, node)
		if err != nil {
			return err
		}
		_, err = s.pods.Create(ctx, u, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("kubestore: put pod %q: %w", p.UID, err)
		}
		old, err := s.pods.Get(ctx, p.UID, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("kubestore: put pod %q: %w", p.UID, err)
		}
		rec, err := podRecord(old)
		if err != nil {
			return fmt.Errorf("kubestore: %w", err)
		}
		if rec.Node != p.Node {
			return fmt.Errorf("kubestore: put pod %q: already registered by node %q, not %q", p.UID, rec.Node, p.Node)
		}
		u.SetResourceVersion(old.GetResourceVersion())
		_, err = s.pods.Update(ctx, u, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("kubestore: put pod %q: %w", p.UID, err)
		}
		return nil
	}
}

// GetPod implements store.Store.
func (s *Store) GetPod(uid string) (*store.PodRecord, error) {
	if uid == "" || len(validation.IsDNS1123Subdomain(uid)) > 0 {
		return nil, fmt.Errorf("kubestore: pod %q: %w", uid, store.ErrNotFound)
	}
	ctx, cancel := s.ctx()
	defer cancel()
	u, err := s.pods.Get(ctx, uid, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("kubestore: pod %q: %w", uid, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("kubestore: get pod %q: %w", uid, err)
	}
	return podRecord(u)
}

// DeletePod implements store.Store.
func (s *Store) DeletePod(uid string) error {
	if uid == "" {
		return errors.New("kubestore: delete pod: UID is empty")
	}
	if len(validation.IsDNS1123Subdomain(uid)) > 0 {
		return nil // never stored
	}
	ctx, cancel := s.ctx()
	defer cancel()
	err := s.pods.Delete(ctx, uid, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("kubestore: delete pod %q: %w", uid, err)
	}
	return nil
}

// ListPods implements store.Store.
func (s *Store) ListPods(node string) ([]*store.PodRecord, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	opts := metav1.ListOptions{}
	if node != "" {
		opts.LabelSelector = labelNode + "=" + labelHash([]byte(node))
	}
	l, err := s.pods.List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("kubestore: list pods: %w", err)
	}
	out := []*store.PodRecord{}
	for i := range l.Items {
		p, err := podRecord(&l.Items[i])
		if err != nil {
			return nil, fmt.Errorf("kubestore: %w", err)
		}
		if node == "" || p.Node == node {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b *store.PodRecord) int { return strings.Compare(a.UID, b.UID) })
	return out, nil
}

// ---- secrets ----

func (s *Store) secrets() interface {
	Get(context.Context, string, metav1.GetOptions) (*corev1.Secret, error)
	Create(context.Context, *corev1.Secret, metav1.CreateOptions) (*corev1.Secret, error)
	Update(context.Context, *corev1.Secret, metav1.UpdateOptions) (*corev1.Secret, error)
} {
	return s.core.CoreV1().Secrets(s.opt.Namespace)
}

func checkSecretName(name string) error {
	if name == "" {
		return errors.New("kubestore: secret name is empty")
	}
	if errs := validation.IsConfigMapKey(name); len(errs) > 0 {
		return fmt.Errorf("kubestore: secret name %q: %s", name, strings.Join(errs, "; "))
	}
	return nil
}

// GetSecret implements store.Store.
func (s *Store) GetSecret(name string) ([]byte, error) {
	ctx, cancel := s.ctx()
	defer cancel()
	sec, err := s.secrets().Get(ctx, s.opt.SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("kubestore: secret %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("kubestore: read Secret %s/%s: %w", s.opt.Namespace, s.opt.SecretName, err)
	}
	v, ok := sec.Data[name]
	if !ok {
		return nil, fmt.Errorf("kubestore: secret %q: %w", name, store.ErrNotFound)
	}
	return append([]byte{}, v...), nil
}

// PutSecret implements store.Store.
func (s *Store) PutSecret(name string, value []byte) error {
	if err := checkSecretName(name); err != nil {
		return err
	}
	return s.updateSecrets(func(data map[string][]byte) (bool, error) {
		data[name] = append([]byte{}, value...)
		return true, nil
	})
}

// CreateSecrets implements store.Store with the Secret's resourceVersion:
// of two replicas adding the same names at once, one update wins and the
// other reads the winner's values.
func (s *Store) CreateSecrets(values map[string][]byte) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, errors.New("kubestore: create secrets: no secrets given")
	}
	for name := range values {
		if err := checkSecretName(name); err != nil {
			return nil, err
		}
	}
	var out map[string][]byte
	err := s.updateSecrets(func(data map[string][]byte) (bool, error) {
		out = map[string][]byte{}
		for name := range values {
			if v, ok := data[name]; ok {
				out[name] = append([]byte{}, v...)
			}
		}
		switch {
		case len(out) == len(values):
			return false, nil
		case len(out) > 0:
			return false, fmt.Errorf("kubestore: create secrets: %d of %d already exist: %w", len(out), len(values), store.ErrPartialSecrets)
		}
		for name, v := range values {
			data[name] = append([]byte{}, v...)
			out[name] = append([]byte{}, v...)
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// updateSecrets applies change to the Secret's data (creating the Secret
// when absent) and writes it if change says so, retrying on conflicts.
func (s *Store) updateSecrets(change func(map[string][]byte) (bool, error)) error {
	ctx, cancel := s.ctx()
	defer cancel()
	for {
		sec, err := s.secrets().Get(ctx, s.opt.SecretName, metav1.GetOptions{})
		create := apierrors.IsNotFound(err)
		if err != nil && !create {
			return fmt.Errorf("kubestore: read Secret %s/%s: %w", s.opt.Namespace, s.opt.SecretName, err)
		}
		if create {
			sec = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: s.opt.SecretName, Namespace: s.opt.Namespace, Labels: map[string]string{"app.kubernetes.io/name": "confmesh"}},
				Type:       corev1.SecretTypeOpaque,
			}
		}
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		write, err := change(sec.Data)
		if err != nil || !write {
			return err
		}
		if create {
			_, err = s.secrets().Create(ctx, sec, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
		} else {
			_, err = s.secrets().Update(ctx, sec, metav1.UpdateOptions{})
			if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("kubestore: write Secret %s/%s: %w", s.opt.Namespace, s.opt.SecretName, err)
		}
		return nil
	}
}
