package agent

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/netip"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// PeerRefusal reasons that are not attestation sentinels.
var (
	ErrPeerSVID       = errors.New("peer SVID rejected")
	ErrPeerClaims     = errors.New("peer SVID claims do not match its evidence")
	ErrPeerRecord     = errors.New("malformed peer record")
	ErrPeerAddressing = errors.New("peer addressing not acceptable")
)

// PeerChecker verifies peers locally: the control plane is not trusted to
// vouch for them.
type PeerChecker struct {
	TrustDomain spiffeid.TrustDomain
	Bundle      *x509bundle.Bundle
	Verifier    *attest.Verifier
	// ClusterCIDR bounds every peer's pod CIDRs; LocalCIDR may not be claimed.
	ClusterCIDR netip.Prefix
	LocalCIDR   netip.Prefix
	Now         func() time.Time
}

// PeerReason labels a refusal for status and metrics.
func PeerReason(err error) string {
	switch {
	case errors.Is(err, ErrPeerSVID):
		return "svid"
	case errors.Is(err, ErrPeerClaims):
		return "claims_mismatch"
	case errors.Is(err, ErrPeerRecord):
		return "malformed_record"
	case errors.Is(err, ErrPeerAddressing):
		return "addressing"
	}
	return attest.Reason(err)
}

// Check verifies one peer record: its SVID chains to the trust bundle and
// names it; the SVID's claims match its evidence; the evidence passes this
// agent's own policy; the binding covers the peer's WireGuard key (and the
// SVID's key). Only then is it a DesiredPeer.
func (c *PeerChecker) Check(p *cpv1.Peer) (DesiredPeer, *attest.Claims, error) {
	var d DesiredPeer
	now := c.Now()
	if err := identity.ValidateNodeName(p.GetName()); err != nil {
		return d, nil, fmt.Errorf("%w: name: %v", ErrPeerRecord, err)
	}
	key, err := wgtypes.NewKey(p.GetWireguardPublicKey())
	if err != nil {
		return d, nil, fmt.Errorf("%w: WireGuard key: %v", ErrPeerRecord, err)
	}
	chain, err := identity.ParseChain(p.GetSvid())
	if err != nil {
		return d, nil, fmt.Errorf("%w: %v", ErrPeerSVID, err)
	}
	id, err := identity.VerifySVID(chain, c.Bundle, now)
	if err != nil {
		return d, nil, fmt.Errorf("%w: %v", ErrPeerSVID, err)
	}
	if want, _ := identity.NodeID(c.TrustDomain, p.GetName()); id != want {
		return d, nil, fmt.Errorf("%w: SVID names %s, record names %s", ErrPeerSVID, id, want)
	}
	leaf := chain[0]
	svidClaims, err := identity.ClaimsFromCert(leaf)
	if err != nil {
		return d, nil, fmt.Errorf("%w: %v", ErrPeerSVID, err)
	}
	idHash, err := identity.SPKIHash(leaf.PublicKey)
	if err != nil {
		return d, nil, fmt.Errorf("%w: %v", ErrPeerSVID, err)
	}
	purpose := attest.Purpose(p.GetEvidence().GetBinding().GetPurpose())
	if purpose != attest.PurposeJoin && purpose != attest.PurposeRenew {
		return d, nil, fmt.Errorf("%w: evidence purpose %q is not join or renew", attest.ErrWrongNonce, purpose)
	}
	att, err := c.Verifier.Verify(p.GetEvidence(), attest.Expect{
		Purpose: purpose, Key: key[:], IdentityKeyHash: idHash, Name: p.GetName(),
	})
	if err != nil {
		return d, nil, err
	}
	chipDigest := sha256.Sum256(att.ChipID)
	switch {
	case !bytes.Equal(svidClaims.WireGuardKey, key[:]):
		return d, nil, fmt.Errorf("%w: SVID binds WireGuard key %x…, record has %x…", ErrPeerClaims, svidClaims.WireGuardKey[:4], key[:4])
	case svidClaims.TEE != att.TEE:
		return d, nil, fmt.Errorf("%w: TEE %q vs %q", ErrPeerClaims, svidClaims.TEE, att.TEE)
	case !bytes.Equal(svidClaims.Measurement, att.Measurement):
		return d, nil, fmt.Errorf("%w: measurement", ErrPeerClaims)
	case svidClaims.ReportedTCB != att.ReportedTCB.Raw:
		return d, nil, fmt.Errorf("%w: reported TCB", ErrPeerClaims)
	case !bytes.Equal(svidClaims.ChipIDDigest, chipDigest[:]):
		return d, nil, fmt.Errorf("%w: chip ID", ErrPeerClaims)
	case !bytes.Equal(svidClaims.ReportDigest, att.ReportDigest):
		return d, nil, fmt.Errorf("%w: report digest", ErrPeerClaims)
	}
	ep, err := netip.ParseAddrPort(p.GetEndpoint())
	if err != nil {
		return d, nil, fmt.Errorf("%w: endpoint %q: %v", ErrPeerAddressing, p.GetEndpoint(), err)
	}
	var allowed []netip.Prefix
	for _, s := range p.GetPodCidrs() {
		pfx, err := netip.ParsePrefix(s)
		if err != nil || pfx != pfx.Masked() {
			return d, nil, fmt.Errorf("%w: pod CIDR %q", ErrPeerAddressing, s)
		}
		if !c.ClusterCIDR.Contains(pfx.Addr()) || pfx.Bits() < c.ClusterCIDR.Bits() {
			return d, nil, fmt.Errorf("%w: pod CIDR %s is outside the cluster CIDR %s", ErrPeerAddressing, pfx, c.ClusterCIDR)
		}
		if c.LocalCIDR.IsValid() && pfx.Overlaps(c.LocalCIDR) {
			return d, nil, fmt.Errorf("%w: pod CIDR %s overlaps this node's %s", ErrPeerAddressing, pfx, c.LocalCIDR)
		}
		allowed = append(allowed, pfx)
	}
	if len(allowed) == 0 {
		return d, nil, fmt.Errorf("%w: no pod CIDR", ErrPeerAddressing)
	}
	return DesiredPeer{Name: p.GetName(), PublicKey: key, Endpoint: ep, AllowedIPs: allowed}, att, nil
}
