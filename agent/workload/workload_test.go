package workload_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/workload"
	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

var (
	webPod = workload.Pod{UID: "uid-web", Namespace: "shop", Name: "web-0", ServiceAccount: "web"}
	apiPod = workload.Pod{UID: "uid-api", Namespace: "shop", Name: "api-0", ServiceAccount: "api"}
	webID  = spiffeid.RequireFromString("spiffe://cluster.test/ns/shop/sa/web")
	apiID  = spiffeid.RequireFromString("spiffe://cluster.test/ns/shop/sa/api")
)

func withNetns(p workload.Pod, path string) workload.Pod {
	p.Netns = path
	return p
}

func wantCode(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
		t.Fatalf("err = %v; want %v containing %q", err, code, msg)
	}
}

// TestX509SVIDFromPodNetns: a caller gets the SVID of the pod whose network
// namespace it runs in: this process for one pod, a process in another
// namespace for the other; a namespace no pod uses gets nothing.
func TestX509SVIDFromPodNetns(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	// The server's "host" is a namespace of its own here, because this test
	// process plays a pod (in production the host is the agent's namespace).
	host, nsAPI, nsNone := testutil.NewNetNS(t), testutil.NewNetNS(t), testutil.NewNetNS(t)
	a.addPod(t, withNetns(webPod, selfNetns()))
	a.addPod(t, withNetns(apiPod, nsAPI.Path()))
	_, sock := serve(t, a, host.Path(), nil)

	wl := client(t, sock)
	start := time.Now()
	svid, err := wl.FetchX509SVID(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != webID {
		t.Fatalf("ID %s, want %s", svid.ID, webID)
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != webID.String() || len(leaf.DNSNames)+len(leaf.IPAddresses) != 0 {
		t.Fatalf("SANs: URIs %v DNS %v IPs %v; want exactly one URI SAN", leaf.URIs, leaf.DNSNames, leaf.IPAddresses)
	}
	if ttl := leaf.NotAfter.Sub(start); ttl < 59*time.Minute || ttl > 61*time.Minute {
		t.Errorf("TTL %v, want 1h", ttl)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(svid.PrivateKey.Public()) {
		t.Fatal("SVID and key do not match")
	}
	bundles, err := wl.FetchX509Bundles(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Equal(c.Server.CA().Bundle()) {
		t.Fatal("FetchX509Bundles does not return the CA")
	}
	if id, _, err := x509svid.Verify(svid.Certificates, bundles); err != nil || id != webID {
		t.Fatalf("chain to the bundle: %s, %v", id, err)
	}
	cl, err := claims.FromCertificate(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if cl.NodeID.String() != "spiffe://cluster.test/confmesh/node/node-a" || !bytes.Equal(cl.Measurement, goodMeas) || cl.TEE != claims.TEESimSnp {
		t.Fatalf("claims %+v", cl)
	}
	// The X509 context (SVID + bundle in one response) agrees.
	xc, err := wl.FetchX509Context(ctxT(t))
	if err != nil || xc.DefaultSVID().ID != webID || len(xc.Bundles.Bundles()) != 1 {
		t.Fatalf("X509 context %+v, %v", xc, err)
	}

	if got := fetchFrom(t, nsAPI, sock); got != "ID "+apiID.String() {
		t.Fatalf("process in the api pod's namespace got %q, want %s", got, apiID)
	}
	if got := fetchFrom(t, nsNone, sock); !strings.HasPrefix(got, "ERR PermissionDenied") || !strings.Contains(got, "no pod registered on this node uses") {
		t.Fatalf("process in an unregistered namespace got %q", got)
	}
}

// TestHostProcessDenied: in its own (host) namespace a caller gets no
// identity, unless its uid is mapped to a registered pod.
func TestHostProcessDenied(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	nsAPI := testutil.NewNetNS(t)
	a.addPod(t, withNetns(apiPod, nsAPI.Path()))
	// A pod wrongly registered with the host's namespace gives host
	// processes nothing either.
	a.addPod(t, withNetns(webPod, selfNetns()))
	_, sock := serve(t, a, "", nil)
	_, err := client(t, sock).FetchX509SVID(ctxT(t))
	wantCode(t, err, codes.PermissionDenied, "runs in the host network namespace")
	_, err = client(t, sock).FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "x"})
	wantCode(t, err, codes.PermissionDenied, "host network namespace")
	_, err = client(t, sock).FetchX509Bundles(ctxT(t))
	wantCode(t, err, codes.PermissionDenied, "host network namespace")
	// The pod in its own namespace is still served.
	if got := fetchFrom(t, nsAPI, sock); got != "ID "+apiID.String() {
		t.Fatalf("api pod got %q", got)
	}

	// Configured: host uid 0 is the "node-exporter" pod.
	exporter := workload.Pod{UID: "uid-exp", Namespace: "monitoring", Name: "node-exporter-x", ServiceAccount: "exporter"}
	a.addPod(t, exporter)
	_, sock2 := serve(t, a, "", func(cfg *workload.Config) { cfg.HostUIDs = map[uint32]string{0: "uid-exp"} })
	svid, err := client(t, sock2).FetchX509SVID(ctxT(t))
	if err != nil || svid.ID.String() != "spiffe://cluster.test/ns/monitoring/sa/exporter" {
		t.Fatalf("mapped host uid: %v, %v", svid, err)
	}
}

// rawClient talks to the socket without go-spiffe, to control the header.
func rawClient(t *testing.T, sock string) workloadpb.SpiffeWorkloadAPIClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return workloadpb.NewSpiffeWorkloadAPIClient(cc)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
}

func TestSecurityHeaderAndUnimplemented(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	a.addPod(t, withNetns(webPod, selfNetns()))
	_, sock := serve(t, a, testutil.NewNetNS(t).Path(), nil)
	raw := rawClient(t, sock)
	ctx := ctxT(t)

	stream, err := raw.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.InvalidArgument, "security header missing")
	_, err = raw.FetchJWTSVID(ctx, &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
	wantCode(t, err, codes.InvalidArgument, "security header missing")
	_, err = raw.ValidateJWTSVID(ctx, &workloadpb.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"})
	wantCode(t, err, codes.InvalidArgument, "security header missing")
	_, err = raw.FetchJWTSVID(metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "false"), &workloadpb.JWTSVIDRequest{Audience: []string{"x"}})
	wantCode(t, err, codes.InvalidArgument, "security header missing")

	// With the header: the WIT methods are not implemented.
	wit, err := raw.FetchWITSVID(withHeader(ctx), &workloadpb.WITSVIDRequest{})
	if err == nil {
		_, err = wit.Recv()
	}
	wantCode(t, err, codes.Unimplemented, "")
	witb, err := raw.FetchWITBundles(withHeader(ctx), &workloadpb.WITBundlesRequest{})
	if err == nil {
		_, err = witb.Recv()
	}
	wantCode(t, err, codes.Unimplemented, "")
	// go-spiffe's client sees Unimplemented too.
	_, err = client(t, sock).FetchWITSVID(ctx, "")
	wantCode(t, err, codes.Unimplemented, "")

	// With the header the stream works, and ends when the pod goes away.
	stream, err = raw.FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil || len(first.Svids) != 1 || first.Svids[0].SpiffeId != webID.String() || len(first.Svids[0].Bundle) == 0 {
		t.Fatalf("first response %v, %v", first, err)
	}
	a.removePod(webPod.UID)
	_, err = stream.Recv()
	wantCode(t, err, codes.PermissionDenied, "no longer registered")
}

// x509Watcher records the X.509 contexts an X509Source-style watch sees.
type x509Watcher struct {
	mu   sync.Mutex
	ctxs []*workloadapi.X509Context
}

func (w *x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ctxs = append(w.ctxs, c)
}
func (w *x509Watcher) OnX509ContextWatchError(error) {}

type jwtWatcher struct {
	mu   sync.Mutex
	sets []*jwtbundle.Set
}

func (w *jwtWatcher) OnJWTBundlesUpdate(s *jwtbundle.Set) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sets = append(w.sets, s)
}
func (w *jwtWatcher) OnJWTBundlesWatchError(error) {}

func (w *jwtWatcher) last() *jwtbundle.Set {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.sets) == 0 {
		return nil
	}
	return w.sets[len(w.sets)-1]
}

