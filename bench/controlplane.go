package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ControlPlaneConfig sizes a control plane run.
type ControlPlaneConfig struct {
	// Command runs the confmesh CLI: Command[0] is the binary, the rest
	// are arguments placed before "controlplane ...".
	Command []string
	// Env is the control plane process's environment (nil: this process's).
	Env []string
	// Nodes is how many simulated agents join and then watch.
	Nodes int
	// Concurrency is how many agents join (or renew) at once (default 2 x CPUs).
	Concurrency int
	// FanoutJoins is how many further nodes join while all Nodes watch
	// (default 50, at most Nodes); Renewals how many watching nodes renew
	// (default FanoutJoins).
	FanoutJoins, Renewals int
	// Dir holds the simulated root, the policy and the control plane's state.
	Dir string
	// Logger; nil discards.
	Logger *slog.Logger
}

// ControlPlaneResult is what `confmesh bench controlplane` prints. CPU and
// memory figures are the control plane process's own (/proc/PID/stat and
// /proc/PID/status); the agents run in the bench process. Fan-out
// latencies run from the control plane's store commit of a change (its
// debug log record) to each watcher's receipt of that delta, over every
// (change, watcher) pair of the phase.
type ControlPlaneResult struct {
	Nodes       int `json:"nodes"`
	Concurrency int `json:"concurrency"`

	// Join phase: Nodes fresh nodes join, nobody watching yet.
	JoinsPerSecond     float64 `json:"joins_per_second"`
	ServerCPUMsPerJoin float64 `json:"server_cpu_ms_per_join"`
	// Watch phase: every node opens its watch (mTLS handshake + snapshot).
	ServerCPUMsPerWatch float64 `json:"server_cpu_ms_per_watch"`

	// FanoutJoins further nodes join while all Nodes watch.
	FanoutJoins               int     `json:"fanout_joins"`
	ServerCPUMsPerWatchedJoin float64 `json:"server_cpu_ms_per_watched_join"`
	FanoutP50Ms               float64 `json:"fanout_p50_ms"`
	FanoutP99Ms               float64 `json:"fanout_p99_ms"`
	FanoutMaxMs               float64 `json:"fanout_max_ms"`

	// Renewals watching nodes renew while all watch.
	Renewals              int     `json:"renewals"`
	ServerCPUMsPerRenewal float64 `json:"server_cpu_ms_per_renewal"`
	RenewFanoutP50Ms      float64 `json:"renew_fanout_p50_ms"`
	RenewFanoutP99Ms      float64 `json:"renew_fanout_p99_ms"`

	// One node is revoked (`confmesh nodes revoke`) while all watch; the
	// CPU includes the admin connection's mTLS handshake.
	ServerCPUMsRevoke float64 `json:"server_cpu_ms_revoke"`
	RevokeFanoutP50Ms float64 `json:"revoke_fanout_p50_ms"`
	RevokeFanoutP99Ms float64 `json:"revoke_fanout_p99_ms"`
	RevokeFanoutMaxMs float64 `json:"revoke_fanout_max_ms"`

	// ServerRSSMiB is the control plane's resident memory with every watch
	// open after the fan-out phases; ServerPeakRSSMiB its high-water mark.
	ServerRSSMiB     float64 `json:"server_rss_mib"`
	ServerPeakRSSMiB float64 `json:"server_peak_rss_mib"`
	// Deliveries is how many (change, watcher) pairs the fan-out figures cover.
	Deliveries int `json:"deliveries"`
}

type benchAgent struct {
	name    string
	tee     *sim.Node
	wgKey   []byte
	svidKey crypto.Signer
	svid    [][]byte
	bundle  [][]byte

	mu      sync.Mutex
	conn    *cpclient.Conn
	rev     uint64
	recv    map[uint64]int64 // revision -> receipt (unix ns)
	stopped bool             // revoked: no reconnects
}

