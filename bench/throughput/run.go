//go:build linux

package throughput

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/netlab"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Variant names, in the order of the first round.
const (
	Plaintext   = "plaintext"
	WireGuardGo = "wireguard_go"
	Confmesh    = "confmesh"
)

// Variants are the three paths every run measures.
var Variants = []string{Plaintext, WireGuardGo, Confmesh}

// ConfmeshFromNode is a diagnostic path (Config.Diagnose): from node 1's
// own namespace to the pod on node 2, through the same datapaths but
// without the sending pod's veth and the forwarding hop.
const ConfmeshFromNode = "confmesh_from_node"

// ConfmeshToNode is a diagnostic path (Config.Diagnose): from the pod on
// node 1 to node 2's own tunnel address (its pod gateway), so the
// receiving node delivers locally instead of forwarding to a pod.
const ConfmeshToNode = "confmesh_to_node"

// DatapathNoAgent is a diagnostic path (Config.Diagnose): `confmesh
// datapath` in place of stock wireguard-go in the stock topology
// (configured the same way, with wgctrl, no agent, no pods).
const DatapathNoAgent = "datapath_no_agent"

// Runs names the bench's lab runs: "cmtp-<run ID>-<cluster>", a lock in
// /run/cmtp while a bench runs (netlab.Runs.Sweep removes only the
// leftovers of ended runs).
var Runs = netlab.Runs{NamePrefix: "cmtp-", LockDir: "/run/cmtp", ClusterIDWidth: 1}

// Addresses outside the cluster's nodes, all on the underlay's
// 198.18.0.0/24 except the stock tunnel's inside addresses.
var (
	plainA, plainB = netip.MustParseAddr("198.18.0.101"), netip.MustParseAddr("198.18.0.102")
	wgUnderA       = netip.MustParseAddr("198.18.0.111")
	wgUnderB       = netip.MustParseAddr("198.18.0.112")
	wgInA, wgInB   = netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2")
	diagUnderA     = netip.MustParseAddr("198.18.0.121")
	diagUnderB     = netip.MustParseAddr("198.18.0.122")
	diagInA        = netip.MustParseAddr("198.19.1.1")
	diagInB        = netip.MustParseAddr("198.19.1.2")
)

// stockMTU is what wg-quick gives a stock wireguard-go device on a
// 1500-byte underlay (1500 - 80), and wireguard-go's own default.
const stockMTU = 1420

// Config is one run's shape.
type Config struct {
	Bin      string // confmesh binary (agents, control plane, datapaths)
	CNIBin   string // confmesh-cni
	WGBin    string // stock wireguard-go built from the pinned module
	Duration time.Duration
	Streams  int
	Rounds   int
	// RRDuration bounds each latency measurement (0: min(Duration, 2s)).
	RRDuration time.Duration
	Generator  Generator
	// IdleWait is how long, after the loads, to watch the confmesh
	// datapaths give memory back (0: not measured).
	IdleWait time.Duration
	// Diagnose adds the ConfmeshFromNode path to the rounds.
	Diagnose bool
	// Logf receives progress lines; nil: none.
	Logf func(format string, args ...any)
}

// VariantResult is one path's figures.
type VariantResult struct {
	Gbps1       Summary `json:"gbps_1_stream"`
	GbpsS       Summary `json:"gbps_s_streams"`
	CPUSPerGB   float64 `json:"cpu_s_per_gb"`
	RRP50us     Summary `json:"rr_p50_us"`
	RRP99us     Summary `json:"rr_p99_us"`
	TunnelProcs int     `json:"tunnel_processes"`
	cpu, gb     float64
}

