package kubestore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Group and Version of confmesh's custom resources (manifests/base/crds.yaml).
// v1alpha1: the schema may still change between releases.
const (
	Group   = "confmesh.io"
	Version = "v1alpha1"
)

// The custom resources, all cluster scoped.
var (
	// NodesGVR is AttestedNode: one admitted (or rejected) node, named after it.
	NodesGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "attestednodes"}
	// RevocationsGVR is NodeRevocation: a chip and WireGuard key that may never join again.
	RevocationsGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "noderevocations"}
	// PodsGVR is PodRegistration: a pod a node registered, named after the pod's UID.
	PodsGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "podregistrations"}
	// ClaimsGVR is PodCIDRClaim: the one node a pod CIDR belongs to.
	ClaimsGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "podcidrclaims"}
)

// Labels the store sets. Node names may be longer than a label value, so
// labels carry a hash and readers compare the spec's exact value.
const (
	labelNode = "confmesh.io/node-sha256"
	labelChip = "confmesh.io/chip-sha256"
	labelKey  = "confmesh.io/wireguard-key-sha256"
)

// annotationClaimedAt on a PodCIDRClaim is when a replica last claimed the
// CIDR for its node (RFC 3339, the replica's clock): a claim younger than
// Options.ClaimGrace may belong to a node write still in flight.
const annotationClaimedAt = "confmesh.io/claimed-at"

// labelHash is a label value naming b: 40 hex digits of its SHA-256.
func labelHash(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:20])
}

// nodeStatus is an AttestedNode's record. It is all status, written only
// through the status subresource: the control plane observes and decides
// everything in it, nobody declares any of it, and one record change is
// then one write (one resourceVersion, one watch event), never a spec write
// and a status write with a half-changed record in between. []byte fields
// are base64 in JSON, as the CRD's schema says (format: byte).
type nodeStatus struct {
	Endpoint     string `json:"endpoint,omitempty"`
	WireGuardKey []byte `json:"wireguardKey,omitempty"`
	PodCIDR      string `json:"podCIDR,omitempty"`
	ChipID       []byte `json:"chipID,omitempty"`
	TEE          string `json:"tee,omitempty"`
	Measurement  []byte `json:"measurement,omitempty"`
	// MeasurementPrefix is the first 8 bytes of Measurement in hex, for
	// kubectl's printer column (JSONPath cannot hex-encode).
	MeasurementPrefix string   `json:"measurementPrefix,omitempty"`
	SVID              [][]byte `json:"svid,omitempty"`
	Evidence          []byte   `json:"evidence,omitempty"`
	AttestedAt        *string  `json:"attestedAt,omitempty"`
	ExpiresAt         *string  `json:"expiresAt,omitempty"`
	State             string   `json:"state"`
	Reason            string   `json:"reason,omitempty"`
}

// errIncomplete marks an AttestedNode that was created and whose record
// (status) was not written yet, or never was (a crash between the two
// requests of a first write): it is no node.
var errIncomplete = errors.New("created, record not written")

type revocationSpec struct {
	Node         string `json:"node"`
	ChipID       []byte `json:"chipID,omitempty"`
	WireGuardKey []byte `json:"wireguardKey,omitempty"`
	RevokedAt    string `json:"revokedAt"`
}

type podSpec struct {
	UID            string `json:"uid"`
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	ServiceAccount string `json:"serviceAccount"`
	Node           string `json:"node"`
}

type claimSpec struct {
	CIDR string `json:"cidr"`
	Node string `json:"node"`
}

// toMap converts a JSON-tagged struct to an unstructured field.
func toMap(v any) (map[string]any, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(data, &m)
}

// fromField decodes the object's top-level field into v.
func fromField(u *unstructured.Unstructured, field string, v any) error {
	m, ok := u.Object[field]
	if !ok {
		return fmt.Errorf("%s %q has no %s", u.GetKind(), u.GetName(), field)
	}
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s %q: decode %s: %w", u.GetKind(), u.GetName(), field, err)
	}
	return nil
}

