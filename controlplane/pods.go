package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func (s *Server) validatePod(p *cpv1.PodIdentity) error {
	if p == nil {
		return errors.New("no pod identity")
	}
	if p.GetUid() == "" || p.GetName() == "" {
		return errors.New("pod uid and name are required")
	}
	if len(p.GetUid()) > 128 {
		return fmt.Errorf("pod uid is %d characters, limit 128", len(p.GetUid()))
	}
	if len(p.GetName()) > 253 {
		return fmt.Errorf("pod name is %d characters, limit 253", len(p.GetName()))
	}
	// WorkloadID validates namespace and service account.
	_, err := identity.WorkloadID(s.td, p.GetNamespace(), p.GetServiceAccount())
	return err
}

// RegisterPod records that a pod runs on the calling node.
func (s *Server) RegisterPod(ctx context.Context, req *cpv1.RegisterPodRequest) (*cpv1.RegisterPodResponse, error) {
	rec, err := s.activeCaller(ctx)
	if err != nil {
		return nil, err
	}
	p := req.GetPod()
	if err := s.validatePod(p); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pod: %v", err)
	}
	existing, err := s.store.GetPod(p.GetUid())
	if err == nil && existing.Node != rec.Name {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s is registered by node %q", p.GetUid(), existing.Node)
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.Internal, "read pod: %v", err)
	}
	if err := s.store.PutPod(&store.PodRecord{UID: p.GetUid(), Namespace: p.GetNamespace(), Name: p.GetName(), ServiceAccount: p.GetServiceAccount(), Node: rec.Name}); err != nil {
		return nil, status.Errorf(codes.Internal, "store pod: %v", err)
	}
	return &cpv1.RegisterPodResponse{}, nil
}

// UnregisterPod forgets a pod of the calling node; unknown pods are fine.
func (s *Server) UnregisterPod(ctx context.Context, req *cpv1.UnregisterPodRequest) (*cpv1.UnregisterPodResponse, error) {
	rec, err := s.callerNode(ctx)
	if err != nil {
		return nil, err
	}
	existing, err := s.store.GetPod(req.GetUid())
	if errors.Is(err, store.ErrNotFound) {
		return &cpv1.UnregisterPodResponse{}, nil
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "read pod: %v", err)
	}
	if existing.Node != rec.Name {
		return nil, status.Errorf(codes.PermissionDenied, "pod %s is registered by node %q, not %q", req.GetUid(), existing.Node, rec.Name)
	}
	if err := s.store.DeletePod(req.GetUid()); err != nil {
		return nil, status.Errorf(codes.Internal, "delete pod: %v", err)
	}
	return &cpv1.UnregisterPodResponse{}, nil
}

// callerPod applies the workload signing rule (SignWorkload, SignJWT): the
// caller is an active node and p is a pod that very node registered, under
// the same namespace, name and service account.
func (s *Server) callerPod(ctx context.Context, p *cpv1.PodIdentity) (*store.NodeRecord, *store.PodRecord, error) {
	rec, err := s.activeCaller(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := s.validatePod(p); err != nil {
		return nil, nil, status.Errorf(codes.InvalidArgument, "pod: %v", err)
	}
	reg, err := s.store.GetPod(p.GetUid())
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, status.Errorf(codes.PermissionDenied, "pod %s is not registered by any node", p.GetUid())
	}
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "read pod: %v", err)
	}
	if reg.Node != rec.Name {
		return nil, nil, status.Errorf(codes.PermissionDenied, "pod %s runs on node %q, not on the calling node %q", p.GetUid(), reg.Node, rec.Name)
	}
	if reg.Namespace != p.GetNamespace() || reg.ServiceAccount != p.GetServiceAccount() || reg.Name != p.GetName() {
		return nil, nil, status.Errorf(codes.PermissionDenied, "pod %s was registered as %s/%s (sa %s), not %s/%s (sa %s)",
			p.GetUid(), reg.Namespace, reg.Name, reg.ServiceAccount, p.GetNamespace(), p.GetName(), p.GetServiceAccount())
	}
	return rec, reg, nil
}

// SignWorkload issues spiffe://<td>/ns/<ns>/sa/<sa> for a pod the calling
// node registered, carrying the node's attestation claims.
func (s *Server) SignWorkload(ctx context.Context, req *cpv1.SignWorkloadRequest) (*cpv1.SignWorkloadResponse, error) {
	rec, reg, err := s.callerPod(ctx, req.GetPod())
	if err != nil {
		return nil, err
	}
	id, err := identity.WorkloadID(s.td, reg.Namespace, reg.ServiceAccount)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "workload ID: %v", err)
	}
	csr, _, rf := parseCSR(req.GetCsr(), id)
	if rf != nil {
		return nil, rf.err
	}
	leaf, err := parseLeaf(rec.SVID)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node SVID on record: %v", err)
	}
	claims, err := identity.ClaimsFromCert(leaf)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node claims: %v", err)
	}
	cert, err := s.ca.IssueSVID(identity.IssueRequest{PublicKey: csr.PublicKey, ID: id, TTL: s.cfg.WorkloadTTL, Now: s.now(), Claims: claims})
	if err != nil {
		return nil, status.Errorf(codes.Internal, "issue workload SVID: %v", err)
	}
	return &cpv1.SignWorkloadResponse{Svid: [][]byte{cert.Raw}, TrustBundle: s.bundleDER(), ExpiresAt: timestamppb.New(cert.NotAfter)}, nil
}

func parseLeaf(chain [][]byte) (*x509.Certificate, error) {
	if len(chain) == 0 {
		return nil, errors.New("empty chain")
	}
	return x509.ParseCertificate(chain[0])
}
