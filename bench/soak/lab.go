//go:build linux

package soak

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
)

// Metrics addresses inside each namespace (every node and replica has its
// own, so one address serves for all).
const (
	agentMetrics    = "127.0.0.1:9465"
	datapathMetrics = "127.0.0.1:9466"
	cpMetrics       = "127.0.0.1:9464" // netlab's control-plane --metrics-listen
)

// DatapathMetricsEnv turns on the datapath's /metrics (the agents pass
// their environment on to the datapaths they start).
const DatapathMetricsEnv = "CONFMESH_DATAPATH_METRICS_LISTEN"

// Config says what a soak run does.
type Config struct {
	Bin, CNIBin string // confmesh and confmesh-cni
	Prefix, Dir string // the lab's name prefix and working directory
	Command     string // how it was started, for the report

	// ControlPlanes is ModeStandalone or ModeKubernetes (ResolveMode);
	// ModeKubernetes needs K8sTools (etcd, kube-apiserver) and RepoRoot
	// (manifests/base's CRDs and RBAC).
	ControlPlanes      string
	K8sTools, RepoRoot string

	Duration      time.Duration // events are scheduled within it
	Every         time.Duration // between scheduled events
	Settle        time.Duration // added to every event's window
	Nodes         int           // stable nodes (probe traffic runs among them)
	ProbeInterval time.Duration // per stream
	ChurnEvery    time.Duration // one pod ADD or DEL this often
	ChurnPods     int           // churned pods alive per stable node at most
	KeyRotation   time.Duration // the stable agents' --key-rotation
	SampleEvery   time.Duration // RSS and goroutine samples
	Bounds        Bounds
	Logf          func(format string, args ...any)
}

// lab is one soak run in progress.
type lab struct {
	cfg     Config
	cycle   []Kind
	c       *netlab.Cluster
	api     *kubetest.APIServer // ModeKubernetes's, until Run stops it
	stable  []*netlab.Node
	extras  []*netlab.Node // joined during the run, not yet left
	probes  []*probe
	t0      time.Time
	policyN int

	mu      sync.Mutex
	windows []Window
	events  []EventRecord
	procs   map[string]*Proc
	churn   Churn
	addMs   []float64
}

// Run builds the lab, runs the soak and tears the lab down (also when ctx
// ends early: then the error says so and the report covers what ran).
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.Nodes < 2 {
		return nil, fmt.Errorf("soak: at least 2 stable nodes are needed for probe traffic, got %d", cfg.Nodes)
	}
	if cfg.ProbeInterval <= 0 || cfg.ChurnEvery <= 0 || cfg.SampleEvery <= 0 || cfg.Settle < 0 || cfg.ChurnPods < 1 {
		return nil, errors.New("soak: probe interval, churn interval and sample interval must be positive, churn pods at least 1")
	}
	if cfg.ControlPlanes == "" {
		cfg.ControlPlanes = ModeStandalone
	}
	cycle, err := CycleFor(cfg.ControlPlanes)
	if err != nil {
		return nil, err
	}
	if cfg.ControlPlanes == ModeKubernetes && (cfg.K8sTools == "" || cfg.RepoRoot == "") {
		return nil, errors.New("soak: the kubernetes control-plane mode needs the tools directory and the repository root")
	}
	plan, err := Plan(cfg.Duration, cfg.Every, cfg.Settle, cycle)
	if err != nil {
		return nil, err
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if err := os.Setenv(DatapathMetricsEnv, datapathMetrics); err != nil {
		return nil, err
	}
	l := &lab{cfg: cfg, cycle: cycle, procs: map[string]*Proc{}}
	l.c = netlab.NewCluster(netlab.Config{Prefix: cfg.Prefix, Dir: cfg.Dir, Bin: cfg.Bin, CNIBin: cfg.CNIBin,
		OwnProcessGroup: true, AgentMetricsListen: agentMetrics, Logf: cfg.Logf})
	rep = &Report{Command: cfg.Command, CPUs: runtime.NumCPU(), LoadAvgStart: loadAvg(), StableNodes: cfg.Nodes, Replicas: ReplicasOf(cfg.ControlPlanes), ControlPlanes: cfg.ControlPlanes,
		ProbeIntervalMs: float64(cfg.ProbeInterval.Microseconds()) / 1000, SettleSeconds: cfg.Settle.Seconds(), Bounds: cfg.Bounds.String()}
	defer func() {
		// The API server goes first: the lab's teardown kills whatever
		// still runs in its namespaces as a leftover.
		l.stopAPI()
		for _, e := range l.c.Teardown() {
			rep.Failures = append(rep.Failures, "cleanup: "+e.Error())
		}
		rep.LoadAvgEnd = loadAvg()
	}()
	if err := l.start(); err != nil {
		return rep, err
	}
	rep.Streams = len(l.probes)
	runErr := l.run(ctx, plan)
	l.finish(rep)
	if runErr != nil {
		rep.Failures = append(rep.Failures, runErr.Error())
	}
	return rep, runErr
}

