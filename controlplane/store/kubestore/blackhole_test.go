package kubestore_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/kubetest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// holeProxy forwards TCP connections on loopback to the API server until
// Swallow: from then on it reads and discards every byte either side
// sends and forwards nothing, and holds new connections open without
// forwarding them: the connection goes silent, with no reset and no
// error, as when a network path drops packets.
type holeProxy struct {
	ln      net.Listener
	target  string
	swallow atomic.Bool
	mu      sync.Mutex
	conns   []net.Conn
	wg      sync.WaitGroup
}

func startHoleProxy(t *testing.T, target string) *holeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holeProxy{ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	return p
}

func (p *holeProxy) Addr() string { return p.ln.Addr().String() }

// Swallow makes every connection, open or new, silent.
func (p *holeProxy) Swallow() { p.swallow.Store(true) }

// Close resets every connection and stops the proxy.
func (p *holeProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *holeProxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	p.mu.Unlock()
}

func (p *holeProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.track(c)
		if p.swallow.Load() {
			p.wg.Add(1)
			go func() { defer p.wg.Done(); _, _ = io.Copy(io.Discard, c) }()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.track(up)
		p.wg.Add(2)
		go func() { defer p.wg.Done(); p.pipe(up, c) }()
		go func() { defer p.wg.Done(); p.pipe(c, up) }()
	}
}

// pipe copies src to dst until src ends, or discards once swallowing.
func (p *holeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.swallow.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// peerWatch follows one agent's Watch stream: the peer set it was served
// and how the stream ended.
type peerWatch struct {
	mu    sync.Mutex
	peers map[string]bool
	err   error
	ended time.Time
	done  chan struct{}
}

func startPeerWatch(t *testing.T, a *cptest.Agent, c *cptest.ControlPlane) *peerWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := a.MTLS(t, c).Client.Watch(ctx, &cpv1.WatchRequest{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &peerWatch{peers: map[string]bool{}, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			ev, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				w.err, w.ended = err, time.Now()
				w.mu.Unlock()
				return
			}
			switch e := ev.Event.(type) {
			case *cpv1.WatchEvent_Snapshot:
				w.peers = map[string]bool{}
				for _, p := range e.Snapshot.Peers {
					w.peers[p.Name] = true
				}
			case *cpv1.WatchEvent_Upsert:
				w.peers[e.Upsert.Name] = true
			case *cpv1.WatchEvent_Delete:
				delete(w.peers, e.Delete)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// serves reports whether the stream is open and holds peer name.
func (w *peerWatch) serves(name string) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err == nil && w.peers[name], w.err
}

func readyz(c *cptest.ControlPlane) (int, string) {
	rec := httptest.NewRecorder()
	c.Server.HTTPHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

// TestBlackholedReplicaStopsServingRevokedNode: replica A's connection to
// a real kube-apiserver goes silent (an in-test proxy swallows every byte,
// no reset, no error). An operator revokes node-x through replica B. With
// the default bounds, A must stop serving node-x within the stale-watch
// limit of the revocation (its agents' streams end with Unavailable so
// they fail over to B), its /readyz must fail and it must refuse joins,
// while B serves the revocation at once.
func TestBlackholedReplicaStopsServingRevokedNode(t *testing.T) {
	e := setup(t)
	u, err := url.Parse(e.api.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := startHoleProxy(t, u.Host)
	cfgA := e.api.Config(cpUser)
	cfgA.Host = "https://" + proxy.Addr()
	stA, err := kubestore.Open(context.Background(), kubestore.Options{
		Config: cfgA, Namespace: namespace, Identity: "replica-a",
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	a := cptest.Start(t, cptest.Options{Store: stA})
	b := cptest.Start(t, cptest.Options{Store: e.open(t, "replica-b")})
	t.Cleanup(proxy.Close) // first: the replicas' shutdown need not wait for the silent connection

	x := cptest.NewAgent(t, "node-x", cptest.SimNode(t, sim.NodeConfig{}), nil)
	y := cptest.NewAgent(t, "node-y", cptest.SimNode(t, sim.NodeConfig{}), nil)
	x.Join(t, b)
	y.Join(t, a)
	onA, onB := startPeerWatch(t, y, a), startPeerWatch(t, y, b)
	ctx := context.Background()
	for _, w := range []*peerWatch{onA, onB} {
		if !kubetest.WaitFor(ctx, 30*time.Second, func() bool { ok, _ := w.serves("node-x"); return ok }) {
			t.Fatal("node-y's watch does not serve node-x")
		}
	}
	if code, body := readyz(a); code != http.StatusOK {
		t.Fatalf("replica A not ready before the black hole: %d %s", code, body)
	}

	proxy.Swallow()
	holed := time.Now()
	if _, err := b.AdminClient(t).RevokeNode(ctx, &cpv1.RevokeNodeRequest{Name: "node-x"}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	if !kubetest.WaitFor(ctx, 30*time.Second, func() bool { ok, _ := onB.serves("node-x"); return !ok }) {
		t.Fatal("replica B still serves the node it revoked")
	}

	// The documented bound: a revocation reaches every served peer set
	// within StaleWatchLimit. 3 s on top for timers on a loaded machine.
	limit := controlplane.DefaultStaleWatchLimit
	deadline := revoked.Add(limit + 3*time.Second)
	var unready time.Time
	for time.Now().Before(deadline) {
		if code, _ := readyz(a); code != http.StatusOK && unready.IsZero() {
			unready = time.Now()
		}
		if ok, _ := onA.serves("node-x"); !ok && !unready.IsZero() {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	serving, werr := onA.serves("node-x")
	if serving {
		code, body := readyz(a)
		t.Fatalf("replica A (API connection silent since %s) still serves revoked node-x %s after the revocation (limit %s): stream open, synced=%v, /readyz %d %q",
			holed.Format("15:04:05.000"), time.Since(revoked).Round(time.Millisecond), limit, a.Server.Synced(), code, body)
	}
	if status.Code(werr) != codes.Unavailable {
		t.Fatalf("replica A's stream ended with %v, want Unavailable (fail over)", werr)
	}
	onA.mu.Lock()
	ended := onA.ended
	onA.mu.Unlock()
	t.Logf("silent at %s; revoked %s later; A's stream ended %s after the revocation: %v",
		holed.Format("15:04:05.000"), revoked.Sub(holed).Round(time.Millisecond), ended.Sub(revoked).Round(time.Millisecond), werr)
	if unready.IsZero() {
		t.Fatalf("replica A's /readyz still passes %s after its API connection went silent", time.Since(holed).Round(time.Millisecond))
	}
	t.Logf("A's /readyz failed %s after the connection went silent", unready.Sub(holed).Round(time.Millisecond))

	// A refuses new watches and joins: it cannot see revocations.
	stream, err := y.MTLS(t, a).Client.Watch(ctx, &cpv1.WatchRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a new watch on replica A: %v, want Unavailable", err)
	}
	z := cptest.NewAgent(t, "node-z", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if _, err := z.TryJoin(t, a); status.Code(err) != codes.Unavailable {
		t.Fatalf("a join on replica A: %v, want Unavailable", err)
	}
	if _, err := x.TryJoin(t, b); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the revoked machine joins replica B again: %v", err)
	}
}
