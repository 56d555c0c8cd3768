package controlplane_test

// Attack: an unauthenticated caller floods Challenge (and Join) to exhaust
// the control plane's state or make its TEE produce reports at will, so that
// honest nodes can no longer join, renew or reconnect. The flood comes from
// one loopback address and from many (127.0.0.x as distinct sources); the
// honest operations run from 127.0.0.1 meanwhile and must all succeed.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// countingTEE counts the reports the control plane's TEE produces.
type countingTEE struct {
	attest.Provider
	n atomic.Int64
}

func (c *countingTEE) Report(rd [64]byte) (*attestv1.Evidence, error) {
	c.n.Add(1)
	return c.Provider.Report(rd)
}

// attacker is a raw gRPC client that dials the control plane from src (a
// loopback address) and accepts any server certificate.
func attacker(t testing.TB, addr, src string) cpv1.ControlPlaneClient {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cpv1.NewControlPlaneClient(cc)
}

// floodRequest is a Challenge request carrying a fresh 32-byte field 1 (the
// agent nonce of earlier protocol versions, which made the control plane
// attest per call); a control plane that no longer reads it ignores it.
func floodRequest() *cpv1.ChallengeRequest {
	nonce, _ := attest.NewChallenge(time.Now())
	req := &cpv1.ChallengeRequest{}
	raw := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), nonce)
	if err := proto.Unmarshal(raw, req); err != nil {
		panic(err)
	}
	return req
}

// floodCSR is a well-formed CSR, so garbage joins get as far as the
// challenge check.
var floodCSR = func() []byte {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		panic(err)
	}
	return der
}()

// garbageJoin answers a challenge the control plane never issued.
func garbageJoin() *cpv1.JoinRequest {
	ch, _ := attest.NewChallenge(time.Now())
	junk := make([]byte, 64)
	rand.Read(junk)
	return &cpv1.JoinRequest{Name: "flood", Endpoint: "198.18.0.66:51820", WireguardPublicKey: junk[:32], Csr: floodCSR,
		Evidence: &attestv1.Evidence{Tee: "sim-snp", Report: junk, Binding: &attestv1.Binding{Purpose: "join", Challenge: ch, Name: "flood", Key: junk[:32], IdentityKeyHash: junk[32:]}}}
}

// floodResult counts a flood's answers by status code.
type floodResult struct {
	mu    sync.Mutex
	codes map[codes.Code]int
}

func (r *floodResult) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.codes == nil {
		r.codes = map[codes.Code]int{}
	}
	r.codes[status.Code(err)]++
}

func (r *floodResult) get(c codes.Code) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.codes[c]
}

// flood runs workers against c until stop closes: each worker calls
// Challenge in a tight loop (every fourth call a garbage Join when withJoin).
// It returns when every worker has stopped.
func flood(clients []cpv1.ControlPlaneClient, workersEach int, withJoin bool, stop <-chan struct{}, res *floodResult) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, cl := range clients {
		for w := 0; w < workersEach; w++ {
			wg.Add(1)
			go func(cl cpv1.ControlPlaneClient) {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
					var err error
					if withJoin && i%4 == 3 {
						_, err = cl.Join(ctx, garbageJoin())
					} else {
						_, err = cl.Challenge(ctx, floodRequest())
					}
					cancel()
					res.add(err)
				}
			}(cl)
		}
	}
	return &wg
}

// latencies collects operation durations by kind.
type latencies map[string][]time.Duration

func (l latencies) report(t *testing.T, phase string) {
	kinds := make([]string, 0, len(l))
	for k := range l {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		d := append([]time.Duration(nil), l[k]...)
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		pct := func(p float64) time.Duration { return d[int(p*float64(len(d)-1)+0.5)] }
		t.Logf("%s: honest %-9s n=%-3d p50=%-8s p99=%-8s max=%s", phase, k, len(d),
			pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), d[len(d)-1].Round(time.Millisecond))
	}
}