// start brings up the control plane, the stable nodes, a probe pod on each
// and the probe streams between every ordered pair of them.
func (l *lab) start() error {
	start := time.Now()
	opts := netlab.Options{}
	if l.cfg.ControlPlanes == ModeKubernetes {
		opts.ControlPlaneReplicas, opts.ControlPlaneSetup = ReplicasOf(ModeKubernetes), l.kubeSetup
	}
	if err := l.c.Start(opts); err != nil {
		return err
	}
	for range l.cfg.Nodes {
		n, err := l.c.AddNode(netlab.NodeOptions{KeyRotation: l.cfg.KeyRotation})
		if err != nil {
			return err
		}
		l.stable = append(l.stable, n)
	}
	for _, n := range l.stable {
		if err := n.WaitReady(); err != nil {
			return err
		}
	}
	if err := l.waitMesh(); err != nil {
		return err
	}
	var pods []*netlab.Pod
	for _, n := range l.stable {
		p, err := l.c.AddPod(n)
		if err != nil {
			return err
		}
		pods = append(pods, p)
	}
	for _, a := range pods {
		for _, b := range pods {
			if a != b {
				if err := netlab.SendUDP(a, b, netlab.RandomPayload("soak-warm-up", 16), 30*time.Second); err != nil {
					return fmt.Errorf("warm-up: %w", err)
				}
			}
		}
	}
	maxProbes := int((l.cfg.Duration+10*time.Minute)/l.cfg.ProbeInterval) + 1
	for _, a := range pods {
		for _, b := range pods {
			if a == b {
				continue
			}
			p, err := startProbe(a, b, l.cfg.ProbeInterval, maxProbes)
			if err != nil {
				return err
			}
			l.probes = append(l.probes, p)
		}
	}
	l.cfg.Logf("lab %s up in %s: %d control-plane replica(s) (%s), %d nodes, %d probe streams", l.c.Prefix, time.Since(start).Round(time.Millisecond),
		len(l.c.ControlPlanes()), l.cfg.ControlPlanes, len(l.stable), len(l.probes))
	return nil
}

// run samples, churns pods and runs the plan's events, then lets every
// extra node leave.
func (l *lab) run(ctx context.Context, plan []Event) error {
	l.t0 = time.Now()
	l.sample()
	bg, stopBG := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); l.sampleLoop(bg) }()
	go func() { defer wg.Done(); l.churnLoop(bg) }()
	defer func() { stopBG(); wg.Wait() }()

	var failed []string
	for _, ev := range plan {
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted after %s: %w", time.Since(l.t0).Round(time.Second), ctx.Err())
		case <-time.After(time.Until(l.t0.Add(ev.At))):
		}
		if err := l.do(ev.Kind); err != nil {
			failed = append(failed, fmt.Sprintf("%s at %s: %v", ev.Kind, time.Since(l.t0).Round(time.Second), err))
		}
	}
	for len(l.extras) > 0 && ctx.Err() == nil {
		if err := l.do(KindNodeLeave); err != nil {
			failed = append(failed, fmt.Sprintf("%s at the end: %v", KindNodeLeave, err))
			break
		}
	}
	select {
	case <-ctx.Done():
		return fmt.Errorf("interrupted after %s: %w", time.Since(l.t0).Round(time.Second), ctx.Err())
	case <-time.After(time.Until(l.t0.Add(l.cfg.Duration))):
	}
	stopBG()
	wg.Wait()
	l.sample()
	if len(failed) > 0 {
		return fmt.Errorf("%d events failed: %s", len(failed), strings.Join(failed, "; "))
	}
	return nil
}

// do runs one event, records it and its window, and waits out its settle
// time (so scheduled windows do not overlap one another).
func (l *lab) do(k Kind) error {
	start := time.Now()
	var detail string
	var err error
	switch k {
	case KindNodeJoin:
		detail, err = l.join()
	case KindNodeLeave:
		detail, err = l.leave()
	case KindControlPlane:
		detail, err = l.killControlPlane()
	case KindControlPlaneFailover:
		detail, err = l.failover()
	case KindPolicyReload:
		detail, err = l.reloadPolicy()
	default:
		err = fmt.Errorf("unknown event %q", k)
	}
	end := time.Now()
	rec := EventRecord{Kind: k, Start: start, TookMs: end.Sub(start).Milliseconds(), Detail: detail}
	if err != nil {
		rec.Error = err.Error()
	}
	l.mu.Lock()
	l.windows = append(l.windows, Window{Kind: k, Start: start, End: end.Add(l.cfg.Settle)})
	l.events = append(l.events, rec)
	l.mu.Unlock()
	l.cfg.Logf("%s: %s in %s %s", time.Since(l.t0).Round(time.Second), k, end.Sub(start).Round(time.Millisecond), map[bool]string{true: "FAILED: " + rec.Error, false: detail}[err != nil])
	time.Sleep(l.cfg.Settle) // the window's tail: its losses are the event's
	return err
}

