package controlplane_test

// The tests run the control plane in-process with controlplane/cptest: a
// simulated TEE for it and for every agent, agents joining over the real
// gRPC API. What is here is only the control plane's own tests use.

import (
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	dto "github.com/prometheus/client_model/go"
)

var (
	goodMeas = cptest.GoodMeasurement
	altMeas  = cptest.AltMeasurement
)

// watcher collects a Watch stream's events.
type watcher struct {
	mu     sync.Mutex
	events []*cpv1.WatchEvent
	err    error
	done   chan struct{}
	cancel context.CancelFunc
}

func watch(t testing.TB, conn *cpclient.Conn, from uint64) *watcher {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{Revision: from})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	w := &watcher{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(w.done)
		for {
			ev, err := stream.Recv()
			w.mu.Lock()
			if err != nil {
				w.err = err
				w.mu.Unlock()
				return
			}
			w.events = append(w.events, ev)
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// waitFor polls the collected events until cond holds or 10 s pass.
func (w *watcher) waitFor(t testing.TB, what string, cond func(evs []*cpv1.WatchEvent, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		evs := append([]*cpv1.WatchEvent(nil), w.events...)
		err := w.err
		w.mu.Unlock()
		if cond(evs, err) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Fatalf("timed out waiting for %s; events %v err %v", what, w.events, w.err)
}

// peers folds events into the current peer set, as an agent would.
func peers(evs []*cpv1.WatchEvent) map[string]*cpv1.Peer {
	set := map[string]*cpv1.Peer{}
	for _, ev := range evs {
		switch e := ev.Event.(type) {
		case *cpv1.WatchEvent_Snapshot:
			set = map[string]*cpv1.Peer{}
			for _, p := range e.Snapshot.Peers {
				set[p.Name] = p
			}
		case *cpv1.WatchEvent_Upsert:
			set[e.Upsert.Name] = e.Upsert
		case *cpv1.WatchEvent_Delete:
			delete(set, e.Delete)
		}
	}
	return set
}

func lastRevision(evs []*cpv1.WatchEvent) uint64 {
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Revision
}

// joinedPair starts a control plane with default options and joins node-a
// and node-b to it.
func joinedPair(t *testing.T) (c *cptest.ControlPlane, a, b *cptest.Agent) {
	t.Helper()
	c = cptest.Start(t, cptest.Options{})
	a = cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	b = cptest.NewAgent(t, "node-b", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	b.Join(t, c)
	return c, a, b
}

// podFixture is a control plane with node-a and node-b joined, each with an
// mTLS connection, and pod payments/api-0 (service account api) registered
// by node-a.
type podFixture struct {
	cp           *cptest.ControlPlane
	a, b         *cptest.Agent
	connA, connB *cpclient.Conn
	pod          *cpv1.PodIdentity
}

func newPodFixture(t *testing.T) *podFixture {
	t.Helper()
	f := &podFixture{}
	f.cp, f.a, f.b = joinedPair(t)
	f.connA, f.connB = f.a.MTLS(t, f.cp), f.b.MTLS(t, f.cp)
	f.pod = &cpv1.PodIdentity{Namespace: "payments", Name: "api-0", Uid: "uid-1", ServiceAccount: "api"}
	if _, err := f.connA.Client.RegisterPod(ctxT(t), &cpv1.RegisterPodRequest{Pod: f.pod}); err != nil {
		t.Fatal(err)
	}
	return f
}

// challenged dials c as a, not joined, and fetches a join challenge; the
// connection closes when the test ends.
func challenged(t *testing.T, a *cptest.Agent, c *cptest.ControlPlane) (*cpclient.Conn, []byte) {
	t.Helper()
	conn, err := a.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Challenge(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	return conn, ch
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// readyzOf serves c's /readyz and returns its answer.
func readyzOf(t *testing.T, c *cptest.ControlPlane) (int, string) {
	t.Helper()
	h := httptest.NewServer(c.Server.HTTPHandler())
	defer h.Close()
	resp, err := http.Get(h.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// within polls cond until it holds or d passes.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// renewOnce renews a's SVID on c over a new connection with a fresh
// WireGuard key (what a node does every half SVID TTL) and keeps the
// new key and SVID in a; the call may take 10 s.
func renewOnce(t testing.TB, a *cptest.Agent, c *cptest.ControlPlane) error {
	conn, err := a.Dial(t, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	key := make([]byte, 32)
	rand.Read(key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := conn.Renew(ctx, a.NodeSpec(), key)
	if err != nil {
		return err
	}
	a.WGKey, a.SVID = key, resp.Svid
	return nil
}

// reconnectOnce is a node's reconnect: dial c as a (re-attesting the
// control plane) and read the Watch snapshot, within 10 s.
func reconnectOnce(t testing.TB, a *cptest.Agent, c *cptest.ControlPlane) error {
	conn, err := a.Dial(t, c)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{})
	if err != nil {
		return err
	}
	_, err = stream.Recv()
	return err
}

// counterValue sums a counter family's samples whose labels include match.
func counterValue(t *testing.T, c *cptest.ControlPlane, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := c.Server.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range match {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, k, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == k && l.GetValue() == v {
			return true
		}
	}
	return false
}
