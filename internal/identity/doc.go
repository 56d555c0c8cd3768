// Package identity implements confmesh's SPIFFE identities: the SPIFFE IDs of
// nodes, workloads, the control plane and administrators; the SPIFFE X.509 CA
// that issues X.509-SVIDs; the claims extension that binds a node or workload
// SVID to the node's verified attestation report; CSR handling; and SVID
// verification against a trust bundle.
//
// ID handling, bundles and SVID verification use go-spiffe v2 (spiffeid,
// x509bundle, x509svid). go-spiffe does not issue certificates, so issuance is
// plain crypto/x509 that follows the X.509-SVID specification.
//
// Everything here is pure logic: no I/O, no global state, no root.
package identity