// TestChallengeFloodHonestNodesProceed floods the control plane from one
// address, then from 32 addresses, each phase for a bounded time (after a
// baseline phase without flood), while
// honest nodes join, renew (rotating their WireGuard key) and reconnect. All
// honest operations must succeed; the control plane's TEE must produce a
// report at most once per evidence epoch whatever the call rate; the
// flooders must be refused with ResourceExhausted.
func TestChallengeFloodHonestNodesProceed(t *testing.T) {
	const phase = 5 * time.Second
	tee := &countingTEE{Provider: cptest.SimNode(t, sim.NodeConfig{})}
	c := cptest.Start(t, cptest.Options{Provider: tee})
	start := time.Now()

	renewer := cptest.NewAgent(t, "steady-renew", cptest.SimNode(t, sim.NodeConfig{}), nil)
	renewer.Join(t, c)
	watcher := cptest.NewAgent(t, "steady-watch", cptest.SimNode(t, sim.NodeConfig{}), nil)
	watcher.Join(t, c)

	joined := 0
	// honest runs, until stop closes, a joiner (one new node every half
	// second: a real node joins once, these stand for many nodes arriving
	// during the flood, all from 127.0.0.1) and, every 150 ms, a renewal
	// with a new WireGuard key and a reconnect (dial, re-attest the control
	// plane, Watch snapshot) of two joined nodes.
	honest := func(t *testing.T, name string, stop <-chan struct{}) latencies {
		var mu sync.Mutex
		lat := latencies{}
		timed := func(kind string, op func() error) {
			t0 := time.Now()
			err := op()
			d := time.Since(t0)
			if err != nil {
				t.Errorf("%s: honest %s failed under flood after %s: %v", name, kind, d.Round(time.Millisecond), err)
				return
			}
			mu.Lock()
			lat[kind] = append(lat[kind], d)
			mu.Unlock()
		}
		stopped := func(d time.Duration) bool {
			select {
			case <-stop:
				return true
			case <-time.After(d):
				return false
			}
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				iter := time.Now()
				joined++
				a := cptest.NewAgent(t, fmt.Sprintf("honest-%d", joined), cptest.SimNode(t, sim.NodeConfig{}), nil)
				timed("join", func() error { _, err := a.TryJoin(t, c); return err })
				if stopped(500*time.Millisecond - time.Since(iter)) {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for {
				timed("renew", func() error { return renewOnce(t, renewer, c) })
				timed("reconnect", func() error { return reconnectOnce(t, watcher, c) })
				// Well within each node's own budget (10 calls/s): a real
				// node renews every half SVID TTL.
				if stopped(150 * time.Millisecond) {
					return
				}
			}
		}()
		wg.Wait()
		return lat
	}

	run := func(t *testing.T, name string, clients []cpv1.ControlPlaneClient, workersEach int, res *floodResult) {
		stop := make(chan struct{})
		wg := flood(clients, workersEach, true, stop, res)
		time.AfterFunc(phase, func() { close(stop) })
		lat := honest(t, name, stop)
		wg.Wait()
		lat.report(t, name)
		for _, k := range []string{"join", "renew", "reconnect"} {
			if len(lat[k]) < 3 {
				t.Errorf("%s: only %d honest %s operations succeeded", name, len(lat[k]), k)
			}
		}
		t.Logf("%s: flood answers by code: %v", name, res.codes)
	}

	t.Run("baseline", func(t *testing.T) {
		// No flood: the same honest load, for comparison.
		run(t, "baseline", nil, 0, &floodResult{})
	})
	var one floodResult
	t.Run("one-address", func(t *testing.T) {
		run(t, "one-address", []cpv1.ControlPlaneClient{attacker(t, c.Addr, "127.0.0.2")}, 8, &one)
		// A per-source limit lets through at most its burst plus its rate
		// over the phase; everything else is refused outright.
		if ok := one.get(codes.OK); ok > 200 {
			t.Errorf("one address got %d challenges in %s; want it rate limited", ok, phase)
		}
		if one.get(codes.ResourceExhausted) == 0 {
			t.Error("no flood call was refused with ResourceExhausted")
		}
	})
	var many floodResult
	t.Run("many-addresses", func(t *testing.T) {
		var clients []cpv1.ControlPlaneClient
		for i := 10; i < 42; i++ {
			clients = append(clients, attacker(t, c.Addr, fmt.Sprintf("127.0.0.%d", i)))
		}
		run(t, "many-addresses", clients, 1, &many)
		if many.get(codes.ResourceExhausted) == 0 {
			t.Error("no flood call was refused with ResourceExhausted")
		}
	})

	// However many calls, the TEE answered at most once per evidence epoch
	// (plus one for the epoch in progress).
	elapsed := time.Since(start)
	limit := int64(elapsed/(30*time.Second)) + 2
	reports := tee.n.Load()
	t.Logf("control plane reports: %d in %s (limit %d); flood calls: %d + %d",
		reports, elapsed.Round(time.Millisecond), limit, sum(one.codes), sum(many.codes))
	if reports > limit {
		t.Errorf("the control plane's TEE produced %d reports in %s; an unauthenticated caller must not be able to make it attest at will (limit %d)", reports, elapsed.Round(time.Second), limit)
	}
	if got := counterValue(t, c, "confmesh_controlplane_attestation_reports_total", nil); int64(got) != reports {
		t.Errorf("confmesh_controlplane_attestation_reports_total = %v, the TEE produced %d", got, reports)
	}
	if got := counterValue(t, c, "confmesh_controlplane_challenge_refusals_total", map[string]string{"reason": "rate_limited"}); got == 0 {
		t.Error("confmesh_controlplane_challenge_refusals_total{reason=\"rate_limited\"} did not count the refused flood")
	}
	if got := counterValue(t, c, "confmesh_controlplane_challenge_refusals_total", map[string]string{"reason": "forged"}); got == 0 {
		t.Error("confmesh_controlplane_challenge_refusals_total{reason=\"forged\"} did not count the joins answering forged challenges")
	}
}

func sum(m map[codes.Code]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestChallengeFloodStoresNothing: unauthenticated Challenge calls, however
// many, leave no per-challenge state behind (at most one rate-limit bucket
// for their source).
func TestChallengeFloodStoresNothing(t *testing.T) {
	c := cptest.Start(t, cptest.Options{})
	cl := attacker(t, c.Addr, "127.0.0.3")
	before := c.Server.UnauthenticatedState()
	for i := 0; i < 2000; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cl.Challenge(ctx, floodRequest())
		cancel()
		if err != nil && status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if after := c.Server.UnauthenticatedState(); after > before+1 {
		t.Fatalf("2000 unauthenticated Challenge calls grew the control plane's state from %d to %d entries", before, after)
	}
	// An honest node still joins.
	cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil).Join(t, c)
}
