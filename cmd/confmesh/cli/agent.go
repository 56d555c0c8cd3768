package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/workload"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/connlimit"
	"github.com/confmesh/confmesh/internal/datapath"
	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Agent defaults.
const (
	defaultAgentStateDir = "/var/lib/confmesh/agent"
	defaultAgentSocket   = "/run/confmesh/agent.sock"
)

type agentFlags struct {
	name, controlPlane, policy, stateDir, endpoint, device, clusterCIDR, socket string
	metricsListen, logFormat, logLevel, workloadSocket, podMetadata             string
	kubeconfig, uninstallDaemonSet                                              string
	cniBinDir, cniConfDir, cniBinary                                            string
	datapathMemoryLimit                                                         string
	listenPort, underlayMTU                                                     int
	strict, forceUserspace, externalDatapath                                    bool
	keyRotation, livenessTimeout, workloadIdleTimeout                           time.Duration
	workloadMaxConnsPerCaller, workloadMaxConns                                 int
	simDir, simName, simMeasurement, simTEE                                     string
	simDebug                                                                    bool
	simVMPL                                                                     uint32
	tdxColl                                                                     tdxCollateralFlags
	simImage                                                                    simImageFlags
	flags                                                                       *pflag.FlagSet
}

func newAgentCmd() *cobra.Command { return newAgentCmdFlags(new(agentFlags)) }