// TestRotationAndBundlePush: with a 4 s workload TTL, an X509Source sees a
// new SVID (new key) at half life on its open stream; bundle changes are
// pushed to the X.509 and JWT bundle streams.
func TestRotationAndBundlePush(t *testing.T) {
	requireRoot(t)
	const ttl = 4 * time.Second
	c := startControlPlane(t, ttl)
	a := joinNode(t, c, "node-a", goodMeas)
	a.addPod(t, withNetns(webPod, selfNetns()))
	srv, sock := serve(t, a, testutil.NewNetNS(t).Path(), nil)

	src, err := workloadapi.NewX509Source(ctxT(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sock)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Certificates[0].NotAfter.Sub(time.Now()); got > ttl+time.Second {
		t.Fatalf("TTL %v, want %v", got, ttl)
	}
	var second *x509svid.SVID
	eventually(t, 3*ttl, "a rotated SVID in the X509Source", func() bool {
		s, err := src.GetX509SVID()
		if err == nil && s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
			second = s
			return true
		}
		return false
	})
	if second.ID != webID || !second.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter) {
		t.Fatalf("rotated SVID %s expires %v (first %v)", second.ID, second.Certificates[0].NotAfter, first.Certificates[0].NotAfter)
	}
	if second.PrivateKey.Public().(*ecdsa.PublicKey).Equal(first.PrivateKey.Public()) {
		t.Fatal("rotation kept the key")
	}
	// Rotated before expiry: at most about half the TTL after the first.
	if lag := time.Since(first.Certificates[0].NotBefore.Add(time.Minute)); lag > ttl {
		t.Errorf("rotation came %v after issuance, TTL %v", lag, ttl)
	}

	// Bundle changes are pushed: another X.509 authority and JWT key appear.
	wl := client(t, sock)
	jw := &jwtWatcher{}
	wctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go wl.WatchJWTBundles(wctx, jw)
	eventually(t, 5*time.Second, "the first JWT bundle", func() bool { return jw.last() != nil })

	extraCA := selfSignedCA(t)
	xb := a.X509Bundle()
	nx := x509bundle.FromX509Authorities(td, append(xb.X509Authorities(), extraCA))
	jb := a.JWTBundle()
	nj := jwtbundle.FromJWTAuthorities(td, jb.JWTAuthorities())
	extraKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := nj.AddJWTAuthority("extra", extraKey.Public()); err != nil {
		t.Fatal(err)
	}
	a.setBundles(nx, nj)
	srv.UpdateBundles()
	eventually(t, 5*time.Second, "the new X.509 bundle in the X509Source", func() bool {
		b, err := src.GetX509BundleForTrustDomain(td)
		return err == nil && len(b.X509Authorities()) == 2
	})
	eventually(t, 5*time.Second, "the new JWT bundle on the watch", func() bool {
		s := jw.last()
		if s == nil {
			return false
		}
		b, err := s.GetJWTBundleForTrustDomain(td)
		return err == nil && b.HasJWTAuthority("extra")
	})
}

