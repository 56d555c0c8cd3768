package controlplane_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestJoinIssuesBoundSVIDAndCIDR(t *testing.T) {
	c, a, b := joinedPair(t)
	ra, rb := a.Joined, b.Joined

	if ra.PodCidr == rb.PodCidr {
		t.Fatalf("both nodes got %s", ra.PodCidr)
	}
	cluster := netip.MustParsePrefix(ra.ClusterCidr)
	for _, r := range []*cpv1.JoinResponse{ra, rb} {
		p := netip.MustParsePrefix(r.PodCidr)
		if !cluster.Contains(p.Addr()) || p.Bits() != 24 {
			t.Errorf("pod CIDR %s not a /24 of %s", p, cluster)
		}
	}
	leaf, err := x509.ParseCertificate(ra.Svid[0])
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, a.Bundle(t))
	if err != nil {
		t.Fatalf("node SVID does not verify against the bundle: %v", err)
	}
	if id.String() != "spiffe://cluster.test/confmesh/node/node-a" || len(leaf.URIs) != 1 {
		t.Errorf("SVID ID %s with %d URI SANs", id, len(leaf.URIs))
	}
	if ttl := leaf.NotAfter.Sub(time.Now()); ttl < 55*time.Minute || ttl > 61*time.Minute {
		t.Errorf("SVID TTL %v, want about 1h", ttl)
	}
	claims, err := identity.ClaimsFromCert(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(claims.WireGuardKey, a.WGKey) || !bytes.Equal(claims.Measurement, goodMeas) || claims.TEE != attest.TEESimSnp ||
		claims.NodeID != id.String() || len(claims.ReportDigest) != 32 || len(claims.ChipIDDigest) != 32 {
		t.Errorf("claims %+v do not bind the node's key and evidence", claims)
	}
	// Re-joining (an agent restart) keeps the pod CIDR.
	if again := a.Join(t, c); again.PodCidr != ra.PodCidr {
		t.Errorf("re-join moved the pod CIDR from %s to %s", ra.PodCidr, again.PodCidr)
	}
}

// TestJoinRefusesBadEvidence: each class of bad evidence is refused and the
// agent sees the reason.
func TestJoinRefusesBadEvidence(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	for _, tc := range []struct {
		name   string
		node   func() *sim.Node
		reason string
	}{
		{"debug guest", func() *sim.Node { return cptest.SimNode(t, sim.NodeConfig{Debug: true}) }, "debug"},
		{"unapproved measurement", func() *sim.Node { return cptest.SimNode(t, sim.NodeConfig{Measurement: altMeas}) }, "measurement"},
		{"VMPL 1", func() *sim.Node { return cptest.SimNode(t, sim.NodeConfig{VMPL: 1}) }, "vmpl"},
		{"untrusted root", func() *sim.Node {
			n, err := cptest.OtherCA(t).NewNode(sim.NodeConfig{Measurement: goodMeas})
			if err != nil {
				t.Fatal(err)
			}
			return n
		}, "untrusted_root"},
		{"expired VCEK", func() *sim.Node { return cptest.SimNode(t, sim.NodeConfig{VCEKIssued: time.Now().AddDate(-8, 0, 0)}) }, "cert_expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The agent itself tolerates anything, so only the control plane refuses.
			a := cptest.NewAgent(t, "rogue", tc.node(), nil)
			_, err := a.TryJoin(t, c)
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %v, want it to name %q", err, tc.reason)
			}
		})
	}
	nodes, err := c.Store.ListNodes()
	if err != nil || len(nodes) != 0 {
		t.Fatalf("refused joins left %d nodes (err %v)", len(nodes), err)
	}
}

// TestJoinWithEvidenceForAnotherKey: evidence bound to one WireGuard key
// cannot admit another.
func TestJoinWithEvidenceForAnotherKey(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, ch := challenged(t, a, c)
	req := joinRequest(t, a, ch)
	req.WireguardPublicKey = bytes.Repeat([]byte{9}, 32)
	if _, err := conn.Client.Join(ctxT(t), req); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "wrong_key") {
		t.Fatalf("err = %v, want PermissionDenied wrong_key", err)
	}
}