// newAgentCmdFlags builds the agent command parsing into f (tests read it).
func newAgentCmdFlags(f *agentFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "run the node agent: strict rules, WireGuard device, attested join, peer verification",
		Long: `The node agent installs the strict fail-closed nftables rules first, brings up
the WireGuard device (kernel when available, else the userspace datapath as a
separate process), verifies the control plane's attestation, joins, and then
configures a peer only after verifying that peer's evidence under its own
--policy. Its local API (for the CNI plugin and 'confmesh status') is a unix
socket. The device, the datapath and the rules survive agent restarts;
'confmesh agent cleanup' removes them.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return untilSignal(cmd, func(ctx context.Context, hup <-chan os.Signal) error {
				return runAgent(ctx, cmd.ErrOrStderr(), *f, hup)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "node `NAME` (RFC 1123); required")
	fl.StringVar(&f.controlPlane, "control-plane", "", "control plane agent endpoint `HOST:PORT`, or several replicas' comma-separated (HOST:PORT,HOST:PORT): every call starts at the replica that worked last and moves on while one is unavailable, verifying each replica's own evidence; required")
	fl.StringVar(&f.policy, "policy", "", "attestation policy `FILE` this agent applies to the control plane and every peer; required")
	fl.StringVar(&f.stateDir, "state-dir", defaultAgentStateDir, "`DIR` for keys (0600) and pod records")
	fl.StringVar(&f.endpoint, "endpoint", "", "this node's underlay `IP:PORT` peers send WireGuard to; required")
	fl.StringVar(&f.device, "device", agent.DefaultDevice, "WireGuard device `NAME`")
	fl.IntVar(&f.listenPort, "listen-port", agent.DefaultListenPort, "WireGuard UDP `PORT`")
	fl.IntVar(&f.underlayMTU, "underlay-mtu", agent.DefaultUnderlayMTU, "underlay MTU; the device, pods and routes get this minus 60 (IPv4 --endpoint) or 80 (IPv6) (0: the MTU of the interface holding --endpoint's address)")
	fl.StringVar(&f.clusterCIDR, "cluster-cidr", agent.DefaultClusterCIDR, "cluster pod `CIDR` (strict mode covers it from the first instant)")
	fl.BoolVar(&f.strict, "strict", true, "strict fail-closed nftables rules (never turn off in production)")
	fl.BoolVar(&f.forceUserspace, "force-userspace", false, "skip kernel WireGuard and use the userspace datapath")
	fl.BoolVar(&f.externalDatapath, "external-datapath", false, "the userspace datapath runs elsewhere (a sidecar container): wait for its socket instead of starting one")
	fl.StringVar(&f.datapathMemoryLimit, "datapath-memory-limit", "", "the started datapath's --memory-limit (e.g. 256MiB, off); empty: the datapath's default")
	fl.DurationVar(&f.keyRotation, "key-rotation", 24*time.Hour, "rotate the WireGuard key on this period through a re-attested renewal (0: never)")
	fl.StringVar(&f.socket, "socket", defaultAgentSocket, "local API unix socket `PATH` (CNI plugin, confmesh status)")
	fl.StringVar(&f.cniBinDir, "cni-bin-dir", agent.DefaultCNIBinDir, "`DIR` the confmesh-cni plugin is installed into once the node is attested")
	fl.StringVar(&f.cniConfDir, "cni-conf-dir", agent.DefaultCNIConfDir, "`DIR` the conflist is written into once the node is attested (empty: install nothing)")
	fl.StringVar(&f.cniBinary, "cni-binary", "", "confmesh-cni binary `PATH` to install (default: confmesh-cni next to this binary, if present)")
	fl.StringVar(&f.workloadSocket, "workload-socket", agent.DefaultWorkloadSocket, "SPIFFE Workload API unix socket `PATH` for the pods (empty: off)")
	fl.StringVar(&f.podMetadata, "pod-metadata", agent.DefaultPodMetadata, "where each pod's service account comes from: "+podMetadataKubernetes+" (the API server: the pods on node --name) or a standalone `FILE` that it and its directories must be writable by root only; a pod the source does not know gets no workload identity")
	fl.StringVar(&f.uninstallDaemonSet, "uninstall-daemonset", "", "with --pod-metadata="+podMetadataKubernetes+": `NAMESPACE/NAME` of this agent's DaemonSet; when it is deleted (confmesh uninstalled, not restarted), the stopping agent removes its rules, routes, device, CNI plugin and state from the node")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "with --pod-metadata="+podMetadataKubernetes+": kubeconfig `FILE` (empty: the in-cluster service account)")
	fl.StringVar(&f.metricsListen, "metrics-listen", "127.0.0.1:9465", "`ADDR` for /metrics, /healthz, /readyz (empty: off)")
	fl.DurationVar(&f.livenessTimeout, "liveness-timeout", agent.DefaultLivenessTimeout, "/healthz fails once a degraded state (strict mode, datapath, peers, file descriptors) has lasted this long without healing, so the kubelet restarts the agent (0: never)")
	fl.IntVar(&f.workloadMaxConnsPerCaller, "workload-max-conns-per-caller", workload.DefaultMaxConnsPerCaller, "most Workload API connections one caller (a pod's network namespace; in the host namespace, a uid) may hold open; more are refused at accept (-1: no cap)")
	fl.IntVar(&f.workloadMaxConns, "workload-max-conns", workload.DefaultMaxConns, fmt.Sprintf("most Workload API connections all callers together may hold open, and never more than %v of the agent's RLIMIT_NOFILE (-1: no cap but that share)", workload.DefaultFDShare))
	fl.DurationVar(&f.workloadIdleTimeout, "workload-idle-timeout", workload.DefaultIdleTimeout, "close Workload API connections with no RPC in progress for this long (an open FetchX509SVID stream is in progress; -1s: never)")
	fl.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.StringVar(&f.simDir, "sim-dir", "", "run on the SIMULATED TEE whose CA is in `DIR`; development and CI only")
	fl.StringVar(&f.simTEE, "sim-tee", "", "simulated TEE a new CA in --sim-dir is for: sim-snp (default) or sim-tdx; an existing CA decides by itself")
	fl.StringVar(&f.simName, "sim-name", "", "simulated node name under DIR/nodes (default: --name)")
	fl.StringVar(&f.simMeasurement, "sim-measurement", "", "simulated launch measurement, 96 `HEX` digits")
	fl.BoolVar(&f.simDebug, "sim-debug", false, "simulated guest has the debug policy bit set (a rogue node)")
	fl.Uint32Var(&f.simVMPL, "sim-vmpl", 0, "simulated VMPL")
	f.simImage.add(fl)
	f.flags = fl
	f.tdxColl.add(fl)
	for _, req := range []string{"name", "control-plane", "policy", "endpoint"} {
		_ = cmd.MarkFlagRequired(req)
	}
	cmd.AddCommand(newAgentCleanupCmd())
	return cmd
}

func runAgent(ctx context.Context, stderr io.Writer, f agentFlags, hup <-chan os.Signal) error {
	log := newLogger(stderr, f.logFormat, f.logLevel)
	pol, err := attest.LoadPolicy(f.policy)
	if err != nil {
		return failf("agent: %v", err)
	}
	cps, err := cpclient.ParseAddrs(f.controlPlane)
	if err != nil {
		return usageErrorf("--control-plane %q: %v", f.controlPlane, err)
	}
	ep, err := netip.ParseAddrPort(f.endpoint)
	if err != nil {
		return usageErrorf("--endpoint %q: want IP:PORT: %v", f.endpoint, err)
	}
	cluster, err := netip.ParsePrefix(f.clusterCIDR)
	if err != nil {
		return usageErrorf("--cluster-cidr %q: %v", f.clusterCIDR, err)
	}
	if f.datapathMemoryLimit != "" {
		if _, err := datapath.ParseSize(f.datapathMemoryLimit); err != nil {
			return usageErrorf("--datapath-memory-limit: %v", err)
		}
	}
	if f.underlayMTU == 0 {
		if f.underlayMTU, err = agent.InterfaceMTU(ep.Addr()); err != nil {
			return failf("agent: --underlay-mtu=0: %v", err)
		}
		log.Info("underlay MTU derived from the endpoint's interface", "mtu", f.underlayMTU, "device mtu", f.underlayMTU-agent.Overhead(ep))
	}
	prov, err := openAgentProvider(f, log)
	if err != nil {
		return err
	}
	tdxColl, err := f.tdxColl.source(f.stateDir, log)
	if err != nil {
		return err
	}
	pods, err := openPodMetadata(ctx, f, log)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return failf("agent: locate own binary for the datapath: %v", err)
	}
	a, err := agent.New(agent.Config{
		NodeName: f.name, ControlPlanes: cps, Policy: pol, Provider: prov, StateDir: f.stateDir, TDXCollateral: tdxColl,
		Endpoint: ep, Device: f.device, ListenPort: f.listenPort, UnderlayMTU: f.underlayMTU, ClusterCIDR: cluster,
		StrictMode: f.strict, KeyRotation: f.keyRotation, ForceUserspace: f.forceUserspace, Logger: log, WorkloadSocket: f.workloadSocket,
		PodMetadata: pods.source,
		CNIBinDir:   f.cniBinDir, CNIConfDir: f.cniConfDir, CNIBinary: cniBinary(f.cniBinary, self), CNIAgentSocket: f.socket,
		DatapathCommand: datapathCommand(f, self),
		LivenessTimeout: livenessTimeout(f.livenessTimeout),
		WorkloadLimits: workload.Limits{
			MaxConnsPerCaller: f.workloadMaxConnsPerCaller, MaxConns: f.workloadMaxConns, IdleTimeout: f.workloadIdleTimeout,
		},
	})
	if err != nil {
		return failf("agent: %v", err)
	}
	errc := make(chan error, 3)
	go func() { errc <- a.ServeLocal(ctx, f.socket) }()
	if f.metricsListen != "" {
		lis, err := net.Listen("tcp", f.metricsListen)
		if err != nil {
			return failf("agent: metrics listener: %v", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.Metrics(), promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if ok, reason := a.Live(); !ok {
				http.Error(w, reason, http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
			if ok, reason := a.Ready(); !ok {
				http.Error(w, reason, http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
			WriteTimeout: 30 * time.Second, IdleTimeout: metricsIdleTimeout}
		go func() { <-ctx.Done(); srv.Close() }()
		go func() {
			if err := srv.Serve(connlimit.New(lis, connlimit.Config{Total: metricsMaxConns})); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	ran := make(chan struct{})
	go func() { errc <- a.Run(ctx); close(ran) }()
	go reloadAgentPolicy(ctx, log, f.policy, a, hup)
	select {
	case <-ctx.Done():
		if pods.uninstall != nil && pods.uninstall.Confirm(context.Background()) {
			// Let Run stop first (its strict-mode keeper would put the
			// rules back), but not for long: the kubelet's grace period
			// runs.
			select {
			case <-ran:
			case <-time.After(3 * time.Second):
			}
			log.Warn("the agent's DaemonSet was deleted: confmesh is being uninstalled; removing the strict rules, routes, device, CNI plugin and state from this node")
			if err := uninstallNode(f); err != nil {
				return failf("agent: uninstall: %v", err)
			}
			return nil
		}
		log.Info("agent stopping; the device, datapath and strict rules stay in place")
		return nil
	case err := <-errc:
		if ctx.Err() != nil {
			return nil
		}
		return failf("agent: %v", err)
	}
}

// Bounds of the agent's metrics listener (kubelet probes and a scraper
// need a handful of connections).
const (
	metricsMaxConns    = 64
	metricsIdleTimeout = time.Minute
)

// livenessTimeout maps the flag to agent.Config.LivenessTimeout: 0 means
// never, which the Config spells negative.
func livenessTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// reloadAgentPolicy re-reads the policy on SIGHUP or when the file changes;
// an invalid file is logged and the policy in force stays.
func reloadAgentPolicy(ctx context.Context, log *slog.Logger, path string, a *agent.Agent, hup <-chan os.Signal) {
	stamp := func() string {
		st, err := os.Stat(path)
		if err != nil {
			return ""
		}
		return fmt.Sprint(st.ModTime().UnixNano(), st.Size())
	}
	last := stamp()
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		case <-t.C:
			if s := stamp(); s == last {
				continue
			}
		}
		last = stamp()
		p, err := attest.LoadPolicy(path)
		if err == nil {
			err = a.SetPolicy(p)
		}
		if err != nil {
			log.Error("policy reload refused; the policy in force stays", "file", path, "err", err)
		}
	}
}

func openAgentProvider(f agentFlags, log *slog.Logger) (attest.Provider, error) {
	if f.simDir == "" {
		if f.flags != nil && f.simImage.tee(f.flags) != "" {
			return nil, usageErrorf("--sim-ovmf/--sim-tdvf and their flags configure the simulated TEE and need --sim-dir")
		}
		p, err := NewHardwareProvider()
		if err != nil {
			return nil, failf("agent: cannot attest: %v (development and CI only: --sim-dir)", err)
		}
		return p, nil
	}
	var m []byte
	var rtmrs [][]byte
	if f.simMeasurement != "" {
		var err error
		if m, err = parseHexFlag("sim-measurement", f.simMeasurement, 48); err != nil {
			return nil, err
		}
	}
	name := f.simName
	if name == "" {
		name = f.name
	}
	switch f.simTEE {
	case "", attest.TEESimSnp, attest.TEESimTDX:
	default:
		return nil, usageErrorf("--sim-tee %q: want %s or %s", f.simTEE, attest.TEESimSnp, attest.TEESimTDX)
	}
	tee := f.simTEE
	if img := f.simImage.tee(f.flags); img != "" {
		if tee != "" && tee != img {
			return nil, usageErrorf("--sim-tee %s, but the image flags describe a %s node", tee, img)
		}
		tee = img
		var err error
		if m, rtmrs, err = f.simImage.measurement(f.flags, img, m, "sim-measurement"); err != nil {
			return nil, err
		}
	}
	n, root, err := openSimTEE(simTEEConfig{dir: f.simDir, tee: tee, name: name, measurement: m, rtmrs: rtmrs, debug: f.simDebug, vmpl: f.simVMPL})
	if err != nil {
		return nil, failf("agent: --sim-dir: %v", err)
	}
	log.Warn("!!! THIS NODE RUNS ON A SIMULATED TEE: its evidence proves nothing about hardware; development and CI only !!!",
		"tee", n.TEE(), "root", root, "node", name, "measurement", fmt.Sprintf("%x", m), "debug", f.simDebug)
	return n, nil
}

func newAgentCleanupCmd() *cobra.Command {
	var device, table, stateDir string
	cmd := &cobra.Command{
		Use:   "cleanup",
		Short: "remove what the agent leaves in place: strict rules and routes, WireGuard device, datapath",
		Long: `Removes the strict nftables table and the fail-closed routes (pod traffic to
other nodes is then no longer forced through WireGuard), stops the userspace
datapath and deletes the WireGuard device. Run it only when uninstalling confmesh from the node.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if err := netfilter.Remove(table); err != nil {
				errs = append(errs, fmt.Errorf("strict rules: %w", err))
			}
			if err := agent.RemoveFailClosedRoutes(); err != nil {
				errs = append(errs, fmt.Errorf("fail-closed routes: %w", err))
			}
			if err := agent.RemoveDevice(device, filepath.Join(stateDir, "datapath.pid")); err != nil {
				errs = append(errs, fmt.Errorf("device: %w", err))
			}
			if err := errors.Join(errs...); err != nil {
				return failf("cleanup: %v", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed table %s and device %s\n", table, device)
			return nil
		},
	}
	cmd.Flags().StringVar(&device, "device", agent.DefaultDevice, "WireGuard device `NAME`")
	cmd.Flags().StringVar(&table, "table", agent.DefaultTable, "nftables `TABLE`")
	cmd.Flags().StringVar(&stateDir, "state-dir", defaultAgentStateDir, "agent state `DIR` (holds datapath.pid)")
	return cmd
}

