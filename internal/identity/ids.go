package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Path prefixes of confmesh's SPIFFE IDs.
const (
	nodePathPrefix     = "/confmesh/node/"
	controlPlanePath   = "/confmesh/controlplane"
	adminPath          = "/confmesh/admin"
	workloadNSSegment  = "ns"
	workloadSASegment  = "sa"
	workloadPathPrefix = "/" + workloadNSSegment + "/"
)

// ValidateNodeName reports whether name is a valid confmesh node name: an
// RFC 1123 subdomain as Kubernetes validates node names (lower-case a-z, 0-9,
// '-' and '.', labels starting and ending with an alphanumeric character, at
// most 253 characters). The error names the problem.
func ValidateNodeName(name string) error {
	return validateDNS1123Subdomain("node name", name)
}

// NodeID returns the SPIFFE ID of node name in trust domain td:
// spiffe://<td>/confmesh/node/<name>. name must pass ValidateNodeName.
func NodeID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("node ID: trust domain is empty")
	}
	if err := ValidateNodeName(name); err != nil {
		return spiffeid.ID{}, fmt.Errorf("node ID: %w", err)
	}
	id, err := spiffeid.FromSegments(td, "confmesh", "node", name)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("node ID for %q: %w", name, err)
	}
	return id, nil
}

// NodeNameFromID returns the node name of a node SPIFFE ID made by NodeID. It
// reports false for any other ID (workload, control plane, admin, zero, or a
// node path whose name is not a valid node name). It does not look at the
// trust domain; callers check that separately.
func NodeNameFromID(id spiffeid.ID) (string, bool) {
	if id.IsZero() {
		return "", false
	}
	name, ok := strings.CutPrefix(id.Path(), nodePathPrefix)
	if !ok || ValidateNodeName(name) != nil {
		return "", false
	}
	return name, true
}

// WorkloadID returns the SPIFFE ID of a Kubernetes service account in trust
// domain td: spiffe://<td>/ns/<namespace>/sa/<serviceAccount>. namespace must
// be an RFC 1123 label and serviceAccount an RFC 1123 subdomain, as Kubernetes
// requires.
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("workload ID: trust domain is empty")
	}
	if err := validateDNS1123Label("namespace", namespace); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload ID: %w", err)
	}
	if err := validateDNS1123Subdomain("service account name", serviceAccount); err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload ID: %w", err)
	}
	id, err := spiffeid.FromSegments(td, workloadNSSegment, namespace, workloadSASegment, serviceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload ID for %s/%s: %w", namespace, serviceAccount, err)
	}
	return id, nil
}

// WorkloadFromID is the inverse of WorkloadID: it returns the namespace and
// service account of a workload SPIFFE ID, and false for any other ID. It
// does not look at the trust domain.
func WorkloadFromID(id spiffeid.ID) (namespace, serviceAccount string, ok bool) {
	if id.IsZero() {
		return "", "", false
	}
	rest, found := strings.CutPrefix(id.Path(), workloadPathPrefix)
	if !found {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[1] != workloadSASegment {
		return "", "", false
	}
	if validateDNS1123Label("namespace", parts[0]) != nil ||
		validateDNS1123Subdomain("service account name", parts[2]) != nil {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// ControlPlaneID returns the control plane's SPIFFE ID,
// spiffe://<td>/confmesh/controlplane, or the zero ID if td is zero.
func ControlPlaneID(td spiffeid.TrustDomain) spiffeid.ID {
	return fixedID(td, controlPlanePath)
}

// AdminID returns the SPIFFE ID of operator (CLI) certificates,
// spiffe://<td>/confmesh/admin, or the zero ID if td is zero.
func AdminID(td spiffeid.TrustDomain) spiffeid.ID {
	return fixedID(td, adminPath)
}

func fixedID(td spiffeid.TrustDomain, path string) spiffeid.ID {
	if td.IsZero() {
		return spiffeid.ID{}
	}
	// path is a valid constant and td is non-zero, so this cannot fail.
	return spiffeid.RequireFromPath(td, path)
}