// active is every node currently in the cluster.
func (l *lab) active() []*netlab.Node { return append(slices.Clone(l.stable), l.extras...) }

// waitMesh waits until every active node has exactly the others as peers,
// re-reading each node's key first (keys rotate during the run).
func (l *lab) waitMesh() error {
	var last error
	err := netlab.Eventually(2*netlab.MeshTimeout, 250*time.Millisecond, func() error {
		nodes := l.active()
		for _, n := range nodes {
			if err := n.WaitReady(); err != nil {
				return netlab.Permanent(err)
			}
		}
		for _, n := range nodes {
			if err := n.CheckPeers(netlab.Others(nodes, n)...); err != nil {
				last = err
				return err
			}
		}
		return nil
	})
	if err != nil && last != nil {
		return fmt.Errorf("no full mesh: %v", last)
	}
	return err
}

func (l *lab) join() (string, error) {
	n, err := l.c.AddNode(netlab.NodeOptions{})
	if err != nil {
		return "", err
	}
	if err := n.WaitReady(); err != nil {
		return n.Name, err
	}
	l.extras = append(l.extras, n)
	return n.Name, l.waitMesh()
}

// leave takes the oldest joined node out: agent stopped, `confmesh agent
// cleanup` on the node, `confmesh nodes remove` at the control plane, and
// every remaining node drops it.
func (l *lab) leave() (string, error) {
	if len(l.extras) == 0 {
		return "no joined node to leave", nil
	}
	n := l.extras[0]
	l.extras = l.extras[1:]
	if err := n.StopAgent(); err != nil {
		return n.Name, err
	}
	if out, err := netlab.Exec("ip", "netns", "exec", n.NS, l.c.Bin, "agent", "cleanup", "--device", n.Device, "--state-dir", n.StateDir); err != nil {
		return n.Name, fmt.Errorf("agent cleanup: %v: %s", err, out)
	}
	if out, err := l.c.CLI(append([]string{"nodes", "remove", n.Name}, l.c.AdminArgs()...)...); err != nil {
		return n.Name, fmt.Errorf("nodes remove: %v: %s", err, out)
	}
	return n.Name, l.waitMesh()
}

// killControlPlane SIGKILLs the control plane and starts it again; the
// agents must all be ready on it again.
func (l *lab) killControlPlane() (string, error) {
	cp := l.c.CP
	if err := cp.Kill(); err != nil {
		return cp.Name, err
	}
	if err := cp.Start(); err != nil {
		return cp.Name, err
	}
	return cp.Name + " SIGKILLed and restarted", l.waitMesh()
}

// reloadPolicy rewrites the policy the agents and the control plane share,
// alternating between one accepted measurement and two (both accept every
// node), and sends them SIGHUP.
func (l *lab) reloadPolicy() (string, error) {
	l.policyN++
	p := netlab.Policy{}
	if l.policyN%2 == 1 {
		p.Measurements = []string{netlab.ZeroMeasurement, netlab.OtherMeasurement}
	}
	path := l.stable[0].Policy
	if err := l.c.WritePolicy(path, p); err != nil {
		return "", err
	}
	var procs []*netlab.Process
	for _, cp := range l.c.ControlPlanes() {
		procs = append(procs, cp.Process())
	}
	for _, n := range l.active() {
		procs = append(procs, n.Agent())
	}
	for _, pr := range procs {
		if err := pr.Signal(syscall.SIGHUP); err != nil {
			return "", fmt.Errorf("SIGHUP %s: %w", pr.Name, err)
		}
	}
	return fmt.Sprintf("%d measurements, SIGHUP to %d processes", max(1, len(p.Measurements)), len(procs)), l.waitMesh()
}

