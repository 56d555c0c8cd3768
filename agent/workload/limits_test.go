package workload_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/workload"
	"github.com/confmesh/confmesh/internal/connlimit"
	"github.com/confmesh/confmesh/internal/testutil"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestConnectionLimits: one caller (this process, a pod) holds at most
// MaxConnsPerCaller connections, the rest are refused at accept and
// counted, and another pod is still served meanwhile; connections that
// never complete the handshake, and connections with no RPC in progress,
// are closed after their timeouts; an honest FetchX509SVID stream stays
// open past the idle timeout.
func TestConnectionLimits(t *testing.T) {
	requireRoot(t)
	c := startControlPlane(t, 0)
	a := joinNode(t, c, "node-a", goodMeas)
	host, nsAPI := testutil.NewNetNS(t), testutil.NewNetNS(t)
	a.addPod(t, withNetns(webPod, selfNetns()))
	a.addPod(t, withNetns(apiPod, nsAPI.Path()))
	const (
		perCaller = 4
		handshake = time.Second
		idle      = 2 * time.Second
	)
	srv, sock := serve(t, a, host.Path(), func(cfg *workload.Config) {
		cfg.Limits = workload.Limits{MaxConnsPerCaller: perCaller, MaxConns: 100, HandshakeTimeout: handshake, IdleTimeout: idle}
	})

	// The honest watcher: one connection, one long-lived stream.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := rawClient(t, sock).FetchX509SVID(withHeader(ctx), &workloadpb.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || len(resp.GetSvids()) != 1 || resp.GetSvids()[0].GetSpiffeId() != webID.String() {
		t.Fatalf("watcher's first response: %v, %v", resp, err)
	}
	watchEnded := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				watchEnded <- err
				return
			}
		}
	}()

	// The flood: ten idle connections from the same caller.
	var flood []net.Conn
	for range 10 {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		flood = append(flood, conn)
	}
	eventually(t, 10*time.Second, "7 per-caller refusals", func() bool {
		return srv.ConnStats().Refused[connlimit.ReasonPerKey] == 10-(perCaller-1)
	})
	if st := srv.ConnStats(); st.Open != perCaller || st.Keys != 1 || st.MaxKey != perCaller {
		t.Fatalf("stats %+v; want %d open by one caller", st, perCaller)
	}
	// Another pod is its own caller: served while this one is at its cap.
	if got := fetchFrom(t, nsAPI, sock); got != "ID "+apiID.String() {
		t.Fatalf("the api pod while the web pod is at its cap: %q", got)
	}
	// The flood never handshakes: closed after the handshake timeout.
	eventually(t, 10*time.Second, "the unhandshaken connections closed", func() bool { return srv.ConnStats().Open == 1 })

	// A connection that handshakes and then makes no call: closed once idle.
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	opened := time.Now()
	cc.Connect()
	eventually(t, 10*time.Second, "the idle connection open", func() bool { return srv.ConnStats().Open == 2 })
	eventually(t, 15*time.Second, "the idle connection closed", func() bool { return srv.ConnStats().Open == 1 })
	if took := time.Since(opened); took < idle {
		t.Fatalf("idle connection closed after %s, before the idle timeout %s", took, idle)
	}
	select {
	case err := <-watchEnded:
		t.Fatalf("the honest FetchX509SVID stream was cut: %v", err)
	default:
	}
	if st := srv.ConnStats(); st.Open != 1 {
		t.Fatalf("stats %+v; want the watcher's connection open", st)
	}
	cancel()
	if err := <-watchEnded; !strings.Contains(err.Error(), "canceled") {
		t.Fatalf("watcher ended with %v, want its own cancellation", err)
	}
}