func joinRequest(t *testing.T, a *cptest.Agent, challenge []byte) *cpv1.JoinRequest {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, a.SVIDKey)
	if err != nil {
		t.Fatal(err)
	}
	h, _ := identity.SPKIHash(a.SVIDKey.Public())
	ev, err := attest.Attest(a.TEE, attest.Binding{Purpose: attest.PurposeJoin, Challenge: challenge, IdentityKeyHash: h, Name: a.Name, Key: a.WGKey}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &cpv1.JoinRequest{Name: a.Name, Endpoint: "198.18.0.9:51820", WireguardPublicKey: a.WGKey, Csr: csr, Evidence: ev}
}

func TestChallengeReplayAndExpiry(t *testing.T) {
	clock := time.Now()
	var mu = make(chan struct{}, 1)
	mu <- struct{}{}
	now := func() time.Time { <-mu; defer func() { mu <- struct{}{} }(); return clock }
	setClock := func(t time.Time) { <-mu; clock = t; mu <- struct{}{} }
	c := cptest.Start(t, cptest.Options{Now: now})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, ch := challenged(t, a, c)
	req := joinRequest(t, a, ch)
	if _, err := conn.Client.Join(ctxT(t), req); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if _, err := conn.Client.Join(ctxT(t), req); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed join: err = %v, want FailedPrecondition naming reuse", err)
	}

	ch2, err := conn.Challenge(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	req2 := joinRequest(t, a, ch2)
	setClock(clock.Add(61 * time.Second))
	if _, err := conn.Client.Join(ctxT(t), req2); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("expired challenge: err = %v, want FailedPrecondition", err)
	}
	// A challenge the control plane never issued.
	forged, _ := attest.NewChallenge(time.Now())
	if _, err := conn.Client.Join(ctxT(t), joinRequest(t, a, forged)); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("forged challenge: err = %v, want FailedPrecondition", err)
	}
}

// TestAgentRefusesBadControlPlane: the agent verifies the control plane's
// evidence under its own policy before sending anything.
func TestAgentRefusesBadControlPlane(t *testing.T) {
	for _, tc := range []struct {
		name   string
		node   sim.NodeConfig
		reason string
	}{
		{"debug control plane", sim.NodeConfig{Debug: true}, "debug"},
		{"unapproved control plane image", sim.NodeConfig{Measurement: altMeas}, "measurement"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The control plane's own policy is lax; the agent's is not.
			lax := cptest.Policy(t, goodMeas, altMeas)
			lax.AllowDebug = true
			c := cptest.Start(t, cptest.Options{Policy: lax, Provider: cptest.SimNode(t, tc.node)})
			a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
			_, err := a.Dial(t, c)
			if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %v, want ErrControlPlaneRefused naming %q", err, tc.reason)
			}
		})
	}
}

func TestWatchSnapshotAndDeltas(t *testing.T) {
	c, a, b := joinedPair(t)
	w := watch(t, a.MTLS(t, c), 0)
	w.waitFor(t, "snapshot with node-b", func(evs []*cpv1.WatchEvent, _ error) bool {
		ps := peers(evs)
		return len(ps) == 1 && ps["node-b"] != nil
	})
	// The peer record carries what an agent needs to re-verify it.
	w.mu.Lock()
	pb := peers(w.events)["node-b"]
	w.mu.Unlock()
	leaf, err := x509.ParseCertificate(pb.Svid[0])
	if err != nil {
		t.Fatal(err)
	}
	idHash, _ := identity.SPKIHash(leaf.PublicKey)
	if _, err := a.Verifier.Verify(pb.Evidence, attest.Expect{Purpose: attest.PurposeJoin, Key: pb.WireguardPublicKey, IdentityKeyHash: idHash, Name: "node-b"}); err != nil {
		t.Fatalf("peer record does not re-verify under the agent's policy: %v", err)
	}
	if !bytes.Equal(pb.WireguardPublicKey, b.WGKey) || len(pb.PodCidrs) != 1 || pb.Endpoint == "" {
		t.Errorf("peer record incomplete: %+v", pb)
	}

	d := cptest.NewAgent(t, "node-d", cptest.SimNode(t, sim.NodeConfig{}), nil)
	d.Join(t, c)
	w.waitFor(t, "delta adding node-d", func(evs []*cpv1.WatchEvent, _ error) bool {
		ps := peers(evs)
		return len(ps) == 2 && ps["node-d"] != nil && evs[len(evs)-1].GetUpsert() != nil
	})
}

func TestWatchNeedsNodeSVID(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, err := a.Dial(t, c) // not joined: no client certificate
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stream, err := conn.Client.Watch(ctxT(t), &cpv1.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("watch without SVID: err = %v, want Unauthenticated", err)
	}
}

