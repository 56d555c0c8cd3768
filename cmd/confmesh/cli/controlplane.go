package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/google/go-sev-guest/verify/trust"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// shutdownTimeout bounds the graceful stop of the HTTP server (the gRPC
// servers bound their own at 5 s).
const shutdownTimeout = 5 * time.Second

func newControlPlaneCmd() *cobra.Command {
	var configPath string
	fv := config.Default() // flag values; only the flags set on the command line are used
	var tdxColl tdxCollateralFlags
	cmd := &cobra.Command{
		Use:   "controlplane --policy FILE [flags]",
		Short: "Run the control plane: verify joins, run the SPIFFE CA, stream the peer set",
		Long: `Run the confmesh control plane until SIGINT or SIGTERM.

It verifies every joining node's attestation evidence against the policy,
runs the SPIFFE CA of the policy's trust domain, allocates a pod CIDR per
node and streams the verified peer set to the agents. Agents verify the
control plane's own evidence (bound to its TLS key) before they send
anything, so it must run in a TEE: real SEV-SNP, or with --sim-dir the
simulated TEE (development and CI only).

State: with --store=bolt (the default) a bbolt file in --state-dir, for
one control plane; with --store=kubernetes the Kubernetes API (confmesh.io
custom resources, a Secret and a Lease in --store-namespace; install
manifests/base/crds.yaml and rbac.yaml first), shared by any number of
replicas. Either way the admin credential is written to --state-dir.

Settings come from flags and an optional YAML config file (--config); a flag
given on the command line overrides the file. Config keys are the flag names
in lowerCamelCase (stateDir, svidTTL, clusterCIDR, simDir, ...); an unknown
key is an error. Relative paths in the file are relative to the file.

Listeners: agents on --listen (gRPC over TLS 1.3); the Admin service on the
unix socket --admin-socket (mTLS with the admin credential written to
<state-dir>/admin, used by 'confmesh nodes'); /metrics, /healthz and /readyz
on --metrics-listen (plain HTTP, empty disables).

The policy is reloaded on SIGHUP and whenever the file's modification time
or size changes (checked every 2 s). A policy that does not parse, names
another trust domain, names a root that cannot be loaded or whose
maxEvidenceAge is not longer than the renewal interval (half --svid-ttl) is
logged and refused; the previous policy stays in force. A policy that is
applied re-evaluates every node at once.

Exit codes: 0 clean shutdown; 1 the control plane could not start or failed
(invalid policy, no SEV-SNP device, state locked, address in use); 2 usage
error or an unreadable config or policy file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := resolveControlPlaneConfig(cmd.Flags(), configPath, &fv)
			if err != nil {
				return err
			}
			return untilSignal(cmd, func(ctx context.Context, hup <-chan os.Signal) error {
				return runControlPlane(ctx, cmd.ErrOrStderr(), cfg, &tdxColl, hup)
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configPath, "config", "", "YAML config `FILE`; flags given on the command line override it")
	fl.StringVar(&fv.Policy, "policy", "", "attestation policy `FILE` (required)")
	fl.StringVar(&fv.StateDir, "state-dir", fv.StateDir, "state `DIR`: state.db (bbolt) and the admin credential directory admin/")
	fl.StringVar(&fv.Store, "store", fv.Store, "where the state lives: `bolt` (state.db in --state-dir; one control plane) or kubernetes (the Kubernetes API; any number of replicas)")
	fl.StringVar(&fv.Kubeconfig, "kubeconfig", "", "kubeconfig `FILE` for --store=kubernetes (default: the in-cluster service account)")
	fl.StringVar(&fv.StoreNamespace, "store-namespace", fv.StoreNamespace, "`NAMESPACE` of the kubernetes store's Secret (CA and JWT keys) and leader Lease")
	fl.StringVar(&fv.Listen, "listen", fv.Listen, "agents' TCP `ADDR` (host:port)")
	fl.StringVar(&fv.AdminSocket, "admin-socket", fv.AdminSocket, "Admin service unix socket `PATH` (mode 0600; a stale file is removed)")
	fl.StringVar(&fv.MetricsListen, "metrics-listen", fv.MetricsListen, "`ADDR` for /metrics, /healthz and /readyz (plain HTTP; empty disables)")
	fl.StringVar(&fv.ClusterCIDR, "cluster-cidr", fv.ClusterCIDR, "pod network `CIDR`; each node gets a slice of it")
	fl.IntVar(&fv.NodePrefixLen, "node-prefix-len", fv.NodePrefixLen, "prefix `LEN`gth of each node's pod CIDR")
	fl.Uint32Var(&fv.MTUHint, "mtu-hint", fv.MTUHint, "MTU sent to agents for the WireGuard device and pod routes (underlay MTU - 80)")
	fl.DurationVar((*time.Duration)(&fv.SVIDTTL), "svid-ttl", time.Duration(fv.SVIDTTL), "node SVID lifetime; agents renew (re-attest) at half of it")
	fl.DurationVar((*time.Duration)(&fv.WorkloadTTL), "workload-ttl", time.Duration(fv.WorkloadTTL), "workload SVID lifetime")
	fl.DurationVar((*time.Duration)(&fv.SweepInterval), "sweep-interval", time.Duration(fv.SweepInterval), "how often every node is re-evaluated under the policy")
	fl.Float64Var(&fv.SourceRate, "source-rate", fv.SourceRate, "Challenge and Join calls per second allowed per source (node identity, else client IP or IPv6 /64)")
	fl.IntVar(&fv.SourceBurst, "source-burst", fv.SourceBurst, "burst of Challenge and Join calls allowed per source")
	fl.DurationVar((*time.Duration)(&fv.HandshakeTimeout), "handshake-timeout", time.Duration(fv.HandshakeTimeout), "agent connections: close one whose TLS and HTTP/2 handshakes take longer")
	fl.DurationVar((*time.Duration)(&fv.UnauthenticatedIdleTimeout), "unauthenticated-idle-timeout", time.Duration(fv.UnauthenticatedIdleTimeout), "agent connections: close one that has carried no call with a valid node SVID once no call has started on it for this long (agents' Watch connections are exempt)")
	fl.IntVar(&fv.MaxConnsPerSource, "max-conns-per-source", fv.MaxConnsPerSource, "agent connections from one source (IPv4 address, IPv6 /64); more are refused at accept")
	fl.IntVar(&fv.MaxConns, "max-conns", fv.MaxConns, "agent connections in all; more are refused at accept")
	fl.IntVar(&fv.MaxUnauthenticatedConns, "max-unauthenticated-conns", fv.MaxUnauthenticatedConns, "agent connections that have not carried a call with a valid node SVID; when full, a source holding fewer displaces the heaviest source's oldest")
	fl.IntVar(&fv.MaxConcurrentStreams, "max-concurrent-streams", fv.MaxConcurrentStreams, "calls in flight on one agent connection")
	fl.DurationVar((*time.Duration)(&fv.KeepaliveTime), "keepalive-time", time.Duration(fv.KeepaliveTime), "ping an agent connection silent for this long")
	fl.DurationVar((*time.Duration)(&fv.KeepaliveTimeout), "keepalive-timeout", time.Duration(fv.KeepaliveTimeout), "close an agent connection whose ping is not answered within this")
	fl.DurationVar((*time.Duration)(&fv.KeepaliveMinTime), "keepalive-min-time", time.Duration(fv.KeepaliveMinTime), "disconnect a client that pings more often than this")
	fl.IntVar(&fv.MetricsMaxConns, "metrics-max-conns", fv.MetricsMaxConns, "connections to --metrics-listen in all; more are refused at accept")
	fl.IntVar(&fv.MetricsMaxConnsPerSource, "metrics-max-conns-per-source", fv.MetricsMaxConnsPerSource, "connections to --metrics-listen from one source")
	fl.StringSliceVar(&fv.DNSNames, "dns-name", nil, "DNS `NAME` for the serving certificate (repeatable)")
	fl.StringSliceVar(&fv.IPs, "ip", nil, "IP `ADDRESS` for the serving certificate (repeatable)")
	fl.StringVar(&fv.SimDir, "sim-dir", "", "run on the SIMULATED TEE whose CA is in `DIR` (created when empty); development only")
	fl.StringVar(&fv.SimName, "sim-name", fv.SimName, "simulated node `NAME` the control plane runs as (keeps its chip ID and VCEK under DIR/nodes/NAME)")
	fl.StringVar(&fv.SimMeasurement, "sim-measurement", "", "simulated launch measurement, 96 `HEX` digits (default all zero)")
	fl.BoolVar(&fv.SimDebug, "sim-debug", false, "simulated guest has the debug policy bit set")
	tdxColl.add(fl) // flags only: not in the config file
	fl.StringVar(&fv.KDSCache, "kds-cache", "", "fetch VCEKs that evidence does not carry from AMD's key distribution service, cached in `DIR` (off by default)")
	fl.StringVar(&fv.LogFormat, "log-format", fv.LogFormat, "log format: json or text")
	fl.StringVar(&fv.LogLevel, "log-level", fv.LogLevel, "log level: debug, info, warn or error")
	return cmd
}

// resolveControlPlaneConfig layers the flags given on the command line over
// the config file (or the defaults) and validates the result.
func resolveControlPlaneConfig(fs *pflag.FlagSet, configPath string, fv *config.Config) (config.Config, error) {
	cfg := config.Default()
	if configPath != "" {
		var err error
		if cfg, err = config.Load(configPath); err != nil {
			return cfg, usageErrorf("--config: %v", err)
		}
	}
	fs.Visit(func(f *pflag.Flag) { applyFlag(&cfg, fv, f.Name) })
	if err := cfg.Validate(); err != nil {
		return cfg, usageErrorf("%v", err)
	}
	return cfg, nil
}

// applyFlag copies the setting of flag name from src to dst.
func applyFlag(dst, src *config.Config, name string) {
	switch name {
	case "policy":
		dst.Policy = src.Policy
	case "state-dir":
		dst.StateDir = src.StateDir
	case "store":
		dst.Store = src.Store
	case "kubeconfig":
		dst.Kubeconfig = src.Kubeconfig
	case "store-namespace":
		dst.StoreNamespace = src.StoreNamespace
	case "listen":
		dst.Listen = src.Listen
	case "admin-socket":
		dst.AdminSocket = src.AdminSocket
	case "metrics-listen":
		dst.MetricsListen = src.MetricsListen
	case "cluster-cidr":
		dst.ClusterCIDR = src.ClusterCIDR
	case "node-prefix-len":
		dst.NodePrefixLen = src.NodePrefixLen
	case "mtu-hint":
		dst.MTUHint = src.MTUHint
	case "svid-ttl":
		dst.SVIDTTL = src.SVIDTTL
	case "workload-ttl":
		dst.WorkloadTTL = src.WorkloadTTL
	case "sweep-interval":
		dst.SweepInterval = src.SweepInterval
	case "source-rate":
		dst.SourceRate = src.SourceRate
	case "source-burst":
		dst.SourceBurst = src.SourceBurst
	case "handshake-timeout":
		dst.HandshakeTimeout = src.HandshakeTimeout
	case "unauthenticated-idle-timeout":
		dst.UnauthenticatedIdleTimeout = src.UnauthenticatedIdleTimeout
	case "max-conns-per-source":
		dst.MaxConnsPerSource = src.MaxConnsPerSource
	case "max-conns":
		dst.MaxConns = src.MaxConns
	case "max-unauthenticated-conns":
		dst.MaxUnauthenticatedConns = src.MaxUnauthenticatedConns
	case "max-concurrent-streams":
		dst.MaxConcurrentStreams = src.MaxConcurrentStreams
	case "keepalive-time":
		dst.KeepaliveTime = src.KeepaliveTime
	case "keepalive-timeout":
		dst.KeepaliveTimeout = src.KeepaliveTimeout
	case "keepalive-min-time":
		dst.KeepaliveMinTime = src.KeepaliveMinTime
	case "metrics-max-conns":
		dst.MetricsMaxConns = src.MetricsMaxConns
	case "metrics-max-conns-per-source":
		dst.MetricsMaxConnsPerSource = src.MetricsMaxConnsPerSource
	case "dns-name":
		dst.DNSNames = src.DNSNames
	case "ip":
		dst.IPs = src.IPs
	case "sim-dir":
		dst.SimDir = src.SimDir
	case "sim-name":
		dst.SimName = src.SimName
	case "sim-measurement":
		dst.SimMeasurement = src.SimMeasurement
	case "sim-debug":
		dst.SimDebug = src.SimDebug
	case "kds-cache":
		dst.KDSCache = src.KDSCache
	case "log-format":
		dst.LogFormat = src.LogFormat
	case "log-level":
		dst.LogLevel = src.LogLevel
	}
}

func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

var discardLog = slog.New(slog.DiscardHandler)

// checkPolicyFor refuses a policy the control plane must not run with:
// roots that cannot be loaded, or evidence that expires before the agents
// renew it (every node would be rejected by the sweep before renewing).
// td, when not zero, must be the policy's trust domain.
func checkPolicyFor(p *attest.Policy, td spiffeid.TrustDomain, svidTTL time.Duration) error {
	if !td.IsZero() && p.TrustDomain != td.String() {
		return fmt.Errorf("trustDomain %q differs from the running %q (the CA and every SVID belong to it); restart with a new state dir to change it", p.TrustDomain, td)
	}
	if _, err := attest.NewVerifier(p, attest.Options{Logger: discardLog}); err != nil {
		return err
	}
	if renew := svidTTL / 2; time.Duration(p.MaxEvidenceAge) <= renew {
		return fmt.Errorf("maxEvidenceAge %s is not longer than the renewal interval %s (half of --svid-ttl %s): the sweep would reject every node before it renews",
			time.Duration(p.MaxEvidenceAge), renew, svidTTL)
	}
	return nil
}

// selfCheck verifies evidence from the control plane's own TEE under p's
// control-plane policy (ForControlPlane), bound to throwaway keys (fetching
// a missing VCEK with fetcher, if set). It fails when agents applying the
// same policy would refuse this control plane (no controlPlane.measurements,
// measurement not listed, simulated root not named, debug guest...).
func selfCheck(prov attest.Provider, p *attest.Policy, fetcher trust.HTTPSGetter) error {
	p, err := p.ForControlPlane()
	if err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(p.TrustDomain)
	if err != nil {
		return err
	}
	now := time.Now()
	ch, err := attest.NewChallenge(now)
	if err != nil {
		return err
	}
	key := make([]byte, attest.KeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	b := attest.Binding{Purpose: attest.PurposeControlPlane, Challenge: ch, IdentityKeyHash: attest.KeyHash(key), Name: identity.ControlPlaneID(td).String(), Key: key}
	ev, err := attest.Attest(prov, b, now)
	if err != nil {
		return err
	}
	v, err := attest.NewVerifier(p, attest.Options{Logger: discardLog, Fetcher: fetcher})
	if err != nil {
		return err
	}
	_, err = v.Verify(ev, attest.Expect{Purpose: b.Purpose, Key: b.Key, IdentityKeyHash: b.IdentityKeyHash, Name: b.Name, Challenge: ch})
	if err != nil {
		return fmt.Errorf("%s: %w", attest.Reason(err), err)
	}
	return nil
}

// openProvider opens the TEE the control plane runs in.
func openProvider(cfg *config.Config, log *slog.Logger) (attest.Provider, error) {
	if cfg.SimDir == "" {
		p, err := NewHardwareProvider()
		if err != nil {
			return nil, failf("controlplane: cannot attest: %v (development and CI only: the simulated TEE proves nothing about hardware)", err)
		}
		return p, nil
	}
	m, _ := cfg.SimMeasurementBytes() // validated
	n, root, err := openSimTEE(simTEEConfig{dir: cfg.SimDir, name: cfg.SimName, measurement: m, debug: cfg.SimDebug})
	if err != nil {
		return nil, failf("controlplane: --sim-dir: %v", err)
	}
	log.Warn("!!! THE CONTROL PLANE RUNS ON A SIMULATED TEE: its evidence proves nothing about hardware; agents accept it only if their policy names the simulated root; never use this in production !!!",
		"tee", n.TEE(), "root", root, "node", cfg.SimName, "measurement", fmt.Sprintf("%x", m), "debug", cfg.SimDebug)
	return n, nil
}

// listenAdmin creates the admin socket: the parent directory if missing, a
// stale socket file removed (but not a live one, nor anything that is not a
// socket), mode 0600.
func listenAdmin(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s: the path exists and is not a socket; not removing it", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s: another process is serving on it (another control plane?)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("admin socket %s: remove stale socket: %w", path, err)
		}
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return lis, nil
}

// openStore opens the store --store names: the bbolt file in the state
// directory, or the Kubernetes API (the CRDs must be installed).
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (store.Store, error) {
	if cfg.Store != config.StoreKubernetes {
		st, err := store.OpenBolt(cfg.StatePath())
		if err != nil {
			return nil, failf("controlplane: %v", err)
		}
		return st, nil
	}
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		if rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig); err != nil {
			return nil, failf("controlplane: --kubeconfig %s: %v", cfg.Kubeconfig, err)
		}
	} else if rc, err = rest.InClusterConfig(); err != nil {
		return nil, failf("controlplane: --store=kubernetes: no --kubeconfig and not in a cluster: %v", err)
	}
	st, err := kubestore.Open(ctx, kubestore.Options{Config: rc, Namespace: cfg.StoreNamespace})
	if err != nil {
		return nil, failf("controlplane: %v", err)
	}
	log.Info("state in the Kubernetes API", "api", rc.Host, "namespace", cfg.StoreNamespace, "replica", st.Identity())
	return st, nil
}

// runControlPlane runs until ctx ends (SIGINT/SIGTERM) or a server fails.
// hup delivers SIGHUP: reload the policy.
func runControlPlane(ctx context.Context, stderr io.Writer, cfg config.Config, tdxColl *tdxCollateralFlags, hup <-chan os.Signal) error {
	log := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)

	policy, err := loadPolicyFile(cfg.Policy)
	if err != nil {
		return err
	}
	svidTTL := time.Duration(cfg.SVIDTTL)
	if err := checkPolicyFor(policy, spiffeid.TrustDomain{}, svidTTL); err != nil {
		return failf("invalid policy: policy %s: %v", cfg.Policy, err)
	}
	prov, err := openProvider(&cfg, log)
	if err != nil {
		return err
	}
	vopts := attest.Options{}
	if cfg.KDSCache != "" {
		vopts.Fetcher = &attest.CachingFetcher{Upstream: trust.DefaultHTTPSGetter(), Dir: cfg.KDSCache, Logger: log}
		log.Info("KDS fetching enabled for evidence without a VCEK", "cache", cfg.KDSCache)
	}
	if vopts.TDXCollateral, err = tdxColl.source(cfg.StateDir, log); err != nil {
		return err
	}
	if err := selfCheck(prov, policy, vopts.Fetcher); err != nil {
		log.Warn("this control plane's own evidence does not pass its policy: agents applying the same policy will refuse to join it",
			"policy", cfg.Policy, "tee", prov.TEE(), "err", err)
	}

	st, err := openStore(ctx, &cfg, log)
	if err != nil {
		return err
	}
	defer st.Close()
	_, shared := st.(store.Shared)

	srv, err := controlplane.New(controlplane.Config{
		Policy: policy, Provider: prov, Store: st,
		ClusterCIDR: cfg.ClusterCIDR, NodePrefixLen: cfg.NodePrefixLen, MTUHint: cfg.MTUHint,
		SVIDTTL: svidTTL, WorkloadTTL: time.Duration(cfg.WorkloadTTL), SweepInterval: time.Duration(cfg.SweepInterval),
		SourceRate: cfg.SourceRate, SourceBurst: cfg.SourceBurst, Limits: cfg.Limits(),
		DNSNames: cfg.DNSNames, IPAddresses: cfg.IPAddresses(),
		Logger: log, VerifierOptions: vopts,
	})
	if err != nil {
		return failf("controlplane: %v", err)
	}
	// Nodes stored by a previous run are judged by the policy in force now
	// (it may have changed, or SVIDs expired, while the control plane was
	// down), before any agent is served; the periodic sweep takes over.
	// With a shared store the replica holding the leader lease sweeps
	// (srv.Run), once its cache has listed the store.
	if !shared {
		if err := srv.Sweep(); err != nil {
			log.Error("start-up sweep", "err", err)
		}
	}
	if err := srv.WriteAdminCredential(cfg.AdminDir()); err != nil {
		return failf("controlplane: admin credential in %s: %v", cfg.AdminDir(), err)
	}

	agentLis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return failf("controlplane: agent listener: %v", err)
	}
	defer agentLis.Close()
	adminLis, err := listenAdmin(cfg.AdminSocket)
	if err != nil {
		return failf("controlplane: %v", err)
	}
	defer adminLis.Close()
	var metricsLis net.Listener
	if cfg.MetricsListen != "" {
		if metricsLis, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return failf("controlplane: metrics listener: %v", err)
		}
		defer metricsLis.Close()
		if metricsLis, err = srv.LimitMetricsListener(metricsLis, cfg.MetricsMaxConns, cfg.MetricsMaxConnsPerSource); err != nil {
			return failf("controlplane: %v", err)
		}
	}

	reloader := &config.PolicyReloader{
		Path:   cfg.Policy,
		Logger: log,
		Check: func(p *attest.Policy) error {
			if err := checkPolicyFor(p, srv.TrustDomain(), svidTTL); err != nil {
				return err
			}
			if err := selfCheck(prov, p, vopts.Fetcher); err != nil {
				log.Warn("under the new policy this control plane's own evidence fails: agents applying it will refuse to join", "err", err)
			}
			return nil
		},
		Apply: srv.SetPolicy,
	}
	if err := reloader.Prime(); err != nil {
		log.Warn("cannot stat the policy file; it is reloaded when it can be read again", "file", cfg.Policy, "err", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8) // more than the goroutines started: a failing one never blocks
	run := func(what string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", what, err)
			}
		}()
	}
	run("agent service", func() error { return srv.Serve(ctx, agentLis) })
	run("admin service", func() error { return srv.ServeAdmin(ctx, adminLis) })
	var httpSrv *http.Server
	if metricsLis != nil {
		httpSrv = srv.MetricsServer()
		run("metrics server", func() error {
			if err := httpSrv.Serve(metricsLis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	run("sweep", func() error { srv.Run(ctx); return nil })
	run("policy reload", func() error {
		t := time.NewTicker(config.PolicyPollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				_, _ = reloader.Poll() // the reloader logs what it did
			case <-hup:
				_, _ = reloader.Reload("SIGHUP")
			}
		}
	})

	metricsAddr := ""
	if metricsLis != nil {
		metricsAddr = metricsLis.Addr().String()
	}
	log.Info("control plane serving",
		"agents", agentLis.Addr().String(), "adminSocket", cfg.AdminSocket, "metrics", metricsAddr,
		"trustDomain", srv.TrustDomain().String(), "spiffeID", srv.ID().String(), "tee", prov.TEE(),
		"stateDir", cfg.StateDir, "adminCredential", cfg.AdminDir(), "policy", cfg.Policy)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-errc:
		log.Error("a server failed; shutting down", "err", runErr)
	}
	cancel()
	if httpSrv != nil {
		sctx, scancel := context.WithTimeout(context.Background(), shutdownTimeout)
		_ = httpSrv.Shutdown(sctx)
		scancel()
	}
	wg.Wait()
	if runErr != nil {
		return failf("controlplane: %v", runErr)
	}
	log.Info("control plane stopped")
	return nil
}
