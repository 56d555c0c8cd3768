package identity

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// IssueRequest describes one X.509-SVID for CA.IssueSVID.
type IssueRequest struct {
	// PublicKey is the subject's key, taken from a CSR verified by ParseCSR.
	// ECDSA P-256/P-384 and Ed25519 are accepted.
	PublicKey crypto.PublicKey
	// ID is the SVID's SPIFFE ID; it must be in the CA's trust domain and
	// have a path.
	ID spiffeid.ID
	// TTL is the validity from Now; it must be > 0 and is capped at the CA
	// certificate's remaining lifetime.
	TTL time.Duration
	// Now is the issuance time; zero means time.Now().
	Now time.Time
	// Claims, if not nil, is encoded as the claims extension (node and
	// workload SVIDs). Nil: no claims extension (control plane and admin
	// certificates).
	Claims *Claims
	// DNSNames and IPAddresses are only for the control plane's serving
	// certificate (ID == ControlPlaneID); they are refused for other IDs.
	DNSNames    []string
	IPAddresses []net.IP
}

// IssueSVID signs an X.509-SVID for req following the X.509-SVID
// specification: exactly one URI SAN (req.ID), not a CA, key usage
// digitalSignature only, extended key usages serverAuth and clientAuth, a
// random 128-bit serial, NotBefore = Now-1m (clock skew), NotAfter =
// Now+TTL (capped at the CA's NotAfter), and the CA's key ID as authority
// key ID.
//
// It refuses a zero ID, an ID outside the CA's trust domain or without a
// path, TTL <= 0, an unsupported public key, a CA that has expired, claims
// that do not encode (see Claims.Extension), claims whose NodeID is not a
// node of this trust domain or, on a node SVID, not the SVID's own ID, and
// DNS names or IP addresses on anything but the control plane's ID.
func (ca *CA) IssueSVID(req IssueRequest) (*x509.Certificate, error) {
	if err := ca.checkRequest(&req); err != nil {
		return nil, fmt.Errorf("issue SVID: %w", err)
	}
	now := req.Now
	if now.IsZero() {
		now = time.Now()
	}
	if !now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("issue SVID %s: CA certificate expired at %s", req.ID, ca.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(req.TTL)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue SVID %s: %w", req.ID, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"confmesh"}},
		URIs:                  []*url.URL{req.ID.URL()},
		DNSNames:              req.DNSNames,
		IPAddresses:           req.IPAddresses,
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		IsCA:                  false,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		AuthorityKeyId:        ca.cert.SubjectKeyId,
	}
	if req.Claims != nil {
		ext, err := req.Claims.Extension()
		if err != nil {
			return nil, fmt.Errorf("issue SVID %s: %w", req.ID, err)
		}
		tmpl.ExtraExtensions = []pkix.Extension{ext}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, req.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue SVID %s: %w", req.ID, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue SVID %s: parse issued certificate: %w", req.ID, err)
	}
	return cert, nil
}

// checkRequest validates everything about req that does not depend on time.
func (ca *CA) checkRequest(req *IssueRequest) error {
	switch {
	case req.ID.IsZero():
		return errors.New("SPIFFE ID is empty")
	case !req.ID.MemberOf(ca.td):
		return fmt.Errorf("SPIFFE ID %s is not in the CA's trust domain %s", req.ID, ca.td)
	case req.ID.Path() == "":
		return fmt.Errorf("SPIFFE ID %s is a trust domain ID; an SVID needs a path", req.ID)
	case req.TTL <= 0:
		return fmt.Errorf("TTL %s for %s must be positive", req.TTL, req.ID)
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return fmt.Errorf("%s: %w", req.ID, err)
	}
	if (len(req.DNSNames) > 0 || len(req.IPAddresses) > 0) && req.ID != ControlPlaneID(ca.td) {
		return fmt.Errorf("%s: DNS names and IP addresses are only allowed on the control plane certificate (%s)", req.ID, ControlPlaneID(ca.td))
	}
	if req.Claims != nil && req.Claims.NodeID != "" {
		nodeID, err := spiffeid.FromString(req.Claims.NodeID)
		if err != nil {
			return fmt.Errorf("%s: claims node ID %q: %w", req.ID, req.Claims.NodeID, err)
		}
		if !nodeID.MemberOf(ca.td) {
			return fmt.Errorf("%s: claims node ID %s is not in the CA's trust domain %s", req.ID, nodeID, ca.td)
		}
		if _, isNode := NodeNameFromID(req.ID); isNode && nodeID != req.ID {
			return fmt.Errorf("%s: claims name another node (%s)", req.ID, nodeID)
		}
	}
	return nil
}
