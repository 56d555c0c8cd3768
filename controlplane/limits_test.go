package controlplane_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// closedWithin reports how long the server took to close c (it sends
// nothing first), or fails after within.
func closedWithin(t *testing.T, c net.Conn, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(within))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s", within)
	}
	return time.Since(start)
}

// TestHandshakeTimeout: a TCP connection that never starts its TLS
// handshake is closed after the handshake timeout, well before the idle
// timeout.
func TestHandshakeTimeout(t *testing.T) {
	c := cptest.Start(t, cptest.Options{Tune: func(cfg *controlplane.Config) {
		cfg.Limits = controlplane.Limits{HandshakeTimeout: time.Second, IdleTimeout: time.Minute}
	}})
	conn, err := net.Dial("tcp", c.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if d := closedWithin(t, conn, 30*time.Second); d < 900*time.Millisecond {
		t.Fatalf("closed after %s, before the 1s handshake timeout", d)
	}
}

// TestMaxConcurrentStreams: calls beyond the limit on one connection wait
// for a stream to end.
func TestMaxConcurrentStreams(t *testing.T) {
	c := cptest.Start(t, cptest.Options{Tune: func(cfg *controlplane.Config) {
		cfg.Limits = controlplane.Limits{MaxConcurrentStreams: 2}
	}})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	a.Join(t, c)
	conn := a.MTLS(t, c)
	w1 := watch(t, conn, 0)
	w2 := watch(t, conn, 0)
	for _, w := range []*watcher{w1, w2} {
		w.waitFor(t, "a snapshot", func(evs []*cpv1.WatchEvent, err error) bool { return len(evs) > 0 })
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, err := conn.Client.UnregisterPod(ctx, &cpv1.UnregisterPodRequest{Uid: "none"})
	cancel()
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a third call with two watches open on the connection: %v; want it held until its deadline", err)
	}
	w1.cancel()
	<-w1.done
	if _, err := conn.Client.UnregisterPod(ctxT(t), &cpv1.UnregisterPodRequest{Uid: "none"}); err != nil && status.Code(err) == codes.DeadlineExceeded {
		t.Fatalf("the call still waits after a watch ended: %v", err)
	}
}

// TestMetricsListenerLimits: the metrics listener refuses connections
// beyond its per-source cap (counted), and /metrics still answers another
// source.
func TestMetricsListenerLimits(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis, err := c.Server.LimitMetricsListener(raw, 8, 4)
	if err != nil {
		t.Fatal(err)
	}
	hs := c.Server.MetricsServer()
	go hs.Serve(lis)
	t.Cleanup(func() { hs.Close() })
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.9")}}
	for i := 0; i < 6; i++ {
		conn, err := d.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
	}
	refused := func() float64 {
		return counterValue(t, c, "confmesh_controlplane_connections_refused_total", map[string]string{"listener": "metrics", "reason": "per_source"})
	}
	deadline := time.Now().Add(10 * time.Second)
	for refused() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := refused(); got != 2 {
		t.Fatalf("%v of 6 idle connections from one address refused; want 2 (cap 4 per source)", got)
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/metrics", raw.Addr()))
	if err != nil {
		t.Fatalf("/metrics from another source: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `confmesh_controlplane_connections_refused_total{listener="metrics",reason="per_source"} 2`
	if !strings.Contains(string(body), want) {
		t.Fatalf("/metrics lacks %q", want)
	}
	if _, err := c.Server.LimitMetricsListener(raw, 4, 8); err == nil {
		t.Fatal("a per-source cap above the total was accepted")
	}
}

// TestLimitsRefusedWhenInvalid: New names a bad limit.
func TestLimitsRefusedWhenInvalid(t *testing.T) {
	for _, l := range []controlplane.Limits{
		{IdleTimeout: -time.Second},
		{MaxConns: 10, MaxConnsPerSource: 20},
		{MaxConns: 10, MaxUnauthenticatedConns: 20},
		{MaxConcurrentStreams: -1},
	} {
		err := l.WithDefaults().Validate()
		if err == nil {
			t.Errorf("%+v accepted", l)
		}
	}
	if d := controlplane.DefaultLimits(); d.Validate() != nil || d.MaxUnauthenticatedConns > d.MaxConns || d.MaxConnsPerSource > d.MaxConns {
		t.Fatalf("defaults %+v do not validate", d)
	}
}
