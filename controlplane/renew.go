package controlplane

import (
	"bytes"
	"context"
	"errors"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Renew re-attests a node in the peer set with fresh evidence (purpose
// "renew", a challenge from Challenge) and issues a new node SVID. With
// new_wireguard_public_key set the evidence binds the new key and the
// peer set switches to it.
func (s *Server) Renew(ctx context.Context, req *cpv1.RenewRequest) (*cpv1.RenewResponse, error) {
	resp, name, err := s.renew(ctx, req)
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			s.metrics.renewals.WithLabelValues("refused", r.reason).Inc()
			s.log.Warn("renewal refused", "node", name, "reason", r.reason, "err", r.err)
			return nil, cpv1.WithRefusalReason(r.err, r.reason)
		}
		if _, ok := status.FromError(err); ok {
			s.metrics.renewals.WithLabelValues("refused", "unauthenticated").Inc()
			return nil, err
		}
		s.metrics.renewals.WithLabelValues("error", "internal").Inc()
		return nil, status.Errorf(codes.Internal, "renew: %v", err)
	}
	s.metrics.renewals.WithLabelValues("accepted", "").Inc()
	s.log.Info("node renewed", "node", name, "rotatedKey", len(req.GetNewWireguardPublicKey()) > 0)
	return resp, nil
}

func (s *Server) renew(ctx context.Context, req *cpv1.RenewRequest) (*cpv1.RenewResponse, string, error) {
	now := s.now()
	if rf := s.storeRefusal(); rf != nil {
		return nil, "", rf
	}
	rec, err := s.activeCaller(ctx)
	if err != nil {
		return nil, "", err
	}
	name := rec.Name
	key := rec.WireGuardKey
	if nk := req.GetNewWireguardPublicKey(); len(nk) > 0 {
		if len(nk) != attest.KeySize {
			return nil, name, refuse("bad_request", codes.InvalidArgument, "new WireGuard key is %d bytes, want %d", len(nk), attest.KeySize)
		}
		key = nk
	}
	nodeID, err := identity.NodeID(s.td, name)
	if err != nil {
		return nil, name, err
	}
	csr, idHash, rf := parseCSR(req.GetCsr(), nodeID)
	if rf != nil {
		return nil, name, rf
	}
	ev := req.GetEvidence()
	if ev == nil {
		return nil, name, refuse("bad_request", codes.InvalidArgument, "no evidence")
	}
	if rf := checkEvidenceSize(ev); rf != nil {
		return nil, name, rf
	}
	if rf := s.checkChallenge(ev.GetBinding().GetChallenge(), now); rf != nil {
		return nil, name, rf
	}
	want := attest.Expect{Purpose: attest.PurposeRenew, Key: key, IdentityKeyHash: idHash, Name: name, Challenge: ev.GetBinding().GetChallenge()}
	res, rf := s.verifyEvidence(ev, want)
	if rf != nil {
		return nil, name, rf
	}
	if rf := s.consumeChallenge(want.Challenge, now); rf != nil {
		return nil, name, rf
	}
	s.lockWrite()
	defer s.unlockWrite()
	claims, rf := s.reverifyIfPolicyChanged(res, ev, want)
	if rf != nil {
		return nil, name, rf
	}
	// Re-read under the lock: a revocation may have landed meanwhile.
	rec, err = s.store.GetNode(name)
	if err != nil {
		return nil, name, refuse("revoked", codes.PermissionDenied, "node %q is no longer admitted", name)
	}
	prevRev := rec.Revision // the write below is conditional on this read
	if !sameMachine(rec, claims.ChipID, csr.PublicKey) {
		return nil, name, refuse("chip_changed", codes.PermissionDenied, "renewal evidence comes from another chip than node %q joined with", name)
	}
	if rf := s.checkRevoked(claims.ChipID, key); rf != nil {
		return nil, name, rf
	}
	if !bytes.Equal(key, rec.WireGuardKey) {
		for _, n := range s.nodes.recs {
			if n.Name != name && bytes.Equal(n.WireGuardKey, key) {
				return nil, name, refuse("key_in_use", codes.AlreadyExists, "WireGuard key is already used by node %q", n.Name)
			}
		}
	}
	svid, err := s.issueNodeSVID(name, csr, claims, key, now)
	if err != nil {
		return nil, name, err
	}
	rec.WireGuardKey, rec.SVID, rec.AttestedAt, rec.ExpiresAt = key, [][]byte{svid.Raw}, claims.IssuedAt, svid.NotAfter
	rec.TEE, rec.Measurement = claims.TEE, claims.Measurement
	// Fresh evidence just passed the policy in force: a sweep that rejected
	// the node while this renewal was in flight is overtaken.
	rec.State, rec.Reason = store.StateActive, ""
	if rec.Evidence, err = attest.MarshalEvidence(ev); err != nil {
		return nil, name, err
	}
	if err := s.putAndPublish(rec, prevRev); err != nil {
		return nil, name, err
	}
	return &cpv1.RenewResponse{Svid: [][]byte{svid.Raw}, TrustBundle: s.bundleDER(), ExpiresAt: timestamppb.New(svid.NotAfter), JwtBundle: s.JWTBundle()}, name, nil
}
