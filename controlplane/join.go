package controlplane

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// refusal is a join/renew refusal with its metric label.
type refusal struct {
	reason string
	err    error
	cause  error // the store error behind a refusal, if any (errors.Is sees it)
}

func (r *refusal) Error() string { return r.err.Error() }

func (r *refusal) Unwrap() error { return r.cause }

func refuse(reason string, code codes.Code, format string, args ...any) *refusal {
	return &refusal{reason: reason, err: status.Errorf(code, format, args...)}
}

func evidenceRefusal(err error) *refusal {
	return &refusal{reason: attest.Reason(err), err: status.Errorf(codes.PermissionDenied, "evidence refused: %s: %v", attest.Reason(err), err)}
}

// Challenge answers with the control plane's evidence of the current epoch
// and a stateless single-use challenge for the agent. Nothing the caller
// sends reaches the TEE, and nothing is stored for the caller: the
// evidence is produced at most once per epoch for everyone, the challenge
// is a MAC, and the rate limiter (an interceptor) has already charged the
// caller's source.
func (s *Server) Challenge(ctx context.Context, _ *cpv1.ChallengeRequest) (*cpv1.ChallengeResponse, error) {
	ev, err := s.self.get(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		return nil, status.Errorf(codes.Unavailable, "control plane attestation: %v", err)
	}
	ch, err := s.challenges.issue(s.now())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "challenge: %v", err)
	}
	return &cpv1.ChallengeResponse{Evidence: ev, Challenge: ch, SpiffeId: s.id.String(), TrustDomain: s.td.String()}, nil
}

// attestSelf produces the control plane's evidence for one epoch, bound to
// its TLS key and the epoch challenge.
func (s *Server) attestSelf(challenge []byte, now time.Time) (*attestv1.Evidence, error) {
	return attest.Attest(s.cfg.Provider, attest.Binding{
		Purpose: attest.PurposeControlPlane, Challenge: challenge,
		IdentityKeyHash: s.tlsHash, Name: s.id.String(), Key: s.tlsHash,
	}, now)
}

// countReport counts one report generation of the control plane's TEE.
func (s *Server) countReport(err error) {
	result := "ok"
	if err != nil {
		result = "error"
		s.log.Error("control plane attestation failed", "err", err)
	}
	s.metrics.reports.WithLabelValues(result).Inc()
}

// checkChallenge refuses evidence answering a challenge this process did
// not issue, that expired or that was used; it stores nothing.
func (s *Server) checkChallenge(ch []byte, now time.Time) *refusal {
	if err := s.challenges.check(ch, now); err != nil {
		return s.challengeRefusal(err)
	}
	return nil
}

// consumeChallenge uses up a challenge whose evidence verified.
func (s *Server) consumeChallenge(ch []byte, now time.Time) *refusal {
	if err := s.challenges.consume(ch, now); err != nil {
		return s.challengeRefusal(err)
	}
	return nil
}

func (s *Server) challengeRefusal(err error) *refusal {
	s.metrics.challengeRefusals.WithLabelValues(err.Error()).Inc()
	switch err {
	case errChallengeExpired:
		return refuse("challenge", codes.FailedPrecondition, "the evidence answers a challenge that expired (valid %s); ask for a new one", s.cfg.ChallengeTTL)
	case errChallengeReplayed:
		return refuse("challenge", codes.FailedPrecondition, "the evidence answers a challenge that was already used; ask for a new one")
	case errChallengesFull:
		return refuse("challenge", codes.ResourceExhausted, "too many challenges answered in the last %s; retry shortly", s.cfg.ChallengeTTL)
	}
	return refuse("challenge", codes.FailedPrecondition, "the evidence answers a challenge this control plane did not issue (%v; it may have restarted since); ask for a new one", err)
}

