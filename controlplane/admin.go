package controlplane

import (
	"context"
	"errors"
	"sort"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// adminServer serves the Admin service; every call must come with the
// admin credential.
type adminServer struct {
	cpv1.UnimplementedAdminServer
	s *Server
}

func (a *adminServer) authorize(ctx context.Context) error {
	id, _, err := a.s.callerID(ctx)
	if err != nil {
		return err
	}
	if id != identity.AdminID(a.s.td) {
		return status.Errorf(codes.PermissionDenied, "%s is not the admin identity", id)
	}
	return nil
}

func (a *adminServer) ListNodes(ctx context.Context, req *cpv1.ListNodesRequest) (*cpv1.ListNodesResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	nodes, err := a.s.store.ListNodes()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list nodes: %v", err)
	}
	rev, err := a.s.store.Revision()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "revision: %v", err)
	}
	resp := &cpv1.ListNodesResponse{Revision: rev}
	for _, n := range nodes {
		resp.Nodes = append(resp.Nodes, &cpv1.Node{
			Name: n.Name, Endpoint: n.Endpoint, WireguardPublicKey: n.WireGuardKey, PodCidr: n.PodCIDR,
			State: n.State, Reason: n.Reason, Tee: n.TEE, Measurement: n.Measurement, ChipId: n.ChipID,
			AttestedAt: timestamppb.New(n.AttestedAt), ExpiresAt: timestamppb.New(n.ExpiresAt),
		})
	}
	if !req.GetAll() {
		return resp, nil
	}
	revs, err := a.s.store.ListRevocations()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "list revocations: %v", err)
	}
	for _, r := range revs {
		resp.Nodes = append(resp.Nodes, &cpv1.Node{
			Name: r.Name, State: stateRevoked, WireguardPublicKey: r.WireGuardKey, ChipId: r.ChipID,
			Reason: "revoked by an operator: its chip and WireGuard key may never join again", Since: timestamppb.New(r.RevokedAt),
		})
	}
	for _, r := range a.s.refused.list() {
		resp.Nodes = append(resp.Nodes, &cpv1.Node{
			Name: r.Name, State: stateRefused, Reason: r.Reason + ": " + r.Message, Since: timestamppb.New(r.Last), Refusals: r.Count,
		})
	}
	sort.SliceStable(resp.Nodes, func(i, j int) bool { return resp.Nodes[i].GetName() < resp.Nodes[j].GetName() })
	return resp, nil
}

func (a *adminServer) RevokeNode(ctx context.Context, req *cpv1.RevokeNodeRequest) (*cpv1.RevokeNodeResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	if err := a.s.Revoke(req.GetName()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "no node %q", req.GetName())
		}
		if r := (*refusal)(nil); errors.As(err, &r) {
			return nil, r.err
		}
		return nil, status.Errorf(codes.Internal, "revoke: %v", err)
	}
	return &cpv1.RevokeNodeResponse{}, nil
}

func (a *adminServer) RemoveNode(ctx context.Context, req *cpv1.RemoveNodeRequest) (*cpv1.RemoveNodeResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	if err := a.s.Remove(req.GetName()); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, status.Errorf(codes.NotFound, "no node %q", req.GetName())
		}
		if r := (*refusal)(nil); errors.As(err, &r) {
			return nil, r.err
		}
		return nil, status.Errorf(codes.Internal, "remove: %v", err)
	}
	return &cpv1.RemoveNodeResponse{}, nil
}

func (a *adminServer) GetPolicy(ctx context.Context, _ *cpv1.GetPolicyRequest) (*cpv1.GetPolicyResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	a.s.mu.Lock()
	p := a.s.policy
	a.s.mu.Unlock()
	y, err := p.YAML()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "render policy: %v", err)
	}
	return &cpv1.GetPolicyResponse{Policy: string(y)}, nil
}

// Revoke removes a node from the peer set for good: its record, pods and
// pod CIDR are released, and its chip and WireGuard key may not join again.
func (s *Server) Revoke(name string) error {
	s.lockWrite()
	defer s.unlockWrite()
	r, rev, err := s.store.RevokeNode(name, s.now())
	if err == nil && !chipKnown(r.ChipID) {
		s.log.Warn("revoked node had a masked chip ID; its WireGuard key is blocked, the machine can re-join with a new key", "node", name)
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return err
		}
		return s.storeWriteError(name, err)
	}
	s.log.Warn("node revoked", "node", name, "chip", shortHex(r.ChipID))
	return s.publishDelete(name, rev) // refreshes the node gauge: revoked +1
}

// Remove forgets a node without blocking it: its record and pods are
// deleted and it leaves every peer set, its name and pod CIDR are free for
// the next join, and its chip and keys may join again. Its SVID speaks for
// nothing any more (no record), and a later holder of the name has other keys.
func (s *Server) Remove(name string) error {
	s.lockWrite()
	defer s.unlockWrite()
	rev, err := s.store.DeleteNode(name)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return err
		}
		return s.storeWriteError(name, err)
	}
	s.log.Warn("node removed by the operator; its name is free", "node", name)
	return s.publishDelete(name, rev)
}