// churnLoop adds and deletes pods on the stable nodes, one operation every
// ChurnEvery, keeping at most ChurnPods churned pods per node, until ctx
// ends; then it deletes what it made.
func (l *lab) churnLoop(ctx context.Context) {
	pods := make([][]*netlab.Pod, len(l.stable))
	t := time.NewTicker(l.cfg.ChurnEvery)
	defer t.Stop()
	fail := func(err error) {
		l.mu.Lock()
		l.churn.Failures++
		if len(l.churn.FirstErrors) < 10 {
			l.churn.FirstErrors = append(l.churn.FirstErrors, fmt.Sprintf("%s: %v", time.Since(l.t0).Round(time.Second), err))
		}
		l.mu.Unlock()
	}
	del := func(i int) {
		p := pods[i][0]
		pods[i] = pods[i][1:]
		if err := l.c.RemovePod(p); err != nil {
			fail(err)
			return
		}
		l.mu.Lock()
		l.churn.Dels++
		l.mu.Unlock()
	}
	for op := 0; ; op++ {
		select {
		case <-ctx.Done():
			for i := range pods {
				for len(pods[i]) > 0 {
					del(i)
				}
			}
			return
		case <-t.C:
		}
		i := op % len(l.stable)
		// Fill a node up to ChurnPods, then drain it, so pods live for a
		// while and every node sees ADDs and DELs.
		if (op/len(l.stable)/l.cfg.ChurnPods)%2 == 0 && len(pods[i]) < l.cfg.ChurnPods {
			start := time.Now()
			p, err := l.c.AddPod(l.stable[i])
			if err != nil {
				fail(err)
				continue
			}
			pods[i] = append(pods[i], p)
			l.mu.Lock()
			l.churn.Adds++
			l.addMs = append(l.addMs, float64(time.Since(start).Microseconds())/1000)
			l.mu.Unlock()
		} else if len(pods[i]) > 0 {
			del(i)
		}
	}
}

// finish stops the probes and fills the report: losses by event kind (key
// rotations read from the agents' logs), processes judged against the
// bounds, errors from every log, and any component that died.
func (l *lab) finish(rep *Report) {
	var streams []Stream
	for _, p := range l.probes {
		streams = append(streams, p.finish(time.Second))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	windows := slices.Clone(l.windows)
	for _, at := range l.rotations() {
		// The switch happens just before the agent logs it.
		windows = append(windows, Window{Kind: KindKeyRotation, Start: at.Add(-time.Second), End: at.Add(l.cfg.Settle)})
	}
	kinds := append([]Kind{KindNone}, append(slices.Clone(l.cycle), KindKeyRotation)...)
	rep.Loss = Attribute(streams, windows, l.cfg.ProbeInterval, kinds)
	for _, s := range streams {
		rep.ProbesSent += len(s.Sent)
		for _, lost := range s.Lost {
			if lost {
				rep.ProbesLost++
			}
		}
	}
	if !l.t0.IsZero() {
		rep.DurationSeconds = time.Since(l.t0).Seconds()
	}
	rep.Events = l.events
	rep.Churn = l.churn
	if len(l.addMs) > 0 {
		ms := slices.Sorted(slices.Values(l.addMs))
		rep.Churn.AddP50Ms = ms[len(ms)/2]
		rep.Churn.AddP99Ms = ms[min(len(ms)-1, len(ms)*99/100)]
	}
	for _, p := range l.procs {
		l.cfg.Bounds.Judge(p)
		if p.Problem != "" {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s %s (pid %d) grew beyond its bounds: %s", p.Component, p.Owner, p.PID, p.Problem))
		}
		rep.Processes = append(rep.Processes, *p)
	}
	slices.SortFunc(rep.Processes, func(a, b Proc) int {
		return strings.Compare(a.Component+"/"+a.Owner+fmt.Sprintf("/%09d", a.PID), b.Component+"/"+b.Owner+fmt.Sprintf("/%09d", b.PID))
	})
	for _, n := range l.stable {
		if done, err := n.Agent().Exited(); done {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s's agent died: %v", n.Name, err))
		}
	}
	for _, cp := range l.c.ControlPlanes() {
		if p := cp.Process(); p != nil {
			if done, err := p.Exited(); done {
				rep.Failures = append(rep.Failures, fmt.Sprintf("control plane %s died: %v", cp.Name, err))
			}
		}
	}
	var tally ErrorTally
	logs, _ := filepath.Glob(filepath.Join(l.c.Dir, "*.log"))
	dps, _ := filepath.Glob(filepath.Join(l.c.Dir, "n*", "datapath.log"))
	for _, f := range append(logs, dps...) {
		if fh, err := os.Open(f); err == nil {
			_ = tally.Scan(componentOf(f), fh)
			fh.Close()
		}
	}
	rep.ErrorsLogged = tally.Total
	rep.Errors = tally.Errors()
}

// rotations are the times the stable agents logged "WireGuard key rotated".
func (l *lab) rotations() []time.Time {
	var out []time.Time
	for _, n := range l.stable {
		logs, _ := filepath.Glob(filepath.Join(l.c.Dir, n.Name+"-agent-*.log"))
		for _, f := range logs {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			out = append(out, RotationTimes(string(data))...)
		}
	}
	return out
}

// componentOf names the component whose log path is f.
func componentOf(f string) string {
	base := filepath.Base(f)
	switch {
	case base == "datapath.log":
		return "datapath"
	case strings.HasPrefix(base, "controlplane"):
		return "controlplane"
	case strings.Contains(base, "-agent-"):
		return "agent"
	}
	return strings.TrimSuffix(base, ".log")
}

func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