// Result is a run's outcome; Flat turns it into the documented JSON keys.
type Result struct {
	Datapath   string                    `json:"datapath"`
	Generator  string                    `json:"load_generator"`
	Duration   time.Duration             `json:"-"`
	Streams    int                       `json:"streams"`
	Rounds     int                       `json:"rounds"`
	CPUs       int                       `json:"cpus"`
	Variants   map[string]*VariantResult `json:"variants"`
	Orders     [][]string                `json:"round_orders"`
	Datapaths  []Memory                  `json:"confmesh_datapaths_memory"`
	IdleRSS    []float64                 `json:"confmesh_datapaths_idle_rss_mib,omitempty"`
	IdleAfter  float64                   `json:"idle_after_s,omitempty"`
	StockWG    []Memory                  `json:"wireguard_go_memory"`
	Agents     []Memory                  `json:"agents_memory"`
	CP         Memory                    `json:"controlplane_memory"`
	LoadBefore float64                   `json:"loadavg_1m_before"`
	LoadAfter  float64                   `json:"loadavg_1m_after"`
	Started    time.Time                 `json:"started"`
	Elapsed    time.Duration             `json:"-"`
}

func (c *Config) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Run builds the lab (a control plane, two attested nodes with a
// plugin-made pod each, two plaintext hosts and two stock wireguard-go
// hosts on the same underlay bridge), measures, and removes everything it
// created, also when it fails or ctx is cancelled.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	if cfg.Streams < 1 || cfg.Rounds < 1 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("streams %d, rounds %d, duration %s: all must be positive", cfg.Streams, cfg.Rounds, cfg.Duration)
	}
	if cfg.Generator == nil {
		cfg.Generator = GoGenerator{}
	}
	if cfg.RRDuration <= 0 {
		cfg.RRDuration = min(cfg.Duration, 2*time.Second)
	}
	for _, b := range []string{cfg.Bin, cfg.CNIBin, cfg.WGBin} {
		if st, err := os.Stat(b); err != nil || st.IsDir() {
			return nil, fmt.Errorf("binary %q: not a file", b)
		}
	}
	if err := netlab.CheckHost(); err != nil {
		return nil, err
	}
	run, err := Runs.Start()
	if err != nil {
		return nil, err
	}
	defer run.Release()
	if removed, errs := Runs.Sweep(run); len(removed) > 0 || len(errs) > 0 {
		cfg.logf("removed leftovers of ended bench runs: %v %v", removed, errors.Join(errs...))
	}
	dir, err := run.TempDir("state")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	prefix, err := run.NextClusterPrefix()
	if err != nil {
		return nil, err
	}
	c := netlab.NewCluster(netlab.Config{Prefix: prefix, Dir: dir, Bin: cfg.Bin, CNIBin: cfg.CNIBin, OwnProcessGroup: true})
	defer func() {
		if terrs := c.Teardown(); len(terrs) > 0 {
			err = errors.Join(err, fmt.Errorf("teardown: %w", errors.Join(terrs...)))
		}
	}()
	res = &Result{Datapath: "userspace: wireguard-go over TUN for both tunnels (confmesh agents report datapath=userspace; no kernel WireGuard)",
		Generator: cfg.Generator.Name(), Duration: cfg.Duration, Streams: cfg.Streams, Rounds: cfg.Rounds,
		CPUs: runtime.NumCPU(), Variants: map[string]*VariantResult{}, LoadBefore: LoadAvg(), Started: time.Now().UTC()}
	start := time.Now()
	cfg.logf("lab %s: control plane, 2 attested nodes, 2 pods (confmesh-cni), plaintext and stock wireguard-go hosts", prefix)
	paths, procs, err := setup(ctx, c, cfg, dir)
	if err != nil {
		return nil, err
	}
	if err := measure(ctx, cfg, paths, res); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("interrupted (%v) during: %w", context.Cause(ctx), err)
		}
		return nil, err
	}
	for _, pid := range procs.datapaths {
		m, err := ReadMemory(pid)
		if err != nil {
			return nil, fmt.Errorf("confmesh datapath memory: %w", err)
		}
		res.Datapaths = append(res.Datapaths, m)
	}
	for _, pid := range procs.stock {
		if m, err := ReadMemory(pid); err == nil {
			res.StockWG = append(res.StockWG, m)
		}
	}
	for _, pid := range procs.agents {
		if m, err := ReadMemory(pid); err == nil {
			res.Agents = append(res.Agents, m)
		}
	}
	if m, err := ReadMemory(procs.cp); err == nil {
		res.CP = m
	}
	if cfg.IdleWait > 0 {
		cfg.logf("watching the confmesh datapaths' memory while idle (up to %s)", cfg.IdleWait)
		res.IdleRSS, res.IdleAfter = idleRSS(ctx, procs.datapaths, res.Datapaths, cfg.IdleWait)
	}
	res.LoadAfter = LoadAvg()
	res.Elapsed = time.Since(start)
	return res, nil
}

