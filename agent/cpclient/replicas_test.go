package cpclient_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParseAddrs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
		err  string // substring of the error; "" for success
	}{
		{"cp:7443", []string{"cp:7443"}, ""},
		{"10.0.0.1:7443,10.0.0.2:7443", []string{"10.0.0.1:7443", "10.0.0.2:7443"}, ""},
		{" a:1 , [::1]:2 ", []string{"a:1", "[::1]:2"}, ""},
		{"", nil, "no control-plane address"},
		{"a:1,", nil, "address 2 is empty"},
		{",a:1", nil, "address 1 is empty"},
		{"a:1,,b:2", nil, "address 2 is empty"},
		{"a:1,b", nil, `address 2 "b": want HOST:PORT`},
		{"a:1,:7443", nil, `address 2 ":7443": empty host`},
		{"a:0", nil, `address 1 "a:0": port "0"`},
		{"a:70000", nil, `address 1 "a:70000": port "70000"`},
		{"a:http", nil, `port "http"`},
		{"a:1,b:2,a:1", nil, `address 3 "a:1" repeats address 1`},
		{"a b:1", nil, `host "a b"`},
	} {
		got, err := cpclient.ParseAddrs(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAddrs(%q) = %v, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("ParseAddrs(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := cpclient.NewReplicas(nil); err == nil {
		t.Error("NewReplicas(nil) succeeded")
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// silentAddr accepts connections and never answers (a hung replica, or a
// black hole that completes the TCP handshake).
func silentAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	return l.Addr().String()
}

func joinOp(a *cptest.Agent, got **cpv1.JoinResponse) func(context.Context, *cpclient.Conn) error {
	return func(ctx context.Context, c *cpclient.Conn) error {
		r, err := c.Join(ctx, a.NodeSpec())
		*got = r
		return err
	}
}

// TestReplicasSkipDeadReplica: a replica that refuses connections costs
// next to nothing, one that hangs costs Timeout; the join lands on the live
// one, which every later dial tries first. Moving to it from a replica that
// had worked counts as a failover.
func TestReplicasSkipDeadReplica(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	dead, hung := deadAddr(t), silentAddr(t)
	r, err := cpclient.NewReplicas([]string{dead, hung, cp.Addr})
	if err != nil {
		t.Fatal(err)
	}
	r.Timeout = 300 * time.Millisecond
	var failovers []string
	r.OnFailover = func(from, to string) { failovers = append(failovers, from+">"+to) }
	cfg := cpclient.Config{Verifier: a.Verifier, TrustDomain: a.TD}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	start := time.Now()
	var resp *cpv1.JoinResponse
	conn, err := r.Dial(ctx, cfg, joinOp(a, &resp))
	if err != nil {
		t.Fatalf("dial across replicas: %v", err)
	}
	conn.Close()
	took := time.Since(start)
	if resp.GetPodCidr() == "" {
		t.Fatalf("join answered %v", resp)
	}
	// The dead one is refused at once; the hung one is given 300 ms.
	if took > 3*time.Second {
		t.Errorf("a dead and a hung replica cost %v before the live one", took)
	}
	if r.Current() != cp.Addr || r.Failovers() != 0 || len(failovers) != 0 {
		t.Errorf("current %q failovers %d %v; want %s and none (the first replica that works is no failover)", r.Current(), r.Failovers(), failovers, cp.Addr)
	}
	if o := r.Order(); o[0] != cp.Addr || o[1] != dead || o[2] != hung {
		t.Errorf("order after the live replica worked: %v", o)
	}

	// The live replica is tried first now: no time lost on the others.
	start = time.Now()
	conn, err = r.Dial(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if d := time.Since(start); d > 250*time.Millisecond && d > took/2 {
		t.Errorf("second dial took %v: not started at the replica that worked", d)
	}

	// The replica goes; another comes up at the dead address: that is a
	// failover, and it is counted once.
	cp.Stop()
	cp2 := cptest.Start(t, cptest.Options{Addr: dead})
	conn, err = r.Dial(ctx, cfg, nil)
	if err != nil {
		t.Fatalf("dial after the replica in use died: %v", err)
	}
	conn.Close()
	if r.Current() != cp2.Addr || r.Failovers() != 1 || len(failovers) != 1 || failovers[0] != cp.Addr+">"+cp2.Addr {
		t.Errorf("after failover: current %q failovers %d %v", r.Current(), r.Failovers(), failovers)
	}
}

// joinCounter is a control plane whose evidence never verifies under the
// agent's policy, and that counts what it is sent beyond Challenge.
type joinCounter struct {
	fakeControlPlane
	joins atomic.Int32
}

func (j *joinCounter) Join(context.Context, *cpv1.JoinRequest) (*cpv1.JoinResponse, error) {
	j.joins.Add(1)
	return nil, status.Error(codes.Internal, "not a real control plane")
}

// TestReplicasNeverSkipVerification: a replica whose evidence does not
// verify (here: another control plane's evidence, replayed) is sent
// nothing, failover or not; the dial moves to a replica that verifies,
// and with none left it fails with ErrControlPlaneRefused.
func TestReplicasNeverSkipVerification(t *testing.T) {
	cp := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	// The impostor replays evidence a genuine control plane made for its
	// own TLS key.
	genuine, err := a.Dial(t, cp)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := genuine.Client.Challenge(context.Background(), &cpv1.ChallengeRequest{})
	genuine.Close()
	if err != nil {
		t.Fatal(err)
	}
	imp := &joinCounter{fakeControlPlane: fakeControlPlane{evidence: resp.GetEvidence()}}
	impAddr, _ := serveFakeServer(t, imp)

	cfg := cpclient.Config{Verifier: a.Verifier, TrustDomain: a.TD}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := cpclient.NewReplicas([]string{impAddr, cp.Addr})
	if err != nil {
		t.Fatal(err)
	}
	var jr *cpv1.JoinResponse
	conn, err := r.Dial(ctx, cfg, joinOp(a, &jr))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn.Close()
	if r.Current() != cp.Addr || jr.GetPodCidr() == "" {
		t.Fatalf("joined via %q: %v", r.Current(), jr)
	}
	if n := imp.joins.Load(); n != 0 {
		t.Fatalf("the replica whose evidence failed was sent %d joins", n)
	}

	// Only the impostor left.
	r2, _ := cpclient.NewReplicas([]string{impAddr})
	_, err = r2.Dial(ctx, cfg, joinOp(a, &jr))
	if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !strings.Contains(err.Error(), impAddr) {
		t.Fatalf("dial to an impostor only: %v; want ErrControlPlaneRefused naming %s", err, impAddr)
	}
	if n := imp.joins.Load(); n != 0 {
		t.Fatalf("the impostor was sent %d joins", n)
	}
	if r2.Current() != "" {
		t.Errorf("an impostor counts as working: %q", r2.Current())
	}
}

// TestReplicasAnswerVersusUnavailable: an operation a replica answers
// "unavailable" (down, cut off from the shared state) moves on to the next
// replica; any other answer, a refusal in particular, is final and no other
// replica is asked.
func TestReplicasAnswerVersusUnavailable(t *testing.T) {
	cp1 := cptest.Start(t, cptest.Options{})
	cp2 := cptest.Start(t, cptest.Options{})
	a := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	cfg := cpclient.Config{Verifier: a.Verifier, TrustDomain: a.TD}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := cpclient.NewReplicas([]string{cp1.Addr, cp2.Addr})
	if err != nil {
		t.Fatal(err)
	}
	var asked []string
	answer := func(byAddr map[string]error) func(context.Context, *cpclient.Conn) error {
		return func(_ context.Context, c *cpclient.Conn) error {
			asked = append(asked, c.Addr())
			return byAddr[c.Addr()]
		}
	}
	_, err = r.Dial(ctx, cfg, answer(map[string]error{cp1.Addr: status.Error(codes.Unavailable, "store unreachable")}))
	if err != nil || strings.Join(asked, ",") != cp1.Addr+","+cp2.Addr || r.Current() != cp2.Addr {
		t.Fatalf("unavailable first replica: err %v, asked %v, current %q", err, asked, r.Current())
	}
	asked = nil
	refusal := cpclient.RefusalFrom("join", status.Error(codes.PermissionDenied, "revoked"))
	_, err = r.Dial(ctx, cfg, answer(map[string]error{cp2.Addr: refusal}))
	if _, ok := cpclient.AsRefusal(err); !ok || strings.Join(asked, ",") != cp2.Addr {
		t.Fatalf("refusal: err %v, asked %v; want the refusal from %s alone", err, asked, cp2.Addr)
	}
	asked = nil
	_, err = r.Dial(ctx, cfg, answer(map[string]error{cp1.Addr: status.Error(codes.Unavailable, "a"), cp2.Addr: status.Error(codes.Unavailable, "b")}))
	if err == nil || !strings.Contains(err.Error(), cp1.Addr) || !strings.Contains(err.Error(), cp2.Addr) || len(asked) != 2 {
		t.Fatalf("all unavailable: err %v, asked %v; want an error naming both", err, asked)
	}
	if r.Current() != cp2.Addr {
		t.Errorf("current moved to %q though no replica answered", r.Current())
	}
}