// cniBinary is the plugin to install: the flag, else confmesh-cni beside
// this binary when it exists, else nothing (already in the CNI bin dir).
func cniBinary(flag, self string) string {
	if flag != "" {
		return flag
	}
	p := filepath.Join(filepath.Dir(self), "confmesh-cni")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}

// untilSignal runs a daemon until SIGINT or SIGTERM ends ctx; SIGHUP is
// delivered on hup (policy reload).
func untilSignal(cmd *cobra.Command, run func(ctx context.Context, hup <-chan os.Signal) error) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	return run(ctx, hup)
}

// datapathCommand is how the agent starts the userspace datapath, or nil
// when a sidecar runs it (--external-datapath).
func datapathCommand(f agentFlags, self string) []string {
	if f.externalDatapath {
		return nil
	}
	ep, _ := netip.ParseAddrPort(f.endpoint) // checked by runAgent; an invalid one counts as IPv6 (80)
	argv := []string{self, "datapath", "--iface", f.device, "--mtu", fmt.Sprint(f.underlayMTU - agent.Overhead(ep)),
		"--pid-file", filepath.Join(f.stateDir, "datapath.pid")}
	if f.datapathMemoryLimit != "" {
		argv = append(argv, "--memory-limit", f.datapathMemoryLimit)
	}
	if strings.EqualFold(f.logLevel, "debug") {
		// wireguard-go's own messages (handshakes sent, received,
		// retried) are what a tunnel problem is diagnosed from.
		argv = append(argv, "--log-level", "debug")
	}
	return argv
}