func newObject(kind, name string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{}}
	u.SetAPIVersion(Group + "/" + Version)
	u.SetKind(kind)
	u.SetName(name)
	return u
}

func timeString(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func parseTime(s *string) (time.Time, error) {
	if s == nil || *s == "" {
		return time.Time{}, nil
	}
	return time.Parse(time.RFC3339Nano, *s)
}

// revisionOf parses a resourceVersion. The API server's are etcd
// revisions: decimal, global and increasing; anything else is refused
// rather than compared wrongly.
func revisionOf(rv string) (uint64, error) {
	n, err := strconv.ParseUint(rv, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("resourceVersion %q is not a positive decimal (the store needs an etcd-backed API server)", rv)
	}
	return n, nil
}

// nodeObject is the AttestedNode for n: an empty spec and n as status.
func nodeObject(n *store.NodeRecord) (*unstructured.Unstructured, error) {
	u := newObject("AttestedNode", n.Name)
	st := nodeStatus{
		Endpoint: n.Endpoint, WireGuardKey: n.WireGuardKey, PodCIDR: n.PodCIDR, ChipID: n.ChipID,
		TEE: n.TEE, Measurement: n.Measurement, SVID: n.SVID, Evidence: n.Evidence,
		AttestedAt: timeString(n.AttestedAt), ExpiresAt: timeString(n.ExpiresAt), State: n.State, Reason: n.Reason,
	}
	if len(n.Measurement) > 0 {
		st.MeasurementPrefix = hex.EncodeToString(n.Measurement[:min(8, len(n.Measurement))])
	}
	status, err := toMap(st)
	if err != nil {
		return nil, err
	}
	u.Object["spec"], u.Object["status"] = map[string]any{}, status
	return u, nil
}

// incomplete reports whether u is an AttestedNode without a record.
func incomplete(u *unstructured.Unstructured) bool {
	state, _, _ := unstructured.NestedString(u.Object, "status", "state")
	return state == ""
}

// nodeRecord is the record an AttestedNode holds; Revision is its
// resourceVersion. An object without one is errIncomplete.
func nodeRecord(u *unstructured.Unstructured) (*store.NodeRecord, error) {
	if incomplete(u) {
		return nil, fmt.Errorf("AttestedNode %q: %w", u.GetName(), errIncomplete)
	}
	var st nodeStatus
	if err := fromField(u, "status", &st); err != nil {
		return nil, err
	}
	rev, err := revisionOf(u.GetResourceVersion())
	if err != nil {
		return nil, fmt.Errorf("AttestedNode %q: %w", u.GetName(), err)
	}
	n := &store.NodeRecord{
		Name: u.GetName(), Endpoint: st.Endpoint, WireGuardKey: st.WireGuardKey, PodCIDR: st.PodCIDR, ChipID: st.ChipID,
		TEE: st.TEE, Measurement: st.Measurement, SVID: st.SVID, Evidence: st.Evidence, State: st.State, Reason: st.Reason,
		Revision: rev,
	}
	if n.AttestedAt, err = parseTime(st.AttestedAt); err != nil {
		return nil, fmt.Errorf("AttestedNode %q: attestedAt: %w", u.GetName(), err)
	}
	if n.ExpiresAt, err = parseTime(st.ExpiresAt); err != nil {
		return nil, fmt.Errorf("AttestedNode %q: expiresAt: %w", u.GetName(), err)
	}
	return n, nil
}

func revocationObject(r *store.Revocation) (*unstructured.Unstructured, error) {
	u := newObject("NodeRevocation", "")
	u.SetGenerateName(generateNamePrefix(r.Name))
	labels := map[string]string{labelNode: labelHash([]byte(r.Name))}
	if len(r.ChipID) > 0 {
		labels[labelChip] = labelHash(r.ChipID)
	}
	if len(r.WireGuardKey) > 0 {
		labels[labelKey] = labelHash(r.WireGuardKey)
	}
	u.SetLabels(labels)
	spec, err := toMap(revocationSpec{Node: r.Name, ChipID: r.ChipID, WireGuardKey: r.WireGuardKey, RevokedAt: r.RevokedAt.UTC().Format(time.RFC3339Nano)})
	if err != nil {
		return nil, err
	}
	u.Object["spec"] = spec
	return u, nil
}

// generateNamePrefix is metadata.generateName for a revocation of node:
// the node's name (shortened so the generated name stays a valid name).
func generateNamePrefix(node string) string {
	if len(node) > 200 {
		node = node[:200]
	}
	return node + "-"
}

func revocationRecord(u *unstructured.Unstructured) (*store.Revocation, error) {
	var spec revocationSpec
	if err := fromField(u, "spec", &spec); err != nil {
		return nil, err
	}
	at, err := time.Parse(time.RFC3339Nano, spec.RevokedAt)
	if err != nil {
		return nil, fmt.Errorf("NodeRevocation %q: revokedAt: %w", u.GetName(), err)
	}
	return &store.Revocation{Name: spec.Node, ChipID: spec.ChipID, WireGuardKey: spec.WireGuardKey, RevokedAt: at}, nil
}

func podObject(p *store.PodRecord, owner *unstructured.Unstructured) (*unstructured.Unstructured, error) {
	u := newObject("PodRegistration", p.UID)
	u.SetLabels(map[string]string{labelNode: labelHash([]byte(p.Node))})
	// The node owns its pods: the garbage collector removes pods a crash
	// left behind after their node was deleted.
	u.SetOwnerReferences([]metav1.OwnerReference{{APIVersion: Group + "/" + Version, Kind: "AttestedNode", Name: owner.GetName(), UID: owner.GetUID()}})
	spec, err := toMap(podSpec{UID: p.UID, Namespace: p.Namespace, Name: p.Name, ServiceAccount: p.ServiceAccount, Node: p.Node})
	if err != nil {
		return nil, err
	}
	u.Object["spec"] = spec
	return u, nil
}

func podRecord(u *unstructured.Unstructured) (*store.PodRecord, error) {
	var spec podSpec
	if err := fromField(u, "spec", &spec); err != nil {
		return nil, err
	}
	return &store.PodRecord{UID: spec.UID, Namespace: spec.Namespace, Name: spec.Name, ServiceAccount: spec.ServiceAccount, Node: spec.Node}, nil
}

// claimName is the PodCIDRClaim name of a pod CIDR: its address bytes in
// hex and its length, unique per prefix and a valid object name.
func claimName(cidr string) (string, netip.Prefix, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return "", netip.Prefix{}, fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	p = p.Masked()
	a := p.Addr().AsSlice()
	return fmt.Sprintf("v%d-%s-%d", map[int]int{4: 4, 16: 6}[len(a)], hex.EncodeToString(a), p.Bits()), p, nil
}

func claimObject(name string, p netip.Prefix, node string, now time.Time) (*unstructured.Unstructured, error) {
	u := newObject("PodCIDRClaim", name)
	u.SetLabels(map[string]string{labelNode: labelHash([]byte(node))})
	setClaimedAt(u, now)
	spec, err := toMap(claimSpec{CIDR: p.String(), Node: node})
	if err != nil {
		return nil, err
	}
	u.Object["spec"] = spec
	return u, nil
}

// setClaimedAt records on a claim when it was (last) claimed.
func setClaimedAt(u *unstructured.Unstructured, at time.Time) {
	ann := u.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[annotationClaimedAt] = at.UTC().Format(time.RFC3339Nano)
	u.SetAnnotations(ann)
}

// claimedAt is when a claim was last claimed: its annotation, else (a
// claim written before the annotation existed, or edited by hand) its
// creation time.
func claimedAt(u *unstructured.Unstructured) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, u.GetAnnotations()[annotationClaimedAt]); err == nil {
		return t
	}
	return u.GetCreationTimestamp().Time
}