type procs struct {
	datapaths, stock, agents []int
	cp                       int
}

func setup(ctx context.Context, c *netlab.Cluster, cfg Config, dir string) (map[string]Path, procs, error) {
	var pr procs
	if err := c.Start(netlab.Options{Nodes: 2}); err != nil {
		return nil, pr, fmt.Errorf("confmesh cluster: %w", err)
	}
	nodes := c.Nodes()
	var pods []*netlab.Pod
	for _, n := range nodes {
		p, err := c.AddCNIPod(n, netlab.PodSpec{})
		if err != nil {
			return nil, pr, err
		}
		pods = append(pods, p)
		pid, err := n.DatapathPID()
		if err != nil {
			return nil, pr, fmt.Errorf("%s datapath: %w", n.Name, err)
		}
		pr.datapaths = append(pr.datapaths, pid)
		st, err := n.Status()
		if err != nil {
			return nil, pr, fmt.Errorf("%s status: %w", n.Name, err)
		}
		if st.Datapath != "userspace" {
			// The lab forces the userspace datapath; anything else would
			// make the comparison with stock wireguard-go meaningless.
			return nil, pr, fmt.Errorf("%s runs the %q datapath, want userspace", n.Name, st.Datapath)
		}
		pr.agents = append(pr.agents, n.Agent().PID())
	}
	pr.cp = c.CP.Process().PID()
	if err := ctx.Err(); err != nil {
		return nil, pr, err
	}
	pa, err := c.AddUnderlayHost("pa", "pa", plainA)
	if err != nil {
		return nil, pr, err
	}
	pb, err := c.AddUnderlayHost("pb", "pb", plainB)
	if err != nil {
		return nil, pr, err
	}
	wa, wb, pids, err := stockWireGuard(c, dir, "w", wgUnderA, wgUnderB, wgInA, wgInB, cfg.WGBin, "-f")
	if err != nil {
		return nil, pr, fmt.Errorf("stock wireguard-go: %w", err)
	}
	pr.stock = pids
	if err := sameSession(append(slices.Clone(pr.datapaths), pr.stock...)); err != nil {
		return nil, pr, err
	}
	paths := map[string]Path{}
	if cfg.Diagnose {
		da, db, dpids, err := stockWireGuard(c, dir, "d", diagUnderA, diagUnderB, diagInA, diagInB, cfg.Bin, "datapath", "--iface")
		if err != nil {
			return nil, pr, fmt.Errorf("datapath without agent: %w", err)
		}
		paths[DatapathNoAgent] = Path{Variant: DatapathNoAgent, From: da, ToNS: db, To: diagInB, PIDs: dpids}
	}
	for k, v := range map[string]Path{
		ConfmeshToNode:   {Variant: ConfmeshToNode, From: pods[0].NS, ToNS: nodes[1].NS, To: agent.Gateway(nodes[1].PodCIDR), PIDs: pr.datapaths},
		ConfmeshFromNode: {Variant: ConfmeshFromNode, From: nodes[0].NS, ToNS: pods[1].NS, To: pods[1].IP, PIDs: pr.datapaths},
		Plaintext:        {Variant: Plaintext, From: pa, ToNS: pb, To: plainB},
		WireGuardGo:      {Variant: WireGuardGo, From: wa, ToNS: wb, To: wgInB, PIDs: pids},
		Confmesh:         {Variant: Confmesh, From: pods[0].NS, ToNS: pods[1].NS, To: pods[1].IP, PIDs: pr.datapaths},
	} {
		paths[k] = v
	}
	return paths, pr, nil
}

