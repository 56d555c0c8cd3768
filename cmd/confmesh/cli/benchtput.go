//go:build linux

package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/bench/throughput"
	"github.com/spf13/cobra"
)

type benchThroughputFlags struct {
	output, plot, markdown, results, machine, wgBin, plugin, generator string
	duration, idleWait                                                 time.Duration
	streams, rounds                                                    int
	quiet, diagnose                                                    bool
}

func newBenchThroughputCmd() *cobra.Command {
	var f benchThroughputFlags
	cmd := &cobra.Command{
		Use:   "throughput [--duration 5s] [--streams 4] [--rounds 4] [-o text|json] [--plot FILE.png]",
		Short: "Measure TCP throughput, CPU per GB and latency: plaintext, stock wireguard-go and confmesh in one run",
		Long: `Build a lab in network namespaces on this machine and measure three paths
side by side:

  plaintext     two hosts on the underlay bridge, no tunnel;
  wireguard_go  the upstream wireguard-go daemon (built from the module
                version confmesh pins: --wireguard-go, default next to this
                binary) on two hosts, configured with wgctrl, no confmesh;
  confmesh      two pods made by confmesh-cni on two attested nodes (control
                plane, agents on the simulated TEE, strict mode on), through
                the agents' userspace datapaths.

There is no kernel WireGuard here: both tunnels are wireguard-go over TUN,
and the output says so. Each round runs every path with 1 stream and with
--streams streams for --duration each, then a TCP request/response latency
measurement on one connection; the paths are interleaved round by round,
the order rotated every round, so background load hits them alike. Printed
are medians with min and max over --rounds, the CPU seconds per GB used by
the tunnel processes, and the resident memory of the confmesh datapaths,
agents and control plane right after the run.

The load comes from iperf3 when it is on PATH (whole seconds, at least 1),
else from a built-in Go generator (--generator go forces it). Names start
with cmtp-; everything is removed at the end, also on failure or Ctrl-C.
Needs root. docs/benchmarks.md explains the method and the figures.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runBenchThroughput(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.output, "output", "o", formatText, "output format: text or json")
	fl.DurationVar(&f.duration, "duration", 5*time.Second, "length of each load")
	fl.IntVar(&f.streams, "streams", 4, "parallel TCP streams of the multi-stream load (at least 2)")
	fl.DurationVar(&f.idleWait, "idle-wait", 15*time.Second, "after the loads, watch the confmesh datapaths return memory for up to this long (0: skip)")
	fl.IntVar(&f.rounds, "rounds", 4, "rounds (each runs every path once)")
	fl.StringVar(&f.plot, "plot", "", "also draw the figures into this PNG `FILE`")
	fl.StringVar(&f.markdown, "markdown", "", "also write a markdown table to `FILE`")
	resultsFlag(cmd, &f.results, "throughput")
	fl.StringVar(&f.machine, "machine", "", "a description of the machine for the markdown file (default: host, CPUs, memory, kernel)")
	fl.StringVar(&f.wgBin, "wireguard-go", "", "stock wireguard-go binary `PATH` (default: next to this binary, then PATH)")
	fl.StringVar(&f.plugin, "plugin", "", "confmesh-cni binary `PATH` (default: next to this binary, then PATH)")
	fl.StringVar(&f.generator, "generator", "auto", "load generator: auto (iperf3 when on PATH), iperf3 or go")
	fl.BoolVar(&f.diagnose, "diagnose", false, "also measure from node 1's namespace to the pod on node 2 (confmesh_from_node: no sending pod hop)")
	fl.BoolVarP(&f.quiet, "quiet", "q", false, "no progress lines on stderr")
	return cmd
}

func runBenchThroughput(cmd *cobra.Command, f benchThroughputFlags) error {
	if err := checkFormat(f.output); err != nil {
		return err
	}
	switch {
	case f.duration <= 0:
		return usageErrorf("--duration must be positive, got %s", f.duration)
	case f.streams < 2:
		return usageErrorf("--streams must be at least 2, got %d", f.streams)
	case f.rounds < 1:
		return usageErrorf("--rounds must be at least 1, got %d", f.rounds)
	}
	var gen throughput.Generator
	switch f.generator {
	case "go":
		gen = throughput.GoGenerator{}
	case "auto", "iperf3":
		ip, err := throughput.FindIperf3()
		switch {
		case err == nil:
			gen = ip
		case f.generator == "iperf3":
			return usageErrorf("--generator iperf3: %v (Debian: apt-get install iperf3)", err)
		default:
			gen = throughput.GoGenerator{}
		}
	default:
		return usageErrorf("--generator %q: want auto, iperf3 or go", f.generator)
	}
	if os.Geteuid() != 0 {
		return failf("bench throughput needs root: it creates network namespaces, TUN devices and nftables rules")
	}
	self, err := os.Executable()
	if err != nil {
		return failf("locate this binary: %v", err)
	}
	plugin, err := findCNIPlugin(f.plugin)
	if err != nil {
		return usageErrorf("%v", err)
	}
	wgBin, err := findWireGuardGo(f.wgBin, self)
	if err != nil {
		return usageErrorf("%v", err)
	}
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := throughput.Config{Bin: self, CNIBin: plugin, WGBin: wgBin, Duration: f.duration, Streams: f.streams,
		Rounds: f.rounds, Generator: gen, IdleWait: f.idleWait, Diagnose: f.diagnose}
	if !f.quiet {
		cfg.Logf = func(format string, args ...any) { fmt.Fprintf(cmd.ErrOrStderr(), format+"\n", args...) }
	}
	res, err := throughput.Run(ctx, cfg)
	if err != nil {
		return failf("bench throughput: %v", err)
	}
	if f.plot != "" {
		if err := res.WritePlot(f.plot); err != nil {
			return failf("plot %s: %v", f.plot, err)
		}
	}
	if f.markdown != "" {
		mf, err := os.Create(f.markdown)
		if err != nil {
			return failf("%v", err)
		}
		machine := f.machine
		if machine == "" {
			machine = throughput.Machine()
		}
		res.WriteMarkdown(mf, machine)
		if err := mf.Close(); err != nil {
			return failf("%v", err)
		}
	}
	if err := storeResults(f.results, "throughput", res.Flat()); err != nil {
		return err
	}
	if f.output == formatJSON {
		return writeJSON(cmd.OutOrStdout(), res.Flat())
	}
	res.WriteText(cmd.OutOrStdout())
	return nil
}

// findWireGuardGo locates the stock wireguard-go: the flag, next to self,
// then PATH.
func findWireGuardGo(flag, self string) (string, error) {
	if flag != "" {
		if st, err := os.Stat(flag); err != nil || st.IsDir() {
			return "", fmt.Errorf("--wireguard-go %s: not an executable file", flag)
		}
		return filepath.Abs(flag)
	}
	p := filepath.Join(filepath.Dir(self), "wireguard-go")
	if st, err := os.Stat(p); err == nil && !st.IsDir() {
		return p, nil
	}
	if p, err := exec.LookPath("wireguard-go"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("stock wireguard-go not found next to this binary or on PATH: build it from the pinned module with 'go build -o bin/wireguard-go golang.zx2c4.com/wireguard' (make bench does), or pass --wireguard-go")
}