// Join admits a node whose evidence passes the policy.
func (s *Server) Join(_ context.Context, req *cpv1.JoinRequest) (*cpv1.JoinResponse, error) {
	resp, err := s.join(req)
	if err != nil {
		var r *refusal
		if errors.As(err, &r) {
			s.metrics.joins.WithLabelValues("refused", r.reason).Inc()
			s.log.Warn("join refused", "node", req.GetName(), "reason", r.reason, "err", r.err)
			if r.reason != "store_unavailable" && r.reason != "conflict" { // the replica's trouble, not the node's
				s.recordRefusal(req.GetName(), r)
			}
			return nil, cpv1.WithRefusalReason(r.err, r.reason)
		}
		s.metrics.joins.WithLabelValues("error", "internal").Inc()
		s.log.Error("join failed", "node", req.GetName(), "err", err)
		return nil, status.Errorf(codes.Internal, "join: %v", err)
	}
	s.metrics.joins.WithLabelValues("accepted", "").Inc()
	s.log.Info("node joined", "node", req.GetName(), "podCIDR", resp.PodCidr)
	s.refused.forget(req.GetName())
	s.metrics.nodes.WithLabelValues(stateRefused).Set(float64(s.refused.len()))
	return resp, nil
}

// recordRefusal remembers a refused join for `confmesh nodes --all` (only
// under a valid node name: anything else is not a name) and counts it in
// the node gauge.
func (s *Server) recordRefusal(name string, r *refusal) {
	if identity.ValidateNodeName(name) != nil {
		return
	}
	msg := r.err.Error()
	if st, ok := status.FromError(r.err); ok {
		msg = st.Message()
	}
	s.refused.add(name, r.reason, msg, s.now())
	s.metrics.nodes.WithLabelValues(stateRefused).Set(float64(s.refused.len()))
}

