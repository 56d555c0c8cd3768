package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// callerID returns the SPIFFE ID of the mTLS client certificate, verified
// against this control plane's CA.
func (s *Server) callerID(ctx context.Context) (spiffeid.ID, *x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, nil, status.Error(codes.Unauthenticated, "no peer information")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return spiffeid.ID{}, nil, status.Error(codes.Unauthenticated, "this call needs mTLS with a node SVID (join first)")
	}
	id, _, err := x509svid.Verify(ti.State.PeerCertificates, s.ca.Bundle(), x509svid.WithTime(s.now()))
	if err != nil {
		return spiffeid.ID{}, nil, status.Errorf(codes.Unauthenticated, "client certificate is not a valid SVID of this trust domain: %v", err)
	}
	return id, ti.State.PeerCertificates[0], nil
}

// callerNode identifies the calling node: a node SVID whose key is the one
// the node's current record was issued for (so the SVID of a revoked node
// does not speak for a node that took its name later).
func (s *Server) callerNode(ctx context.Context) (*store.NodeRecord, error) {
	id, leaf, err := s.callerID(ctx)
	if err != nil {
		return nil, err
	}
	name, ok := identity.NodeNameFromID(id)
	if !ok {
		return nil, status.Errorf(codes.PermissionDenied, "%s is not a node identity", id)
	}
	rec, err := s.store.GetNode(name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, status.Errorf(codes.PermissionDenied, "node %q is not admitted (revoked or never joined)", name)
	}
	if err != nil {
		if s.shared != nil {
			return nil, status.Errorf(codes.Unavailable, "read node from the store: %v; retry or use another replica", err)
		}
		return nil, status.Errorf(codes.Internal, "read node: %v", err)
	}
	if len(rec.SVID) == 0 {
		return nil, status.Errorf(codes.PermissionDenied, "node %q has no SVID on record", name)
	}
	cur, err := x509.ParseCertificate(rec.SVID[0])
	if err != nil || !bytes.Equal(cur.RawSubjectPublicKeyInfo, leaf.RawSubjectPublicKeyInfo) {
		return nil, status.Errorf(codes.PermissionDenied, "the SVID presented for node %q is not the one on record", name)
	}
	// A node spoke on this connection: it leaves the unauthenticated
	// pool and its idle timeout (limits.go).
	s.connAuthenticated(ctx)
	return rec, nil
}

// activeCaller is callerNode for calls only nodes in the peer set may make.
func (s *Server) activeCaller(ctx context.Context) (*store.NodeRecord, error) {
	rec, err := s.callerNode(ctx)
	if err != nil {
		return nil, err
	}
	if rec.State != store.StateActive {
		return nil, status.Errorf(codes.PermissionDenied, "node %q left the peer set: %s (join again)", rec.Name, rec.Reason)
	}
	return rec, nil
}
