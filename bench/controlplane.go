package bench

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ControlPlaneConfig sizes a control plane run.
type ControlPlaneConfig struct {
	// Nodes is how many in-process simulated agents join and watch.
	Nodes int
	// Concurrency is how many agents join at once (default 2 x CPUs).
	Concurrency int
	// Dir holds the store and the simulated root.
	Dir string
	// Logger; nil discards.
	Logger *slog.Logger
}

// ControlPlaneResult is what `confmesh bench controlplane` prints.
type ControlPlaneResult struct {
	Nodes          int     `json:"nodes"`
	JoinsPerSecond float64 `json:"joins_per_second"`
	FanoutSeconds  float64 `json:"fanout_seconds"`
	RSSMiB         float64 `json:"rss_mib"`
}

type benchAgent struct {
	name    string
	tee     *sim.Node
	wgKey   []byte
	svidKey crypto.Signer
	svid    [][]byte
	bundle  [][]byte

	mu   sync.Mutex
	conn *cpclient.Conn
	rev  uint64
}

// RunControlPlane starts a real control plane (bbolt store, gRPC over
// loopback TLS, a simulated TEE) and N in-process agents, each on its own
// simulated chip: every agent attests the control plane, joins with its own
// evidence (a chain never seen before, so the full verification runs) and
// opens a Watch with its node SVID. It reports joins per second over the
// join phase, the time from the last join's reply until every watcher has
// seen that node, and the process's resident memory with all N watch
// streams open (both ends live in this process).
func RunControlPlane(ctx context.Context, cfg ControlPlaneConfig) (ControlPlaneResult, error) {
	if cfg.Nodes < 2 {
		return ControlPlaneResult{}, fmt.Errorf("need at least 2 nodes, got %d", cfg.Nodes)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2 * runtime.NumCPU()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := sim.NewTestCA("")
	if err != nil {
		return ControlPlaneResult{}, err
	}
	if err := ca.Save(filepath.Join(cfg.Dir, "sim")); err != nil {
		return ControlPlaneResult{}, err
	}
	measurement := bytes.Repeat([]byte{0x42}, 48)
	policy, err := attest.ParsePolicy(fmt.Appendf(nil, "trustDomain: bench.test\nmeasurements: [\"%x\"]\ncontrolPlane: {measurements: [\"%x\"]}\ntrustedRoots:\n- kind: simulated\n  file: %q\n",
		measurement, measurement, ca.RootPath()))
	if err != nil {
		return ControlPlaneResult{}, err
	}
	cpTEE, err := ca.NewNode(sim.NodeConfig{Measurement: measurement})
	if err != nil {
		return ControlPlaneResult{}, err
	}
	st, err := store.OpenBolt(filepath.Join(cfg.Dir, "state.db"))
	if err != nil {
		return ControlPlaneResult{}, err
	}
	defer st.Close()
	// Room for every node: /16 of /28s holds 4096. Every in-process agent
	// dials from 127.0.0.1, where a cluster's nodes each have their own
	// address: the per-source limit is lifted to measure joins themselves.
	srv, err := controlplane.New(controlplane.Config{Policy: policy, Provider: cpTEE, Store: st, Logger: log,
		ClusterCIDR: "10.0.0.0/16", NodePrefixLen: 28, SweepInterval: time.Hour,
		SourceRate: math.Inf(1), SourceBurst: 1})
	if err != nil {
		return ControlPlaneResult{}, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ControlPlaneResult{}, err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(sctx, lis) }()
	defer func() { stop(); <-served }()

	// Simulated chips and keys are set-up, not measured.
	agents := make([]*benchAgent, cfg.Nodes)
	for i := range agents {
		tee, err := ca.NewNode(sim.NodeConfig{Measurement: measurement})
		if err != nil {
			return ControlPlaneResult{}, err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return ControlPlaneResult{}, err
		}
		wg := make([]byte, 32)
		if _, err := rand.Read(wg); err != nil {
			return ControlPlaneResult{}, err
		}
		agents[i] = &benchAgent{name: fmt.Sprintf("node-%04d", i), tee: tee, wgKey: wg, svidKey: key}
	}
	verifier, err := attest.NewVerifier(policy, attest.Options{Logger: log})
	if err != nil {
		return ControlPlaneResult{}, err
	}
	td := spiffeid.RequireTrustDomainFromString(policy.TrustDomain)
	addr := lis.Addr().String()

	// seen[i] is closed when watcher i has seen the last node.
	last := agents[len(agents)-1].name
	seen := make([]chan struct{}, len(agents))
	for i := range seen {
		seen[i] = make(chan struct{})
	}
	var lastReply time.Time
	var mu sync.Mutex
	work := make(chan int)
	errs := make(chan error, cfg.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cfg.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				a := agents[i]
				if err := a.join(sctx, addr, verifier, td); err != nil {
					errs <- fmt.Errorf("%s: %w", a.name, err)
					return
				}
				if a.name == last {
					mu.Lock()
					lastReply = time.Now()
					mu.Unlock()
				}
				if err := a.watch(sctx, addr, verifier, td, last, seen[i]); err != nil {
					errs <- fmt.Errorf("%s: watch: %w", a.name, err)
					return
				}
			}
		}()
	}
	for i := range agents {
		select {
		case work <- i:
		case err := <-errs:
			close(work)
			return ControlPlaneResult{}, err
		}
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		return ControlPlaneResult{}, err
	default:
	}
	joinPhase := time.Since(start)
	deadline := time.After(2 * time.Minute)
	for i := range seen {
		if agents[i].name == last {
			continue
		}
		select {
		case <-seen[i]:
		case <-deadline:
			return ControlPlaneResult{}, fmt.Errorf("watcher %s never saw %s", agents[i].name, last)
		}
	}
	mu.Lock()
	fanout := time.Since(lastReply)
	mu.Unlock()
	rss, _ := rssMiB()
	stop() // ends the watch goroutines before their connections close
	for _, a := range agents {
		a.setConn(nil)
	}
	return ControlPlaneResult{
		Nodes: cfg.Nodes, JoinsPerSecond: float64(cfg.Nodes) / joinPhase.Seconds(),
		FanoutSeconds: fanout.Seconds(), RSSMiB: rss,
	}, nil
}