func (s *Server) join(req *cpv1.JoinRequest) (*cpv1.JoinResponse, error) {
	now := s.now()
	if rf := s.storeRefusal(); rf != nil {
		return nil, rf
	}
	if err := identity.ValidateNodeName(req.GetName()); err != nil {
		return nil, refuse("bad_request", codes.InvalidArgument, "name: %v", err)
	}
	if len(req.GetEndpoint()) > 64 {
		return nil, refuse("bad_request", codes.InvalidArgument, "endpoint is %d characters; want ip:port", len(req.GetEndpoint()))
	}
	if _, err := netip.ParseAddrPort(req.GetEndpoint()); err != nil {
		return nil, refuse("bad_request", codes.InvalidArgument, "endpoint %q: want ip:port: %v", req.GetEndpoint(), err)
	}
	if len(req.GetWireguardPublicKey()) != attest.KeySize {
		return nil, refuse("bad_request", codes.InvalidArgument, "WireGuard public key is %d bytes, want %d", len(req.GetWireguardPublicKey()), attest.KeySize)
	}
	nodeID, err := identity.NodeID(s.td, req.GetName())
	if err != nil {
		return nil, refuse("bad_request", codes.InvalidArgument, "name: %v", err)
	}
	csr, idHash, rf := parseCSR(req.GetCsr(), nodeID)
	if rf != nil {
		return nil, rf
	}
	ev := req.GetEvidence()
	if ev == nil {
		return nil, refuse("bad_request", codes.InvalidArgument, "no evidence")
	}
	if rf := checkEvidenceSize(ev); rf != nil {
		return nil, rf
	}
	if rf := s.checkChallenge(ev.GetBinding().GetChallenge(), now); rf != nil {
		return nil, rf
	}
	want := attest.Expect{
		Purpose: attest.PurposeJoin, Key: req.GetWireguardPublicKey(), IdentityKeyHash: idHash,
		Name: req.GetName(), Challenge: ev.GetBinding().GetChallenge(),
	}
	// Verification runs outside the state lock, so joins verify in parallel.
	res, rf := s.verifyEvidence(ev, want)
	if rf != nil {
		return nil, rf
	}
	if rf := s.consumeChallenge(want.Challenge, now); rf != nil {
		return nil, rf
	}
	s.lockWrite()
	defer s.unlockWrite()
	claims, rf := s.reverifyIfPolicyChanged(res, ev, want)
	if rf != nil {
		return nil, rf
	}
	if rf := s.checkRevoked(claims.ChipID, req.GetWireguardPublicKey()); rf != nil {
		return nil, rf
	}
	var prev *store.NodeRecord
	var used []netip.Prefix
	for _, n := range s.nodes.recs {
		if n.Name == req.GetName() {
			prev = n
			continue
		}
		if bytes.Equal(n.WireGuardKey, req.GetWireguardPublicKey()) {
			return nil, refuse("key_in_use", codes.AlreadyExists, "WireGuard key is already used by node %q", n.Name)
		}
		if p, err := netip.ParsePrefix(n.PodCIDR); err == nil {
			used = append(used, p)
		}
	}
	var podCIDR netip.Prefix
	if prev != nil {
		same, rf := nameHolder(prev, claims.ChipID, csr.PublicKey, now)
		if rf != nil {
			return nil, rf
		}
		if same {
			var err error
			podCIDR, err = netip.ParsePrefix(prev.PodCIDR)
			if err != nil || !s.alloc.Contains(podCIDR) {
				podCIDR = netip.Prefix{}
			}
		} else {
			s.log.Warn("node name taken over by a new holder: the previous holder's SVID has expired", "node", prev.Name,
				"expired", prev.ExpiresAt.UTC().Format(time.RFC3339), "previousChip", shortHex(prev.ChipID))
		}
	}
	if !podCIDR.IsValid() {
		var rf *refusal
		if podCIDR, rf = s.clusterPodCIDR(req.GetName(), used); rf != nil {
			return nil, rf
		}
	}
	kept := podCIDR.IsValid()
	if !kept {
		if podCIDR, err = s.alloc.Allocate(used); err != nil {
			return nil, refuse("cidr_exhausted", codes.ResourceExhausted, "%v", err)
		}
	}
	svid, err := s.issueNodeSVID(req.GetName(), csr, claims, req.GetWireguardPublicKey(), now)
	if err != nil {
		return nil, err
	}
	rec := &store.NodeRecord{
		Name: req.GetName(), Endpoint: req.GetEndpoint(), WireGuardKey: req.GetWireguardPublicKey(),
		PodCIDR: podCIDR.String(), ChipID: claims.ChipID, TEE: claims.TEE, Measurement: claims.Measurement,
		SVID: [][]byte{svid.Raw}, AttestedAt: claims.IssuedAt, ExpiresAt: svid.NotAfter, State: store.StateActive,
	}
	if rec.Evidence, err = attest.MarshalEvidence(ev); err != nil {
		return nil, err
	}
	// The write is conditional on the record this decision read (prev, or
	// none): a node another replica wrote meanwhile is a conflict, not
	// overwritten. A freshly allocated CIDR another replica gave to
	// another node at the same time is replaced by the next free one.
	var prevRev uint64
	if prev != nil {
		prevRev = prev.Revision
	}
	for range maxCIDRRetries {
		err = s.putAndPublish(rec, prevRev)
		if kept || !errors.Is(err, store.ErrPodCIDRTaken) {
			break
		}
		used = append(used, podCIDR)
		if podCIDR, err = s.alloc.Allocate(used); err != nil {
			return nil, refuse("cidr_exhausted", codes.ResourceExhausted, "%v", err)
		}
		rec.PodCIDR = podCIDR.String()
	}
	if err != nil {
		return nil, err
	}
	return &cpv1.JoinResponse{
		Svid: [][]byte{svid.Raw}, TrustBundle: s.bundleDER(), PodCidr: rec.PodCIDR,
		ClusterCidr: s.alloc.Cluster().String(), MtuHint: s.cfg.MTUHint, SpiffeId: svid.URIs[0].String(),
		ExpiresAt: timestamppb.New(svid.NotAfter), JwtBundle: s.JWTBundle(),
	}, nil
}

// clusterPodCIDR is the pod CIDR the cluster assigned to node name
// (Node.spec.podCIDR, when the store knows it), if it is a node prefix of
// the cluster CIDR that no other node holds; else the zero prefix and the
// allocator picks. A store that cannot answer refuses the join.
func (s *Server) clusterPodCIDR(name string, used []netip.Prefix) (netip.Prefix, *refusal) {
	src, ok := s.store.(store.ClusterPodCIDRs)
	if !ok {
		return netip.Prefix{}, nil
	}
	cidr, err := src.ClusterPodCIDR(name)
	if err != nil {
		rf := refuse("store_unavailable", codes.Unavailable, "pod CIDR of node %q: %v; retry or use another replica", name, err)
		rf.cause = err
		return netip.Prefix{}, rf
	}
	if cidr == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !s.alloc.Contains(p) || slices.Contains(used, p) {
		s.log.Warn("the cluster's pod CIDR for this node is not a free node prefix of --cluster-cidr; allocating another",
			"node", name, "podCIDR", cidr, "clusterCIDR", s.alloc.Cluster().String())
		return netip.Prefix{}, nil
	}
	return p, nil
}

