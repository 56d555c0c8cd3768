package workload

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const signTimeout = 30 * time.Second

func workloadID(td spiffeid.TrustDomain, p Pod) (spiffeid.ID, error) {
	return identity.WorkloadID(td, p.Namespace, p.ServiceAccount)
}

// svidEntry is one pod's X.509-SVID: a key made here, the chain the control
// plane signed for it, and the open streams waiting for the next one.
type svidEntry struct {
	pod Pod
	id  spiffeid.ID

	signMu sync.Mutex // one signing at a time

	// guarded by Server.mu
	key      crypto.Signer
	keyDER   []byte
	chain    []*x509.Certificate
	received time.Time
	refs     int           // open FetchX509SVID streams
	changed  chan struct{} // closed and replaced when the SVID changes or the pod goes
	gone     bool
}

// refreshAt is the SVID's half life, counted from when it arrived. The
// caller holds Server.mu.
func (e *svidEntry) refreshAt() time.Time {
	if len(e.chain) == 0 {
		return time.Time{}
	}
	na := e.chain[0].NotAfter
	return e.received.Add(na.Sub(e.received) / 2)
}

// acquire returns the pod's entry with a current SVID, signing one if there
// is none or it is past half life; the caller must release it.
func (s *Server) acquire(ctx context.Context, pod Pod, id spiffeid.ID) (*svidEntry, error) {
	s.mu.Lock()
	e, ok := s.svids[pod.UID]
	if !ok || e.gone || e.id != id {
		e = &svidEntry{pod: pod, id: id, changed: make(chan struct{})}
		s.svids[pod.UID] = e
	}
	e.refs++
	s.mu.Unlock()
	if err := s.ensureFresh(ctx, e); err != nil {
		s.release(e)
		return nil, err
	}
	return e, nil
}

func (s *Server) release(e *svidEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e.refs--
}

// ensureFresh signs a new SVID (with a new key) for e when it has none or
// its current one is past half life. A failed renewal keeps a still valid
// SVID in service.
func (s *Server) ensureFresh(ctx context.Context, e *svidEntry) error {
	e.signMu.Lock()
	defer e.signMu.Unlock()
	s.mu.Lock()
	due := len(e.chain) == 0 || !s.now().Before(e.refreshAt())
	have := len(e.chain) > 0
	s.mu.Unlock()
	if !due {
		return nil
	}
	key, keyDER, chain, err := s.signX509(ctx, e.pod, e.id)
	if err != nil {
		if have {
			s.mu.Lock()
			valid := s.now().Before(e.chain[0].NotAfter)
			s.mu.Unlock()
			if valid {
				// Keep serving the current SVID; the rotation loop retries.
				s.log.Warn("workload SVID renewal failed; keeping the current one", "pod", e.pod.String(), "id", e.id.String(), "err", err)
				return nil
			}
		}
		return err
	}
	s.mu.Lock()
	e.key, e.keyDER, e.chain, e.received = key, keyDER, chain, s.now()
	close(e.changed)
	e.changed = make(chan struct{})
	s.mu.Unlock()
	s.log.Info("workload SVID issued", "pod", e.pod.String(), "id", e.id.String(), "expires", chain[0].NotAfter)
	return nil
}

// signX509 makes a fresh key, has the control plane sign it and checks the
// result: it chains to the trust bundle, names exactly id, certifies our
// key and carries the node's claims.
func (s *Server) signX509(ctx context.Context, pod Pod, id spiffeid.ID) (crypto.Signer, []byte, []*x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "workload key: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "workload key: %v", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "workload CSR: %v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, signTimeout)
	defer cancel()
	ders, err := s.cfg.Backend.SignX509(ctx, pod, csr)
	if err != nil {
		return nil, nil, nil, signError("an X.509-SVID", pod, err)
	}
	chain, err := identity.ParseChain(ders)
	if err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "control plane's SVID for pod %s: %v", pod, err)
	}
	xb, _, _ := s.bundles()
	if xb == nil {
		return nil, nil, nil, status.Error(codes.Unavailable, "no trust bundle yet (the node has not joined)")
	}
	got, _, err := x509svid.Verify(chain, xb, x509svid.WithTime(s.now()))
	if err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "control plane's SVID for pod %s does not verify against the trust bundle: %v", pod, err)
	}
	if got != id {
		return nil, nil, nil, status.Errorf(codes.Internal, "control plane's SVID for pod %s names %s, want %s", pod, got, id)
	}
	if !key.PublicKey.Equal(chain[0].PublicKey) {
		return nil, nil, nil, status.Errorf(codes.Internal, "control plane's SVID for pod %s certifies another key", pod)
	}
	if _, err := identity.ClaimsFromCert(chain[0]); err != nil {
		return nil, nil, nil, status.Errorf(codes.Internal, "control plane's SVID for pod %s: %v", pod, err)
	}
	return key, keyDER, chain, nil
}