func (a *benchAgent) spec() cpclient.Node {
	return cpclient.Node{Name: a.name, Endpoint: "198.18.0.1:51820", WireGuardKey: a.wgKey, SVIDKey: a.svidKey, Provider: a.tee}
}

func (a *benchAgent) join(ctx context.Context, addr string, v *attest.Verifier, td spiffeid.TrustDomain) error {
	conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: v, TrustDomain: td})
	if err != nil {
		return err
	}
	defer conn.Close()
	resp, err := conn.Join(ctx, a.spec())
	if err != nil {
		return err
	}
	a.svid, a.bundle = resp.GetSvid(), resp.GetTrustBundle()
	return nil
}

// watch opens the agent's watch stream and closes seen once the stream
// has shown node want (in a snapshot or as a delta). Like an agent, it
// reconnects and resumes from its last revision if the control plane cuts
// it off as a slow watcher.
func (a *benchAgent) watch(ctx context.Context, addr string, v *attest.Verifier, td spiffeid.TrustDomain, want string, seen chan struct{}) error {
	b, err := cpclient.ParseBundle(td, a.bundle)
	if err != nil {
		return err
	}
	dial := func() (*cpclient.Conn, cpv1.ControlPlane_WatchClient, error) {
		conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: v, TrustDomain: td, Bundle: b,
			ClientCertificate: func() (*tls.Certificate, error) {
				return &tls.Certificate{Certificate: a.svid, PrivateKey: a.svidKey}, nil
			}})
		if err != nil {
			return nil, nil, err
		}
		a.mu.Lock()
		from := a.rev
		a.mu.Unlock()
		stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{Revision: from})
		if err != nil {
			conn.Close()
			return nil, nil, err
		}
		return conn, stream, nil
	}
	conn, stream, err := dial()
	if err != nil {
		return err
	}
	a.setConn(conn)
	done := a.name == want
	if done {
		close(seen)
	}
	go func() {
		for {
			for {
				ev, err := stream.Recv()
				if err != nil {
					break
				}
				a.mu.Lock()
				a.rev = ev.GetRevision()
				a.mu.Unlock()
				if done {
					continue
				}
				found := ev.GetUpsert().GetName() == want
				for _, p := range ev.GetSnapshot().GetPeers() {
					found = found || p.GetName() == want
				}
				if found {
					close(seen)
					done = true
				}
			}
			if ctx.Err() != nil {
				return
			}
			var err error
			for {
				if conn, stream, err = dial(); err == nil {
					a.setConn(conn)
					break
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}()
	return nil
}

func (a *benchAgent) setConn(c *cpclient.Conn) {
	a.mu.Lock()
	old := a.conn
	a.conn = c
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

func rssMiB() (float64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			if err != nil {
				return 0, err
			}
			return float64(kb) / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}