// maxCIDRRetries bounds how many pod CIDRs a join tries when other
// replicas take them at the same time, or when a store still holds claims
// of recently moved or deleted nodes (kubestore keeps them for its claim
// grace) that the allocator, which sees only node records, picks first.
const maxCIDRRetries = 32

// maxCSRSize bounds a CSR; a P-256 or P-384 request is well under 1 KiB.
const maxCSRSize = 8 << 10

// parseCSR checks a CSR for the identity the control plane will issue: only
// its public key is used, so a request naming anything (DNS names, IPs,
// e-mail addresses, or a URI other than want) is refused rather than
// silently ignored.
func parseCSR(der []byte, want spiffeid.ID) (*x509.CertificateRequest, []byte, *refusal) {
	if len(der) > maxCSRSize {
		return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR is %d bytes, limit %d", len(der), maxCSRSize)
	}
	csr, err := identity.ParseCSR(der)
	if err != nil {
		return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR: %v", err)
	}
	if len(csr.DNSNames)+len(csr.IPAddresses)+len(csr.EmailAddresses) > 0 {
		return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR requests DNS/IP/e-mail SANs (%v %v %v); the control plane sets the identity", csr.DNSNames, csr.IPAddresses, csr.EmailAddresses)
	}
	for _, u := range csr.URIs {
		if want.IsZero() || u.String() != want.String() {
			return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR requests URI SAN %s; this call issues %s", u, want)
		}
	}
	if len(csr.URIs) > 1 {
		return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR requests %d URI SANs; an SVID has exactly one", len(csr.URIs))
	}
	h, err := identity.SPKIHash(csr.PublicKey)
	if err != nil {
		return nil, nil, refuse("bad_request", codes.InvalidArgument, "CSR key: %v", err)
	}
	return csr, h, nil
}

// checkEvidenceSize refuses evidence larger than attest.MaxEvidenceSize.
func checkEvidenceSize(ev *attestv1.Evidence) *refusal {
	if n := proto.Size(ev); n > attest.MaxEvidenceSize {
		return refuse("bad_request", codes.InvalidArgument, "evidence is %d bytes, limit %d", n, attest.MaxEvidenceSize)
	}
	return nil
}

// chipKnown is false for an all-zero chip ID: hosts may mask it
// (MASK_CHIP_ID), and then it identifies nothing.
func chipKnown(chipID []byte) bool {
	for _, b := range chipID {
		if b != 0 {
			return true
		}
	}
	return false
}

// sameMachine decides whether a renewal comes from the machine that holds
// the node: the same chip when chip IDs are known, else the same identity
// key (agents keep it across restarts).
func sameMachine(prev *store.NodeRecord, chipID []byte, svidKey crypto.PublicKey) bool {
	if chipKnown(prev.ChipID) || chipKnown(chipID) {
		return bytes.Equal(prev.ChipID, chipID)
	}
	return sameIdentityKey(prev, svidKey)
}

// sameIdentityKey reports whether the node SVID on record was issued for
// svidKey.
func sameIdentityKey(prev *store.NodeRecord, svidKey crypto.PublicKey) bool {
	leaf, err := parseLeaf(prev.SVID)
	if err != nil {
		return false
	}
	want, err1 := identity.SPKIHash(leaf.PublicKey)
	got, err2 := identity.SPKIHash(svidKey)
	return err1 == nil && err2 == nil && bytes.Equal(want, got)
}