func selfSignedCA(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "extra CA"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestJWTSVID: fetched, validated through the API and with go-spiffe's
// jwtsvid against the fetched bundle; a wrong audience is refused.
func TestJWTSVID(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	a.addPod(t, withNetns(webPod, selfNetns()))
	_, sock := serve(t, a, testutil.NewNetNS(t).Path(), nil)
	wl := client(t, sock)
	ctx := ctxT(t)

	svid, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "ledger", ExtraAudiences: []string{"billing"}})
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != webID {
		t.Fatalf("JWT-SVID ID %s", svid.ID)
	}
	if ttl := time.Until(svid.Expiry); ttl > 5*time.Minute || ttl < 4*time.Minute {
		t.Errorf("JWT TTL %v, want 5m", ttl)
	}
	token := svid.Marshal()

	// Through the API.
	got, err := wl.ValidateJWTSVID(ctx, token, "ledger")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != webID {
		t.Fatalf("ValidateJWTSVID ID %s", got.ID)
	}
	cl, err := claims.FromJWTClaims(got.Claims)
	if err != nil {
		t.Fatal(err)
	}
	if cl.NodeID.String() != "spiffe://cluster.test/confmesh/node/node-a" || !bytes.Equal(cl.Measurement, goodMeas) {
		t.Fatalf("JWT claims %+v", cl)
	}
	_, err = wl.ValidateJWTSVID(ctx, token, "other")
	wantCode(t, err, codes.InvalidArgument, "audience")
	_, err = wl.ValidateJWTSVID(ctx, token+"x", "ledger")
	wantCode(t, err, codes.InvalidArgument, "not valid")

	// With go-spiffe's jwtsvid against the fetched bundle.
	set, err := wl.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, set, []string{"billing"}); err != nil {
		t.Fatalf("jwtsvid.ParseAndValidate: %v", err)
	}
	if _, err := jwtsvid.ParseAndValidate(token, set, []string{"other"}); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Fatalf("wrong audience: %v", err)
	}

	// The same audience within half the lifetime: the cached token.
	again, err := wl.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "billing", ExtraAudiences: []string{"ledger"}})
	if err != nil || again.Marshal() != token {
		t.Fatalf("second fetch: %v (same token: %v)", err, err == nil && again.Marshal() == token)
	}

	// Audience required; another SPIFFE ID refused.
	raw := rawClient(t, sock)
	_, err = raw.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{})
	wantCode(t, err, codes.InvalidArgument, "audience must be specified")
	_, err = wl.FetchJWTSVID(ctx, jwtsvid.Params{})
	wantCode(t, err, codes.InvalidArgument, "audience 0 is empty")
	_, err = raw.FetchJWTSVID(withHeader(ctx), &workloadpb.JWTSVIDRequest{Audience: []string{"x"}, SpiffeId: apiID.String()})
	wantCode(t, err, codes.PermissionDenied, "not "+apiID.String())
	_, err = raw.ValidateJWTSVID(withHeader(ctx), &workloadpb.ValidateJWTSVIDRequest{Svid: token})
	wantCode(t, err, codes.InvalidArgument, "audience must be specified")
}