// TestResumeAfterRestart: a restart loses nothing; an agent at the current
// revision resumes without a snapshot, an older one gets a snapshot.
func TestResumeAfterRestart(t *testing.T) {
	dir := t.TempDir()
	c := cptest.Start(t, cptest.Options{Dir: dir})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	b := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	rb := b.Join(t, c)
	w := watch(t, a.MTLS(t, c), 0)
	w.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	rev := lastRevision(w.events)
	addr := c.Addr
	c.Stop()
	w.waitFor(t, "stream end on shutdown", func(_ []*cpv1.WatchEvent, err error) bool { return err != nil })

	c2 := cptest.Start(t, cptest.Options{Dir: dir, Addr: addr})
	nodes, err := c2.Store.ListNodes()
	if err != nil || len(nodes) != 2 {
		t.Fatalf("after restart: %d nodes, err %v", len(nodes), err)
	}
	// The agent re-attests the restarted control plane (new TLS key) and resumes.
	w2 := watch(t, a.MTLS(t, c2), rev)
	old := watch(t, a.MTLS(t, c2), rev-1)
	old.waitFor(t, "snapshot for a stale revision", func(evs []*cpv1.WatchEvent, _ error) bool {
		return len(evs) == 1 && evs[0].GetSnapshot() != nil && peers(evs)["node-b"] != nil
	})
	d := cptest.NewAgent(t, "node-d", cptest.SimNode(t, sim.NodeConfig{}), nil)
	d.Join(t, c2)
	w2.waitFor(t, "delta after resume", func(evs []*cpv1.WatchEvent, _ error) bool {
		return len(evs) == 1 && evs[0].GetUpsert().GetName() == "node-d" && evs[0].Revision == rev+1
	})
	// node-b's allocation survived.
	if again := b.Join(t, c2); again.PodCidr != rb.PodCidr {
		t.Errorf("pod CIDR changed across restart: %s -> %s", rb.PodCidr, again.PodCidr)
	}
}

func TestRevocationReachesEveryWatcher(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	var agents []*cptest.Agent
	for _, n := range []string{"node-a", "node-b", "node-c"} {
		ag := cptest.NewAgent(t, n, cptest.SimNode(t, sim.NodeConfig{}), nil)
		ag.Join(t, c)
		agents = append(agents, ag)
	}
	wa := watch(t, agents[0].MTLS(t, c), 0)
	wb := watch(t, agents[1].MTLS(t, c), 0)
	wc := watch(t, agents[2].MTLS(t, c), 0)
	for _, w := range []*watcher{wa, wb} {
		w.waitFor(t, "node-c present", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-c"] != nil })
	}
	cCIDR := agents[2].Joined.PodCidr
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-c"}); err != nil {
		t.Fatal(err)
	}
	for _, w := range []*watcher{wa, wb} {
		w.waitFor(t, "node-c deleted", func(evs []*cpv1.WatchEvent, _ error) bool {
			return peers(evs)["node-c"] == nil && evs[len(evs)-1].GetDelete() == "node-c"
		})
	}
	wc.waitFor(t, "revoked node's stream ends", func(_ []*cpv1.WatchEvent, err error) bool { return status.Code(err) == codes.PermissionDenied })
	// The revoked chip cannot join again, under any name.
	agents[2].Name = "node-c2"
	if _, err := agents[2].TryJoin(t, c); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked chip rejoin: err = %v", err)
	}
	// Its pod CIDR was released.
	e := cptest.NewAgent(t, "node-e", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if r := e.Join(t, c); r.PodCidr != cCIDR {
		t.Errorf("new node got %s, want the released %s", r.PodCidr, cCIDR)
	}
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "nope"}); status.Code(err) != codes.NotFound {
		t.Errorf("revoke unknown: err = %v, want NotFound", err)
	}
}