// RunControlPlane starts the control plane as its own process (`confmesh
// controlplane` on the simulated TEE, bbolt store, gRPC over loopback TLS)
// and drives it from simulated agents in this process, each on its own
// simulated chip (a chain never seen before, so every join runs the full
// verification). Phases: Nodes join; all open their watch; FanoutJoins
// further nodes join; Renewals nodes renew; one node is revoked.
func RunControlPlane(ctx context.Context, cfg ControlPlaneConfig) (ControlPlaneResult, error) {
	if cfg.Nodes < 2 {
		return ControlPlaneResult{}, fmt.Errorf("need at least 2 nodes, got %d", cfg.Nodes)
	}
	if len(cfg.Command) == 0 {
		return ControlPlaneResult{}, errors.New("no confmesh command to run the control plane")
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 2 * runtime.NumCPU()
	}
	if cfg.FanoutJoins <= 0 {
		cfg.FanoutJoins = min(50, cfg.Nodes)
	}
	if cfg.Renewals <= 0 {
		cfg.Renewals = cfg.FanoutJoins
	}
	cfg.FanoutJoins, cfg.Renewals = min(cfg.FanoutJoins, cfg.Nodes), min(cfg.Renewals, cfg.Nodes-1)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ca, err := sim.NewTestCA("")
	if err != nil {
		return ControlPlaneResult{}, err
	}
	simDir := filepath.Join(cfg.Dir, "sim")
	if err := ca.Save(simDir); err != nil {
		return ControlPlaneResult{}, err
	}
	measurement := bytes.Repeat([]byte{0x42}, 48)
	policyText := fmt.Appendf(nil, "trustDomain: bench.test\nmeasurements: [\"%x\"]\ncontrolPlane: {measurements: [\"%x\"]}\ntrustedRoots:\n- kind: simulated\n  file: %q\n",
		measurement, measurement, ca.RootPath())
	policy, err := attest.ParsePolicy(policyText)
	if err != nil {
		return ControlPlaneResult{}, err
	}
	policyPath := filepath.Join(cfg.Dir, "policy.yaml")
	if err := os.WriteFile(policyPath, policyText, 0o600); err != nil {
		return ControlPlaneResult{}, err
	}

	// Simulated chips and keys are set-up, not measured.
	total := cfg.Nodes + cfg.FanoutJoins
	agents := make([]*benchAgent, total)
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
		agents[i] = &benchAgent{name: fmt.Sprintf("node-%05d", i), tee: tee, wgKey: wg, svidKey: key, recv: map[uint64]int64{}}
	}
	verifier, err := attest.NewVerifier(policy, attest.Options{Logger: log})
	if err != nil {
		return ControlPlaneResult{}, err
	}
	td := spiffeid.RequireTrustDomainFromString(policy.TrustDomain)

	cp, err := startControlPlane(cfg, simDir, policyPath, measurement)
	if err != nil {
		return ControlPlaneResult{}, err
	}
	defer cp.stop()
	if err := cp.waitReady(ctx, 60*time.Second); err != nil {
		return ControlPlaneResult{}, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		cancel()
		for _, a := range agents {
			a.setConn(nil)
		}
	}()
	res := ControlPlaneResult{Nodes: cfg.Nodes, Concurrency: cfg.Concurrency}
	watchers, joiners := agents[:cfg.Nodes], agents[cfg.Nodes:]

	// Join phase: nobody watches yet.
	cpu0, err := cp.cpu()
	if err != nil {
		return res, err
	}
	start := time.Now()
	if err := parallel(cfg.Concurrency, len(watchers), func(i int) error {
		return watchers[i].join(sctx, cp.addr, verifier, td)
	}); err != nil {
		return res, cp.withLog(err)
	}
	joinPhase := time.Since(start)
	cpu1, err := cp.cpu()
	if err != nil {
		return res, err
	}
	res.JoinsPerSecond = float64(cfg.Nodes) / joinPhase.Seconds()
	res.ServerCPUMsPerJoin = ms(cpu1-cpu0) / float64(cfg.Nodes)

	// Watch phase: every node opens its watch and gets its snapshot.
	finalRev := cp.lastRevision()
	if err := parallel(cfg.Concurrency, len(watchers), func(i int) error {
		return watchers[i].watch(sctx, cp.addr, verifier, td)
	}); err != nil {
		return res, cp.withLog(err)
	}
	if err := cp.waitRevision(ctx, watchers, finalRev); err != nil {
		return res, cp.withLog(err)
	}
	cpu2, err := cp.cpu()
	if err != nil {
		return res, err
	}
	res.ServerCPUMsPerWatch = ms(cpu2-cpu1) / float64(cfg.Nodes)

	// Fan-out of joins while all watch.
	res.FanoutJoins = len(joiners)
	lats, cpuUsed, err := cp.measureChanges(ctx, watchers, len(joiners), func() error {
		return parallel(cfg.Concurrency, len(joiners), func(i int) error {
			return joiners[i].join(sctx, cp.addr, verifier, td)
		})
	})
	if err != nil {
		return res, err
	}
	res.ServerCPUMsPerWatchedJoin = ms(cpuUsed) / float64(len(joiners))
	res.FanoutP50Ms, res.FanoutP99Ms, res.FanoutMaxMs = pct(lats, 0.5), pct(lats, 0.99), pct(lats, 1)
	res.Deliveries += len(lats)

	// Renewals while all watch.
	res.Renewals = cfg.Renewals
	lats, cpuUsed, err = cp.measureChanges(ctx, watchers, cfg.Renewals, func() error {
		return parallel(cfg.Concurrency, cfg.Renewals, func(i int) error { return watchers[i].renew(sctx) })
	})
	if err != nil {
		return res, err
	}
	res.ServerCPUMsPerRenewal = ms(cpuUsed) / float64(cfg.Renewals)
	res.RenewFanoutP50Ms, res.RenewFanoutP99Ms = pct(lats, 0.5), pct(lats, 0.99)
	res.Deliveries += len(lats)

	// One revocation, through the operator's command.
	victim := watchers[len(watchers)-1]
	victim.mu.Lock()
	victim.stopped = true
	victim.mu.Unlock()
	lats, cpuUsed, err = cp.measureChanges(ctx, watchers[:len(watchers)-1], 1, func() error { return cp.revoke(ctx, victim.name) })
	if err != nil {
		return res, err
	}
	res.ServerCPUMsRevoke = ms(cpuUsed)
	res.RevokeFanoutP50Ms, res.RevokeFanoutP99Ms, res.RevokeFanoutMaxMs = pct(lats, 0.5), pct(lats, 0.99), pct(lats, 1)
	res.Deliveries += len(lats)

	if res.ServerRSSMiB, res.ServerPeakRSSMiB, err = cp.rss(); err != nil {
		return res, err
	}
	return res, nil
}