// nameHolder decides a join under the name of a node on record (prev). A
// name belongs to the node's identity key (its SVID key, which the agent
// keeps across restarts) on its chip: the same key from the same chip (or,
// chip IDs masked, from a masked chip) is the same node re-joining, and
// keeps its pod CIDR. Anything else (another VM on the same chip with its
// own keys, another chip) is another node, refused while the holder's SVID
// is valid, whatever its state: only an operator's `confmesh nodes remove`
// (or revoke) frees the name earlier. Once the holder's SVID has expired
// (it stopped renewing) the name goes to the new node, with a new pod CIDR.
func nameHolder(prev *store.NodeRecord, chipID []byte, svidKey crypto.PublicKey, now time.Time) (same bool, rf *refusal) {
	chipMatch := bytes.Equal(prev.ChipID, chipID) || (!chipKnown(prev.ChipID) && !chipKnown(chipID))
	if chipMatch && sameIdentityKey(prev, svidKey) {
		return true, nil
	}
	if !now.Before(prev.ExpiresAt) {
		return false, nil
	}
	what := "another identity key on the same chip"
	if !chipMatch {
		what = "another chip"
	}
	return false, refuse("name_taken", codes.AlreadyExists,
		"node name %q is held by another node (%s, %s, SVID valid until %s and longer if it renews): "+
			"this join comes from %s; if that node is gone, remove it first with `confmesh nodes remove %s`, or wait until its SVID expires",
		prev.Name, holderDescription(prev), prev.State, prev.ExpiresAt.UTC().Format(time.RFC3339), what, prev.Name)
}

// holderDescription names a node record's chip and identity key for a refusal.
func holderDescription(n *store.NodeRecord) string {
	chip := "chip ID masked"
	if chipKnown(n.ChipID) {
		chip = "chip " + shortHex(n.ChipID)
	}
	key := "identity key unknown"
	if leaf, err := parseLeaf(n.SVID); err == nil {
		if h, err := identity.SPKIHash(leaf.PublicKey); err == nil {
			key = "identity key " + shortHex(h)
		}
	}
	return chip + ", " + key
}

func (s *Server) checkRevoked(chipID, wgKey []byte) *refusal {
	if !chipKnown(chipID) {
		chipID = nil // a masked chip ID must not match every masked node's revocation
	}
	if r, ok, err := s.store.Revoked(chipID); err == nil && ok {
		return refuse("revoked", codes.PermissionDenied, "chip was revoked (as node %q at %s)", r.Name, r.RevokedAt.UTC().Format(time.RFC3339))
	} else if err != nil {
		return &refusal{reason: "internal", err: status.Errorf(codes.Internal, "revocation check: %v", err)}
	}
	if r, ok, err := s.store.RevokedKey(wgKey); err == nil && ok {
		return refuse("revoked", codes.PermissionDenied, "WireGuard key was revoked (node %q)", r.Name)
	} else if err != nil {
		return &refusal{reason: "internal", err: status.Errorf(codes.Internal, "revocation check: %v", err)}
	}
	return nil
}

func (s *Server) issueNodeSVID(name string, csr *x509.CertificateRequest, c *attest.Claims, wgKey []byte, now time.Time) (*x509.Certificate, error) {
	id, err := identity.NodeID(s.td, name)
	if err != nil {
		return nil, err
	}
	claims := identity.ClaimsFromAttestation(c, wgKey, id)
	return s.ca.IssueSVID(identity.IssueRequest{PublicKey: csr.PublicKey, ID: id, TTL: s.cfg.SVIDTTL, Now: now, Claims: &claims})
}

func (s *Server) bundleDER() [][]byte { return [][]byte{s.ca.Certificate().Raw} }

// putAndPublish stores rec and tells watchers; with a shared store the
// watch tells them, and it returns once the cache has the change. The
// caller holds s.writeMu and s.mu. The write happens only if the stored
// record is still at prevRevision (0: absent); otherwise it fails with an
// error wrapping store.ErrConflict (a refusal with a shared store).
func (s *Server) putAndPublish(rec *store.NodeRecord, prevRevision uint64) error {
	rev, err := s.store.PutNodeIf(rec, prevRevision)
	if err != nil {
		return s.storeWriteError(rec.Name, err)
	}
	if s.shared != nil {
		return s.committed(rev)
	}
	s.logCommit(rev, rec.Name, rec.State)
	if err := s.nodes.put(rec); err != nil {
		return err
	}
	ev := &cpv1.WatchEvent{Revision: rev}
	if p := s.nodes.peers[rec.Name]; p != nil {
		ev.Event = &cpv1.WatchEvent_Upsert{Upsert: p}
	} else {
		ev.Event = &cpv1.WatchEvent_Delete{Delete: rec.Name}
	}
	s.hub.publish(ev)
	s.metrics.revision.Set(float64(rev))
	return s.refreshNodeGauge()
}