func TestPolicyTighteningRemovesNode(t *testing.T) {
	c := cptest.Start(t, cptest.Options{Policy: cptest.Policy(t, goodMeas, altMeas)})
	both := cptest.Policy(t, goodMeas, altMeas)
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), both)
	b := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{Measurement: altMeas}), both)
	a.Join(t, c)
	b.Join(t, c)
	wa := watch(t, a.MTLS(t, c), 0)
	wa.waitFor(t, "node-b present", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-b"] != nil })
	bconn := b.MTLS(t, c)

	if err := c.Server.SetPolicy(cptest.Policy(t, goodMeas)); err != nil {
		t.Fatal(err)
	}
	wa.waitFor(t, "node-b removed", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-b"] == nil })
	rec, err := c.Store.GetNode("node-b")
	if err != nil || rec.State != "rejected" || !strings.Contains(rec.Reason, "measurement") {
		t.Fatalf("node-b record: %+v err %v", rec, err)
	}
	if _, err := bconn.Renew(ctxT(t), b.NodeSpec(), nil); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "left the peer set") {
		t.Fatalf("renew after rejection: err = %v", err)
	}
	// An invalid policy is refused and the old one stays.
	bad := cptest.Policy(t, goodMeas)
	bad.TrustDomain = "other.test"
	if err := c.Server.SetPolicy(bad); err == nil {
		t.Fatal("policy for another trust domain accepted")
	}
}

func TestDuplicateKeyAndNameTakeover(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)

	dup := cptest.NewAgent(t, "node-x", cptest.SimNode(t, sim.NodeConfig{}), nil)
	dup.WGKey = a.WGKey
	if _, err := dup.TryJoin(t, c); err == nil || !strings.Contains(err.Error(), "already used by node \"node-a\"") {
		t.Fatalf("duplicate WireGuard key: err = %v", err)
	}
	thief := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if _, err := thief.TryJoin(t, c); err == nil || !strings.Contains(err.Error(), "held by another node") {
		t.Fatalf("name takeover: err = %v", err)
	}
	// After revocation the name is free for another chip.
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-a"}); err != nil {
		t.Fatal(err)
	}
	thief.Join(t, c)
	// The revoked node's old SVID does not speak for the new holder of the name.
	stream, err := a.MTLS(t, c).Client.Watch(ctxT(t), &cpv1.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("old SVID after takeover: err = %v, want PermissionDenied", err)
	}
}