// measureChanges runs do, which makes n peer-set changes, and returns the
// latency from each change's commit to its receipt by every watcher other
// than the changed node, and the control plane's CPU time meanwhile.
func (cp *cpProcess) measureChanges(ctx context.Context, watchers []*benchAgent, n int, do func() error) ([]float64, time.Duration, error) {
	before := cp.commitCount()
	cpu0, err := cp.cpu()
	if err != nil {
		return nil, 0, err
	}
	if err := do(); err != nil {
		return nil, 0, cp.withLog(err)
	}
	commits, err := cp.waitCommits(ctx, before+n)
	if err != nil {
		return nil, 0, err
	}
	commits = commits[before:]
	var last uint64
	for _, c := range commits {
		last = max(last, c.rev)
	}
	if err := cp.waitRevision(ctx, watchers, last); err != nil {
		return nil, 0, cp.withLog(err)
	}
	cpu1, err := cp.cpu()
	if err != nil {
		return nil, 0, err
	}
	var lats []float64
	for _, w := range watchers {
		w.mu.Lock()
		for _, c := range commits {
			if c.node == w.name {
				continue
			}
			t, ok := w.recv[c.rev]
			if !ok {
				w.mu.Unlock()
				return nil, 0, fmt.Errorf("watcher %s never received revision %d (%s %s)", w.name, c.rev, c.node, c.state)
			}
			lats = append(lats, float64(t-c.at)/1e6)
		}
		w.mu.Unlock()
	}
	return lats, cpu1 - cpu0, nil
}