// TestSigningRule: an agent cannot obtain an SVID for a pod of another node,
// even if it lists that pod as its own.
func TestSigningRule(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	b := joinNode(t, c, "node-b", goodMeas)
	a.addPod(t, withNetns(webPod, "/nonexistent")) // node A's pod
	b.listPod(withNetns(webPod, selfNetns()))      // node B claims it
	_, sock := serve(t, b, testutil.NewNetNS(t).Path(), nil)
	wl := client(t, sock)
	_, err := wl.FetchX509SVID(ctxT(t))
	wantCode(t, err, codes.PermissionDenied, `control plane refused to sign an X.509-SVID for pod shop/web-0 (uid uid-web): pod uid-web runs on node "node-a", not on the calling node "node-b"`)
	_, err = wl.FetchJWTSVID(ctxT(t), jwtsvid.Params{Audience: "x"})
	wantCode(t, err, codes.PermissionDenied, `runs on node "node-a", not on the calling node "node-b"`)
	// A pod node B never registered: refused too.
	b.listPod(withNetns(apiPod, "/nonexistent"))
	b.removePod(webPod.UID)
	b.listPod(withNetns(workload.Pod{UID: "uid-ghost", Namespace: "shop", Name: "ghost", ServiceAccount: "ghost"}, selfNetns()))
	_, err = wl.FetchX509SVID(ctxT(t))
	wantCode(t, err, codes.PermissionDenied, "not registered by any node")
}

// TestMTLSAcrossNodesWithClaims: a workload on node A and one on node B
// (different launch measurements) talk mTLS with go-spiffe's spiffetls; the
// claims authorizer accepts the right measurement and refuses another.
func TestMTLSAcrossNodesWithClaims(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	b := joinNode(t, c, "node-b", altMeas)
	// This process is the web pod to node A's server and the api pod to
	// node B's: each server has its own pod table.
	a.addPod(t, withNetns(webPod, selfNetns()))
	b.addPod(t, withNetns(apiPod, selfNetns()))
	_, sockA := serve(t, a, testutil.NewNetNS(t).Path(), nil)
	_, sockB := serve(t, b, testutil.NewNetNS(t).Path(), nil)
	srcA, err := workloadapi.NewX509Source(ctxT(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sockA)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcA.Close()
	srcB, err := workloadapi.NewX509Source(ctxT(t), workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+sockB)))
	if err != nil {
		t.Fatal(err)
	}
	defer srcB.Close()

	mtlsExchange(t, srcA, srcB)
}