func TestRenewRotatesWireGuardKey(t *testing.T) {
	c, a, b := joinedPair(t)
	wa := watch(t, a.MTLS(t, c), 0)
	wa.waitFor(t, "node-b", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-b"] != nil })

	newKey := bytes.Repeat([]byte{0x5a}, 32)
	resp, err := b.MTLS(t, c).Renew(ctxT(t), b.NodeSpec(), newKey)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(resp.Svid[0])
	cl, err := identity.ClaimsFromCert(leaf)
	if err != nil || !bytes.Equal(cl.WireGuardKey, newKey) {
		t.Fatalf("renewed SVID claims %+v err %v", cl, err)
	}
	wa.waitFor(t, "node-b with the new key", func(evs []*cpv1.WatchEvent, _ error) bool {
		p := peers(evs)["node-b"]
		return p != nil && bytes.Equal(p.WireguardPublicKey, newKey)
	})
	// Renewing evidence from another chip is refused.
	b.WGKey = newKey
	b.TEE = cptest.SimNode(t, sim.NodeConfig{})
	if _, err := b.MTLS(t, c).Renew(ctxT(t), b.NodeSpec(), nil); err == nil || !strings.Contains(err.Error(), "another chip") {
		t.Fatalf("renew from another chip: err = %v", err)
	}
}

func TestSignWorkloadOnlyForOwnPods(t *testing.T) {
	f := newPodFixture(t)
	a, ca, cb, pod := f.a, f.connA, f.connB, f.pod
	_, csr, err := identity.NewKeyAndCSR()
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ca.Client.SignWorkload(ctxT(t), &cpv1.SignWorkloadRequest{Csr: csr, Pod: pod})
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(resp.Svid[0])
	id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, a.Bundle(t))
	if err != nil || id.String() != "spiffe://cluster.test/ns/payments/sa/api" {
		t.Fatalf("workload SVID %v err %v", id, err)
	}
	cl, err := identity.ClaimsFromCert(leaf)
	if err != nil || cl.NodeID != "spiffe://cluster.test/confmesh/node/node-a" || !bytes.Equal(cl.Measurement, goodMeas) {
		t.Fatalf("workload claims %+v err %v", cl, err)
	}
	for name, call := range map[string]func() error{
		"other node signs": func() error {
			_, err := cb.Client.SignWorkload(ctxT(t), &cpv1.SignWorkloadRequest{Csr: csr, Pod: pod})
			return err
		},
		"unregistered pod": func() error {
			p := &cpv1.PodIdentity{Namespace: "payments", Name: "x", Uid: "uid-2", ServiceAccount: "api"}
			_, err := ca.Client.SignWorkload(ctxT(t), &cpv1.SignWorkloadRequest{Csr: csr, Pod: p})
			return err
		},
		"other service account": func() error {
			p := &cpv1.PodIdentity{Namespace: "payments", Name: "api-0", Uid: "uid-1", ServiceAccount: "admin"}
			_, err := ca.Client.SignWorkload(ctxT(t), &cpv1.SignWorkloadRequest{Csr: csr, Pod: p})
			return err
		},
		"other node registers the pod": func() error {
			_, err := cb.Client.RegisterPod(ctxT(t), &cpv1.RegisterPodRequest{Pod: pod})
			return err
		},
		"other node unregisters the pod": func() error {
			_, err := cb.Client.UnregisterPod(ctxT(t), &cpv1.UnregisterPodRequest{Uid: "uid-1"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: err = %v, want PermissionDenied", name, err)
		}
	}
}

func TestAdminNeedsAdminCredential(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	list, err := c.AdminClient(t).ListNodes(ctxT(t), &cpv1.ListNodesRequest{})
	if err != nil || len(list.Nodes) != 1 || list.Nodes[0].State != "active" {
		t.Fatalf("ListNodes: %v err %v", list, err)
	}
	pol, err := c.AdminClient(t).GetPolicy(ctxT(t), &cpv1.GetPolicyRequest{})
	if err != nil || !strings.Contains(pol.Policy, "cluster.test") {
		t.Fatalf("GetPolicy: %v err %v", pol, err)
	}
	nodeCert := &tls.Certificate{Certificate: a.SVID, PrivateKey: a.SVIDKey}
	if _, err := c.AdminClientWith(t, nodeCert).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-a"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node SVID on the admin socket: err = %v, want PermissionDenied", err)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil).Join(t, c)
	cptest.NewAgent(t, "rogue", cptest.SimNode(t, sim.NodeConfig{Debug: true}), nil).TryJoin(t, c)
	h := httptest.NewServer(c.Server.HTTPHandler())
	defer h.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(h.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz %d", code)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz %d", code)
	}
	_, body := get("/metrics")
	for _, want := range []string{
		`confmesh_controlplane_joins_total{reason="",result="accepted"} 1`,
		`confmesh_controlplane_joins_total{reason="debug",result="refused"} 1`,
		`confmesh_controlplane_nodes{state="active"} 1`,
		"confmesh_controlplane_verify_seconds_count 2",
		"confmesh_controlplane_revision 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestMaskedChipIDs: hosts may mask the chip ID (all zero). Then a name is
// bound to the node's identity key, and revoking one masked node does not
// block every other masked node.
func TestMaskedChipIDs(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	zero := make([]byte, 64)
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: zero}), nil)
	a.Join(t, c)
	// The same agent again (restart: same identity key) keeps its name.
	a.Join(t, c)
	thief := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{ChipID: zero}), nil)
	if _, err := thief.TryJoin(t, c); err == nil || !strings.Contains(err.Error(), "held by another node") {
		t.Fatalf("masked-chip name takeover: err = %v", err)
	}
	b := cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{ChipID: zero}), nil)
	b.Join(t, c)
	if _, err := c.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-b"}); err != nil {
		t.Fatal(err)
	}
	other := cptest.NewAgent(t, "node-c", cptest.SimNode(t, sim.NodeConfig{ChipID: zero}), nil)
	if _, err := other.TryJoin(t, c); err != nil {
		t.Fatalf("a masked node was blocked by another masked node's revocation: %v", err)
	}
	// The revoked node's WireGuard key stays blocked.
	b.Name = "node-b2"
	if _, err := b.TryJoin(t, c); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("revoked WireGuard key rejoined: err = %v", err)
	}
}

// TestShutdownEndsWatches: stopping the control plane ends open watch
// streams at once (Unavailable, so agents reconnect and resume) instead of
// waiting out the graceful-stop grace period.
func TestShutdownEndsWatches(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	w := watch(t, a.MTLS(t, c), 0)
	w.waitFor(t, "snapshot", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	start := time.Now()
	c.Stop()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("stopping with an open watch took %s", d)
	}
	w.waitFor(t, "stream end", func(_ []*cpv1.WatchEvent, err error) bool { return status.Code(err) == codes.Unavailable })
}