// waitRevision waits until every watcher has received rev (or the
// control plane exits).
func (cp *cpProcess) waitRevision(ctx context.Context, watchers []*benchAgent, rev uint64) error {
	deadline := time.Now().Add(5 * time.Minute)
	for _, w := range watchers {
		for {
			w.mu.Lock()
			got := w.rev
			w.mu.Unlock()
			if got >= rev {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("watcher %s is at revision %d, want %d", w.name, got, rev)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-cp.exited:
				return errors.New("control plane exited")
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// parallel runs f(0..n-1), at most conc at once, and returns the first error.
func parallel(conc, n int, f func(int) error) error {
	work := make(chan int)
	errs := make([]error, conc)
	var wg sync.WaitGroup
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if errs[w] == nil {
					errs[w] = f(i)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// pct is the nearest-rank q-quantile of vs (which it sorts).
func pct(vs []float64, q float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	sort.Float64s(vs)
	i := int(math.Ceil(q*float64(len(vs)))) - 1
	return vs[max(i, 0)]
}

func (a *benchAgent) spec() cpclient.Node {
	return cpclient.Node{Name: a.name, Endpoint: "198.18.0.1:51820", WireGuardKey: a.wgKey, SVIDKey: a.svidKey, Provider: a.tee}
}

func (a *benchAgent) join(ctx context.Context, addr string, v *attest.Verifier, td spiffeid.TrustDomain) error {
	conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: v, TrustDomain: td})
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	defer conn.Close()
	resp, err := conn.Join(ctx, a.spec())
	if err != nil {
		return fmt.Errorf("%s: %w", a.name, err)
	}
	a.svid, a.bundle = resp.GetSvid(), resp.GetTrustBundle()
	return nil
}

// renew re-attests over the node's watch connection (mTLS with its SVID).
func (a *benchAgent) renew(ctx context.Context) error {
	a.mu.Lock()
	conn := a.conn
	a.mu.Unlock()
	resp, err := conn.Renew(ctx, a.spec(), nil)
	if err != nil {
		return fmt.Errorf("%s: renew: %w", a.name, err)
	}
	a.mu.Lock()
	a.svid = resp.GetSvid()
	a.mu.Unlock()
	return nil
}

// rawWatchCodec leaves watch events undecoded: the bench's thousand
// watchers share this process's CPU with nothing to gain from decoding
// every peer, so they read only the revision (see watchEventRevision).
type rawWatchCodec struct{}

type rawMsg struct{ b []byte }

func (rawWatchCodec) Marshal(v any) ([]byte, error) { return proto.Marshal(v.(proto.Message)) }
func (rawWatchCodec) Unmarshal(data []byte, v any) error {
	v.(*rawMsg).b = append(v.(*rawMsg).b[:0], data...)
	return nil
}
func (rawWatchCodec) Name() string { return "proto" }

// watchEventRevision reads field 1 (revision) of an encoded WatchEvent.
func watchEventRevision(b []byte) (uint64, error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == 1 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			return v, nil
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return 0, nil
}

// watch opens the agent's watch stream (mTLS with its node SVID) and
// records when each revision arrives. Like an agent, it reconnects and
// resumes from its last revision if the control plane cuts it off.
func (a *benchAgent) watch(ctx context.Context, addr string, v *attest.Verifier, td spiffeid.TrustDomain) error {
	b, err := cpclient.ParseBundle(td, a.bundle)
	if err != nil {
		return err
	}
	dial := func() (cpv1.ControlPlane_WatchClient, error) {
		conn, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: v, TrustDomain: td, Bundle: b,
			ClientCertificate: func() (*tls.Certificate, error) {
				a.mu.Lock()
				defer a.mu.Unlock()
				return &tls.Certificate{Certificate: a.svid, PrivateKey: a.svidKey}, nil
			}})
		if err != nil {
			return nil, err
		}
		a.mu.Lock()
		from := a.rev
		a.mu.Unlock()
		stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{Revision: from}, grpc.ForceCodec(rawWatchCodec{}))
		if err != nil {
			conn.Close()
			return nil, err
		}
		a.setConn(conn)
		return stream, nil
	}
	stream, err := dial()
	if err != nil {
		return fmt.Errorf("%s: watch: %w", a.name, err)
	}
	go func() {
		var m rawMsg
		for {
			for {
				if err := stream.RecvMsg(&m); err != nil {
					break
				}
				now := time.Now().UnixNano()
				rev, err := watchEventRevision(m.b)
				if err != nil {
					break
				}
				a.mu.Lock()
				a.rev = rev
				a.recv[rev] = now
				a.mu.Unlock()
			}
			a.mu.Lock()
			stopped := a.stopped
			a.mu.Unlock()
			if ctx.Err() != nil || stopped {
				return
			}
			for {
				var err error
				if stream, err = dial(); err == nil {
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

// cpProcess is the control plane under measurement.
type cpProcess struct {
	cmd      *exec.Cmd
	command  []string
	env      []string
	addr     string
	stateDir string
	socket   string
	exited   chan struct{}

	mu      sync.Mutex
	commits []commit
	tail    []string // last lines of its log, for errors
	changed chan struct{}
}

// commit is one peer-set change as the control plane logged it.
type commit struct {
	rev   uint64
	node  string
	state string
	at    int64 // unix ns
}

func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startControlPlane(cfg ControlPlaneConfig, simDir, policyPath string, measurement []byte) (*cpProcess, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	cp := &cpProcess{command: cfg.Command, env: cfg.Env, addr: addr, stateDir: filepath.Join(cfg.Dir, "state"),
		socket: filepath.Join(cfg.Dir, "admin.sock"), exited: make(chan struct{}), changed: make(chan struct{})}
	args := append(append([]string(nil), cfg.Command[1:]...), "controlplane",
		"--policy", policyPath, "--state-dir", cp.stateDir, "--listen", addr, "--admin-socket", cp.socket,
		"--metrics-listen", "", "--cluster-cidr", "10.0.0.0/12", "--node-prefix-len", "28",
		"--sweep-interval", "1h", "--sim-dir", simDir, "--sim-name", "bench-cp", "--sim-measurement", fmt.Sprintf("%x", measurement),
		// Every simulated agent dials from 127.0.0.1, where a cluster's
		// nodes each have their own address: the per-source limit is
		// raised to its maximum to measure the joins themselves.
		"--source-rate", "10000", "--source-burst", "100000",
		"--log-format", "json", "--log-level", "debug")
	cp.cmd = exec.Command(cfg.Command[0], args...)
	cp.cmd.Env = cfg.Env
	stderr, err := cp.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cp.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	go cp.readLog(stderr)
	return cp, nil
}

// readLog collects the commit records of the control plane's JSON log.
func (cp *cpProcess) readLog(r io.Reader) {
	defer func() {
		_ = cp.cmd.Wait()
		close(cp.exited)
	}()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	commitMsg := []byte(strconv.Quote(controlplane.CommitLogMessage))
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.Contains(line, commitMsg) {
			cp.mu.Lock()
			cp.tail = append(cp.tail, string(line))
			if len(cp.tail) > 20 {
				cp.tail = cp.tail[1:]
			}
			cp.mu.Unlock()
			continue
		}
		var rec struct {
			Time     time.Time `json:"time"`
			Revision uint64    `json:"revision"`
			Node     string    `json:"node"`
			State    string    `json:"state"`
		}
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		cp.mu.Lock()
		cp.commits = append(cp.commits, commit{rev: rec.Revision, node: rec.Node, state: rec.State, at: rec.Time.UnixNano()})
		close(cp.changed)
		cp.changed = make(chan struct{})
		cp.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

func (cp *cpProcess) commitCount() int {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return len(cp.commits)
}

func (cp *cpProcess) lastRevision() uint64 {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	var rev uint64
	for _, c := range cp.commits {
		rev = max(rev, c.rev)
	}
	return rev
}

// waitCommits waits until the log has shown n commits and returns them.
func (cp *cpProcess) waitCommits(ctx context.Context, n int) ([]commit, error) {
	timeout := time.After(2 * time.Minute)
	for {
		cp.mu.Lock()
		if len(cp.commits) >= n {
			out := append([]commit(nil), cp.commits...)
			cp.mu.Unlock()
			return out, nil
		}
		changed := cp.changed
		cp.mu.Unlock()
		select {
		case <-changed:
		case <-cp.exited:
			return nil, cp.withLog(errors.New("control plane exited"))
		case <-timeout:
			return nil, cp.withLog(fmt.Errorf("the control plane logged %d commits, want %d", cp.commitCount(), n))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (cp *cpProcess) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", cp.addr, time.Second)
		if err == nil {
			c.Close()
			if _, err := os.Stat(cp.socket); err == nil {
				return nil
			}
		}
		select {
		case <-cp.exited:
			return cp.withLog(errors.New("control plane exited before serving"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return cp.withLog(fmt.Errorf("control plane not serving on %s after %s", cp.addr, timeout))
		}
	}
}

// revoke runs `confmesh nodes revoke NAME` against the control plane.
func (cp *cpProcess) revoke(ctx context.Context, name string) error {
	args := append(append([]string(nil), cp.command[1:]...), "nodes", "revoke", name,
		"--admin-socket", cp.socket, "--admin-dir", filepath.Join(cp.stateDir, "admin"))
	cmd := exec.CommandContext(ctx, cp.command[0], args...)
	cmd.Env = cp.env
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nodes revoke %s: %v: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// cpu is the control plane's user + system CPU time so far.
func (cp *cpProcess) cpu() (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cp.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// parseStatCPU reads utime + stime (fields 14 and 15) from /proc/PID/stat.
func parseStatCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("/proc/PID/stat: no command field")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("/proc/PID/stat: too few fields")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/PID/stat: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// rss is the control plane's resident and peak resident memory in MiB.
func (cp *cpProcess) rss() (float64, float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cp.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	rss, err1 := statusKiB(data, "VmRSS:")
	hwm, err2 := statusKiB(data, "VmHWM:")
	return rss / 1024, hwm / 1024, errors.Join(err1, err2)
}

func statusKiB(data []byte, field string) (float64, error) {
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")))
			return float64(kb), err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/PID/status", field)
}

func (cp *cpProcess) withLog(err error) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if len(cp.tail) == 0 {
		return err
	}
	return fmt.Errorf("%w\ncontrol plane log (last lines):\n%s", err, strings.Join(cp.tail, "\n"))
}

// stop ends the control plane (SIGTERM, then SIGKILL after 10 s).
func (cp *cpProcess) stop() {
	_ = cp.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-cp.exited:
	case <-time.After(10 * time.Second):
		_ = cp.cmd.Process.Kill()
		<-cp.exited
	}
}
