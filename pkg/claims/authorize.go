package claims

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// Requirement is what a peer's claims must satisfy.
type Requirement struct {
	// Measurements lists the accepted launch measurements (a list, so a
	// rollout can accept the old and the new image). It must not be empty:
	// a Requirement without measurements refuses every peer. To accept any
	// measurement, use go-spiffe's authorizers without this package.
	Measurements [][]byte
	// TEEs lists the accepted TEE types; empty accepts any type the control
	// plane admitted. Production deployments should list TEESevSnp (and
	// TEETDX) so that certificates of a development cluster running the
	// simulated TEE (TEESimSnp) are refused even if trust is misconfigured.
	TEEs []string
}

// Check reports whether c satisfies r, naming the mismatch when it does not.
func (r Requirement) Check(c *Claims) error {
	if c == nil {
		return errors.New("claims: no claims")
	}
	if len(r.Measurements) == 0 {
		return errors.New("claims: the requirement lists no accepted measurement, so it accepts no peer")
	}
	if len(r.TEEs) > 0 && !slices.Contains(r.TEEs, c.TEE) {
		return fmt.Errorf("claims: TEE %q of node %s is not one of %q", c.TEE, c.NodeID, r.TEEs)
	}
	if !c.HasMeasurement(r.Measurements...) {
		return fmt.Errorf("claims: measurement %s of node %s is not an accepted one", c.MeasurementHex(), c.NodeID)
	}
	return nil
}

// Authorize returns a tlsconfig.Authorizer that accepts a peer whose SPIFFE
// ID passes match (go-spiffe's spiffeid.MatchID, MatchOneOf, MatchMemberOf,
// ...) and whose SVID carries claims satisfying req, read from the leaf of
// the chain go-spiffe verified. The node named in the claims must be in the
// peer's trust domain.
func Authorize(match spiffeid.Matcher, req Requirement) tlsconfig.Authorizer {
	return func(id spiffeid.ID, verifiedChains [][]*x509.Certificate) error {
		if match == nil {
			return errors.New("claims: no SPIFFE ID matcher")
		}
		if err := match(id); err != nil {
			return err
		}
		c, err := FromVerifiedChains(verifiedChains)
		if err != nil {
			return fmt.Errorf("peer %s: %w", id, err)
		}
		if !c.NodeID.IsZero() && !c.NodeID.MemberOf(id.TrustDomain()) {
			return fmt.Errorf("peer %s: claims name node %s of another trust domain", id, c.NodeID)
		}
		if err := req.Check(c); err != nil {
			return fmt.Errorf("peer %s: %w", id, err)
		}
		return nil
	}
}

// AuthorizeID accepts exactly the SPIFFE ID id running on a node whose
// launch measurement is one of measurements (at least one is required).
func AuthorizeID(id spiffeid.ID, measurements ...[]byte) tlsconfig.Authorizer {
	return Authorize(spiffeid.MatchID(id), Requirement{Measurements: measurements})
}

// AuthorizeMemberOf accepts any SPIFFE ID of trust domain td running on a
// node whose launch measurement is one of measurements.
func AuthorizeMemberOf(td spiffeid.TrustDomain, measurements ...[]byte) tlsconfig.Authorizer {
	return Authorize(spiffeid.MatchMemberOf(td), Requirement{Measurements: measurements})
}