// CommitLogMessage is the debug log message of every peer-set change, logged
// right after the store committed it and before watchers are told:
// `confmesh bench controlplane` measures fan-out latency from its time.
const CommitLogMessage = "peer set committed"

// logCommit logs a committed peer-set change at debug level.
func (s *Server) logCommit(rev uint64, name, state string) {
	s.log.Debug(CommitLogMessage, "revision", rev, "node", name, "state", state)
}

// storeWriteError describes a failed write of node name: with a shared
// store a lost race (another replica wrote the node) or an unreachable
// store, both refusals the caller may retry.
func (s *Server) storeWriteError(name string, err error) error {
	switch {
	case s.shared == nil:
		return err
	case errors.Is(err, store.ErrConflict):
		rf := refuse("conflict", codes.Aborted, "another control-plane replica changed node %q at the same time; retry: %v", name, err)
		rf.cause = err
		return rf
	}
	rf := refuse("store_unavailable", codes.Unavailable, "store write of node %q: %v; retry or use another replica", name, err)
	rf.cause = err
	return rf
}

// publishDelete tells watchers a node left; the caller holds s.writeMu
// and s.mu and has already removed it from the store at rev. With a
// shared store the watch tells them, and it returns once the cache has
// the change.
func (s *Server) publishDelete(name string, rev uint64) error {
	if s.shared != nil {
		if err := s.committed(rev); err != nil {
			return err
		}
		return s.refreshNodeGauge()
	}
	s.logCommit(rev, name, "deleted")
	s.nodes.remove(name)
	s.hub.publish(&cpv1.WatchEvent{Revision: rev, Event: &cpv1.WatchEvent_Delete{Delete: name}})
	s.metrics.revision.Set(float64(rev))
	return s.refreshNodeGauge()
}

func peerFromRecord(n *store.NodeRecord) (*cpv1.Peer, error) {
	ev := &attestv1.Evidence{}
	if len(n.Evidence) > 0 {
		var err error
		if ev, err = attest.UnmarshalEvidence(n.Evidence); err != nil {
			return nil, fmt.Errorf("stored evidence of %q: %w", n.Name, err)
		}
	}
	// Peers verify against their own roots: the shipped ASK and ARK are the
	// same for every node and are left out of the peer set (a third of each
	// record), only the endorsement key that signed the report travels.
	if c := ev.GetChain(); c != nil && (len(c.GetAsk()) > 0 || len(c.GetArk()) > 0) {
		ev = proto.Clone(ev).(*attestv1.Evidence)
		ev.Chain.Ask, ev.Chain.Ark = nil, nil
	}
	return &cpv1.Peer{
		Name: n.Name, Endpoint: n.Endpoint, WireguardPublicKey: n.WireGuardKey, PodCidrs: []string{n.PodCIDR},
		Svid: n.SVID, Evidence: ev, AttestedAt: timestamppb.New(n.AttestedAt), ExpiresAt: timestamppb.New(n.ExpiresAt),
	}, nil
}

// verified is a verification result and the verifier (policy) that made it.
type verified struct {
	claims *attest.Claims
	by     *attest.Verifier
}

// verifyEvidence verifies under the policy in force, timing it. It runs
// without the state lock, so joins and renewals verify in parallel.
func (s *Server) verifyEvidence(ev *attestv1.Evidence, want attest.Expect) (verified, *refusal) {
	start := time.Now()
	v := s.currentVerifier()
	claims, err := v.Verify(ev, want)
	s.metrics.verify.Observe(time.Since(start).Seconds())
	if err != nil {
		return verified{}, evidenceRefusal(err)
	}
	return verified{claims: claims, by: v}, nil
}

// reverifyIfPolicyChanged re-checks a result under the lock when a policy
// change landed since it was made, so nothing admitted under an old policy
// slips past the sweep that the change ran. The caller holds s.mu.
func (s *Server) reverifyIfPolicyChanged(v verified, ev *attestv1.Evidence, want attest.Expect) (*attest.Claims, *refusal) {
	if v.by == s.verifier {
		return v.claims, nil
	}
	claims, err := s.verifier.Verify(ev, want)
	if err != nil {
		return nil, evidenceRefusal(err)
	}
	return claims, nil
}