// stockWireGuard starts two upstream wireguard-go daemons (foreground,
// default settings) on two underlay hosts and configures them with wgctrl
// as peers of each other, with the tunnel addresses wgInA and wgInB and
// the MTU wg-quick would give them.
func stockWireGuard(c *netlab.Cluster, dir, tag string, underA, underB, inA, inB netip.Addr, argv ...string) (a, b string, pids []int, err error) {
	type end struct {
		ns, dev string
		under   netip.Addr
		in      netip.Addr
		key     wgtypes.Key
	}
	ends := []*end{{under: underA, in: inA}, {under: underB, in: inB}}
	for i, e := range ends {
		suffix := fmt.Sprintf("%s%d", tag, i+1)
		e.dev = c.Prefix + suffix
		if e.ns, err = c.AddUnderlayHost(suffix, suffix, e.under); err != nil {
			return "", "", nil, err
		}
		if e.key, err = wgtypes.GeneratePrivateKey(); err != nil {
			return "", "", nil, err
		}
		p, err := c.StartProcess(argv[0]+" "+e.dev, filepath.Join(dir, e.dev+".log"), e.ns, append(slices.Clone(argv), e.dev)...)
		if err != nil {
			return "", "", nil, err
		}
		pids = append(pids, p.PID())
		sock := filepath.Join(netlab.WireGuardSocketDir, e.dev+".sock")
		err = netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
			if done, werr := p.Exited(); done {
				return netlab.Permanent(fmt.Errorf("exited: %v: %s", werr, netlab.Tail(p.Log, 10)))
			}
			_, err := os.Stat(sock)
			return err
		})
		if err != nil {
			return "", "", nil, fmt.Errorf("%s: %w", e.dev, err)
		}
	}
	port := netlab.WireGuardPort
	for i, e := range ends {
		o := ends[1-i]
		conf := wgtypes.Config{PrivateKey: &e.key, ListenPort: &port, ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
			PublicKey: o.key.PublicKey(), Endpoint: net.UDPAddrFromAddrPort(netip.AddrPortFrom(o.under, uint16(port))),
			ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{{IP: o.in.AsSlice(), Mask: net.CIDRMask(32, 32)}},
		}}}
		err := netlab.InNS(e.ns, func() error {
			wc, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer wc.Close()
			return wc.ConfigureDevice(e.dev, conf)
		})
		if err != nil {
			return "", "", nil, fmt.Errorf("wgctrl %s: %w", e.dev, err)
		}
		for _, args := range [][]string{
			{"addr", "add", netip.PrefixFrom(e.in, 24).String(), "dev", e.dev},
			{"link", "set", e.dev, "mtu", fmt.Sprint(stockMTU), "up"},
		} {
			if err := netlab.IPIn(e.ns, args...); err != nil {
				return "", "", nil, err
			}
		}
	}
	return ends[0].ns, ends[1].ns, pids, nil
}

