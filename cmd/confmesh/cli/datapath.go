package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/internal/datapath"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
)

func newDatapathCmd() *cobra.Command {
	var cfg datapath.Config
	var level, memLimit, cpuProfile, metricsListen string
	cmd := &cobra.Command{
		Use:   "datapath --iface NAME [--mtu N] [--pid-file FILE] [--log-level LEVEL]",
		Short: "Run the userspace WireGuard datapath (wireguard-go over TUN) for one device",
		Long: `Create the TUN device NAME with wireguard-go and serve its UAPI socket
` + datapath.DefaultSocketDir + `/NAME.sock until SIGINT or SIGTERM, then remove both and
exit 0. The agent starts it (or runs it as a sidecar) when the kernel has no
WireGuard module, and configures it through wgctrl like a kernel device; the
datapath itself holds no confmesh logic and keeps forwarding across agent
restarts.

It refuses to start while another datapath serves NAME's socket, and removes
a stale socket left by one that died. The socket directory is wireguard-go's
fixed default, so every device name on a host (across network namespaces)
must be unique.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(level)); err != nil {
				return usageErrorf("--log-level %q: want debug, info, warn or error", level)
			}
			if memLimit != "" {
				n, err := datapath.ParseSize(memLimit)
				if err != nil {
					return usageErrorf("--memory-limit: %v", err)
				}
				cfg.MemoryLimit = n
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			if cpuProfile == "" {
				cpuProfile = os.Getenv(cpuProfileEnv)
			}
			if cpuProfile != "" {
				stopProfile, err := startCPUProfile(cpuProfile + "." + cfg.Iface)
				if err != nil {
					return failf("--cpuprofile: %v", err)
				}
				defer stopProfile()
			}
			if metricsListen == "" {
				metricsListen = os.Getenv(datapathMetricsEnv)
			}
			if metricsListen != "" {
				stopMetrics, err := serveDatapathMetrics(metricsListen, cfg.Logger)
				if err != nil {
					return failf("--metrics-listen: %v", err)
				}
				defer stopMetrics()
			}
			// The agent starts the datapath in a process group of its own
			// inside the agent's session (internal/wg): a hangup of that
			// session must not end the tunnels.
			signal.Ignore(syscall.SIGHUP)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := datapath.Run(ctx, cfg)
			switch {
			case errors.Is(err, datapath.ErrInvalidConfig):
				return usageErrorf("%v", err)
			case err != nil:
				return failf("datapath: %v", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfg.Iface, "iface", "", "WireGuard device name (required)")
	cmd.Flags().IntVar(&cfg.MTU, "mtu", datapath.DefaultMTU, "device MTU (underlay MTU - 80)")
	cmd.Flags().StringVar(&cfg.PIDFile, "pid-file", "", "write the process ID here while running")
	cmd.Flags().StringVar(&memLimit, "memory-limit", "", fmt.Sprintf("Go soft memory `limit` (e.g. 256MiB; 0 or off: none); default GOMEMLIMIT when set, else %dMiB", datapath.DefaultMemoryLimit>>20))
	cmd.Flags().IntVar(&cfg.MaxInflight, "max-inflight", datapath.DefaultMaxInflight, "packets the datapath holds at most in each direction between reading them (TUN device, UDP socket) and writing them out (negative: no bound)")
	cmd.Flags().IntVar(&cfg.Procs, "gomaxprocs", 0, "Go's GOMAXPROCS (0: $GOMAXPROCS when set, else half of Go's default, at least 1; negative: Go's default)")
	cmd.Flags().DurationVar(&cfg.IdleRelease, "idle-release", datapath.DefaultIdleRelease, "check this often for idleness and then return free memory to the kernel (negative: never)")
	cmd.Flags().StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile to `FILE`.<iface> until exit (default: $"+cpuProfileEnv+", which reaches a datapath the agent starts)")
	cmd.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error (debug includes wireguard-go's per-packet lines)")
	cmd.Flags().StringVar(&metricsListen, "metrics-listen", "", "`ADDR` for /metrics with the Go runtime's and the process's figures (goroutines, memory; plain HTTP; default: $"+datapathMetricsEnv+", which reaches a datapath the agent starts; empty: off)")
	_ = cmd.MarkFlagRequired("iface")
	return cmd
}

// cpuProfileEnv names the environment variable that turns on
// --cpuprofile for a datapath started by the agent (it inherits the
// agent's environment): a profiling aid, see docs/benchmarks.md.
const cpuProfileEnv = "CONFMESH_DATAPATH_CPUPROFILE"

// datapathMetricsEnv names the environment variable that turns on
// --metrics-listen for a datapath started by the agent (confmesh bench
// soak reads its goroutines there).
const datapathMetricsEnv = "CONFMESH_DATAPATH_METRICS_LISTEN"

// serveDatapathMetrics serves the Go runtime's and the process's metrics
// on addr until the returned function is called.
func serveDatapathMetrics(addr string, log *slog.Logger) (func(), error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	return func() { _ = srv.Close() }, nil
}

func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