// signError keeps a control plane refusal (PermissionDenied) recognisable
// and reports everything else as Unavailable.
func signError(what string, pod Pod, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		var se interface{ GRPCStatus() *status.Status }
		if errors.As(err, &se) {
			st, ok = se.GRPCStatus(), true
		}
	}
	if ok && st.Code() == codes.PermissionDenied {
		return status.Errorf(codes.PermissionDenied, "the control plane refused to sign %s for pod %s: %s", what, pod, st.Message())
	}
	return status.Errorf(codes.Unavailable, "could not obtain %s for pod %s: %v", what, pod, err)
}

// x509Response snapshots e into a response, with the channels that close on
// the next change.
func (s *Server) x509Response(e *svidEntry) (*workload.X509SVIDResponse, <-chan struct{}, <-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.gone {
		return nil, nil, nil, status.Errorf(codes.PermissionDenied, "pod %s is no longer registered on this node", e.pod)
	}
	if s.x509Bundle == nil {
		return nil, nil, nil, status.Error(codes.Unavailable, "no trust bundle yet (the node has not joined)")
	}
	resp := &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    e.id.String(),
		X509Svid:    chainDER(e.chain),
		X509SvidKey: e.keyDER,
		Bundle:      bundleDER(s.x509Bundle),
	}}}
	return resp, e.changed, s.bundleChanged, nil
}

// FetchX509SVID streams the caller's X.509-SVID, then a new one whenever it
// is rotated (at half life) or the bundle changes. The stream stays open
// until the caller leaves or its pod is unregistered.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	ctx := stream.Context()
	pod, id, err := s.caller(ctx)
	if err != nil {
		return err
	}
	e, err := s.acquire(ctx, pod, id)
	if err != nil {
		return err
	}
	defer s.release(e)
	for {
		resp, svidCh, bundleCh, err := s.x509Response(e)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-svidCh:
		case <-bundleCh:
		}
	}
}

// FetchX509Bundles streams the trust domain's X.509 bundle and its changes.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream workload.SpiffeWorkloadAPI_FetchX509BundlesServer) error {
	ctx := stream.Context()
	if _, _, err := s.caller(ctx); err != nil {
		return err
	}
	for {
		xb, _, changed := s.bundles()
		if xb == nil {
			return status.Error(codes.Unavailable, "no trust bundle yet (the node has not joined)")
		}
		resp := &workload.X509BundlesResponse{Bundles: map[string][]byte{xb.TrustDomain().IDString(): bundleDER(xb)}}
		if err := stream.Send(resp); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// rotate renews SVIDs past half life that streams are waiting on, drops
// entries nobody uses, and ends the streams of pods that are gone.
func (s *Server) rotate(ctx context.Context) {
	pods, err := s.cfg.Backend.Pods()
	if err != nil {
		s.log.Warn("list pods for SVID rotation", "err", err)
		return
	}
	live := map[string]Pod{}
	for _, p := range pods {
		live[p.UID] = p
	}
	var due []*svidEntry
	s.mu.Lock()
	now := s.now()
	for uid, e := range s.svids {
		p, ok := live[uid]
		if !ok || p.Namespace != e.pod.Namespace || p.ServiceAccount != e.pod.ServiceAccount {
			e.gone = true
			close(e.changed)
			e.changed = make(chan struct{})
			delete(s.svids, uid)
			s.log.Info("pod gone; its workload SVID is no longer served", "pod", e.pod.String())
			continue
		}
		if e.refs == 0 {
			if len(e.chain) == 0 || !now.Before(e.refreshAt()) {
				delete(s.svids, uid) // signed again on demand
			}
			continue
		}
		if len(e.chain) > 0 && !now.Before(e.refreshAt()) {
			due = append(due, e)
		}
	}
	s.pruneJWTs(now)
	s.mu.Unlock()
	for _, e := range due {
		if ctx.Err() != nil {
			return
		}
		if err := s.ensureFresh(ctx, e); err != nil {
			s.log.Warn("workload SVID rotation failed", "pod", e.pod.String(), "err", err)
		}
	}
}