// measure runs the rounds: in round r the variants go in Variants order
// rotated by r; each gets a 1-stream load, an S-stream load and a latency
// measurement. A short latency probe on every path first checks it works
// (and completes the tunnels' handshakes).
func measure(ctx context.Context, cfg Config, paths map[string]Path, res *Result) error {
	port := 5201
	variants := Variants
	if cfg.Diagnose {
		variants = append(slices.Clone(Variants), ConfmeshFromNode, ConfmeshToNode, DatapathNoAgent)
	}
	for _, v := range variants {
		if _, err := RoundTrips(ctx, paths[v], port, 300*time.Millisecond, 100); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		res.Variants[v] = &VariantResult{TunnelProcs: len(paths[v].PIDs)}
	}
	g1 := map[string][]float64{}
	gS := map[string][]float64{}
	p50 := map[string][]float64{}
	p99 := map[string][]float64{}
	for r := range cfg.Rounds {
		order := make([]string, len(variants))
		for i := range variants {
			order[i] = variants[(i+r)%len(variants)]
		}
		res.Orders = append(res.Orders, order)
		for _, v := range order {
			p, vr := paths[v], res.Variants[v]
			for _, s := range []int{1, cfg.Streams} {
				l, err := cfg.Generator.Streams(ctx, p, port, s, cfg.Duration)
				if err != nil {
					return fmt.Errorf("round %d: %w", r+1, err)
				}
				if s == 1 {
					g1[v] = append(g1[v], l.Gbps())
				} else {
					gS[v] = append(gS[v], l.Gbps())
				}
				vr.cpu += l.CPU
				vr.gb += float64(l.Bytes) / 1e9
				cfg.logf("round %d/%d %-12s %d stream(s): %6.2f Gbit/s, tunnel CPU %.2f s", r+1, cfg.Rounds, v, s, l.Gbps(), l.CPU)
			}
			trips, err := RoundTrips(ctx, p, port, cfg.RRDuration, 100000)
			if err != nil {
				return fmt.Errorf("round %d: %w", r+1, err)
			}
			p50[v] = append(p50[v], float64(Percentile(trips, 0.50))/1e3)
			p99[v] = append(p99[v], float64(Percentile(trips, 0.99))/1e3)
			cfg.logf("round %d/%d %-12s round trips: p50 %.0f us p99 %.0f us (%d)", r+1, cfg.Rounds, v, p50[v][r], p99[v][r], len(trips))
		}
	}
	for _, v := range variants {
		vr := res.Variants[v]
		vr.Gbps1, vr.GbpsS = Summarize(g1[v]), Summarize(gS[v])
		vr.RRP50us, vr.RRP99us = Summarize(p50[v]), Summarize(p99[v])
		if vr.gb > 0 {
			vr.CPUSPerGB = round3(vr.cpu / vr.gb)
		}
	}
	return nil
}

// idleRSS samples the datapaths' resident memory every half second for up
// to wait and returns the last sample once each has fallen to half of what
// it was right after the loads (or 32 MiB), with the seconds that took.
func idleRSS(ctx context.Context, pids []int, after []Memory, wait time.Duration) ([]float64, float64) {
	start := time.Now()
	rss := make([]float64, len(pids))
	for {
		done := true
		for i, pid := range pids {
			m, err := ReadMemory(pid)
			if err != nil {
				return nil, 0
			}
			rss[i] = m.RSS
			if m.RSS > after[i].RSS/2 && m.RSS > 32 {
				done = false
			}
		}
		if done || time.Since(start) >= wait || sleepCtx(ctx, 500*time.Millisecond) != nil {
			return rss, round3(time.Since(start).Seconds())
		}
	}
}

// sameSession checks that the tunnel processes compared share one session.
// Where processes run in the root cgroup, the kernel's autogroup scheduler
// gives every session a CPU share of its own; a tunnel in a session apart
// from the loads it carries is scheduled differently from one inside, which
// alone moved the ratio by 0.1 to 0.2 on this bench's machine
// (docs/benchmarks.md, tuning log).
func sameSession(pids []int) error {
	first := -1
	for _, pid := range pids {
		sid, err := unix.Getsid(pid)
		if err != nil {
			return fmt.Errorf("session of tunnel process %d: %w", pid, err)
		}
		if first == -1 {
			first = sid
		} else if sid != first {
			return fmt.Errorf("tunnel processes %v run in different sessions (%d, %d): the kernel would schedule them differently and the comparison would not be fair", pids, first, sid)
		}
	}
	return nil
}
