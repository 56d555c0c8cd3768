//go:build linux

package cli

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/bench/soak"
	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
	"github.com/spf13/cobra"
)

// soakRuns names everything a soak creates: "cmsk-<run ID>-1-...", a lock
// in /run/cmsoak while it runs. The short family prefix leaves three digits
// for node numbers in device names ("cmsk-1a2b-1n123" is 15 bytes): nodes
// join all run long.
var soakRuns = netlab.Runs{NamePrefix: "cmsk-", LockDir: "/run/cmsoak", ClusterIDWidth: 1}

func newBenchSoakCmd() *cobra.Command {
	var (
		output, results string
		controlPlanes   string
		cfg             = soak.Config{Bounds: soak.DefaultBounds}
	)
	cmd := &cobra.Command{
		Use:   "soak [--duration 30m] [--every 30s] [--nodes 3] [--control-planes auto|kubernetes|standalone] [-o json] [--results FILE]",
		Short: "Run the namespace lab for a long time under traffic and events; report loss per event, growth and errors",
		Long: `Build the namespace lab (the demo's and the e2e tests': the control plane and
--nodes stable node agents, each a confmesh process in its own network
namespace on the simulated TEE, userspace WireGuard), put a pod on every
stable node with the real CNI plugin, and send steady probe traffic between
every ordered pair of those pods: sequence-numbered UDP datagrams, one every
--probe-interval per stream, only to addresses inside the lab's namespaces.

Meanwhile, for --duration:
  pod churn      one CNI ADD or DEL every --churn-every on the stable nodes
                 (up to --churn-pods churned pods per node), all run long;
  node-join      a new node joins (attested, then the whole mesh has it);
  policy-reload  the shared policy file is rewritten (one accepted
                 measurement, then two: every node still passes) and every
                 agent and the control plane get SIGHUP;
  controlplane-failover (--control-planes kubernetes)
                 two control-plane replicas share the Kubernetes store of a
                 real kube-apiserver + etcd (from the k8s tools cache, in a
                 namespace of the lab's own, with manifests/base's CRDs and
                 RBAC); the replica most stable agents use is SIGKILLed,
                 every agent must move to the other one, then the killed
                 one is started again;
  controlplane-kill (--control-planes standalone)
                 the one control plane (bbolt store) is SIGKILLed and
                 started again: an outage, not a failover;
  node-leave     the oldest joined node leaves (agent stopped, 'confmesh
                 agent cleanup', 'confmesh nodes remove');
  key-rotation   every stable agent rotates its WireGuard key on
                 --key-rotation (the times are read from their logs).
The scheduled events run in that order, one every --every; each must
complete (the mesh full again) or the run fails.

--control-planes auto (the default) is kubernetes when etcd and
kube-apiserver are built (--k8s-tools; default: what 'k8s/tools/build.sh
--dir' of the confmesh checkout above the working directory prints), else
standalone, saying why and naming 'make k8s-tools'. The kubernetes mode
reads manifests/base from that checkout too.

Every probe is charged to the window of the event it was sent in (the event
plus --settle; where windows overlap, the newest event), or to "none" (only
pod churn). The report gives, per event type: events, probes sent and lost,
loss %, and the longest gap. RSS (VmRSS), threads and goroutines (from
/metrics) of every agent, datapath and control-plane process are sampled
every --sample-every; a process sampled over at least --judge-after whose
end figures exceed its start by more than the bounds fails the run (RSS at
most 1.5x + 16 MiB, goroutines at most 1.25x + 10). Every ERROR line and
panic in the components' logs is counted, and the distinct ones listed.

Everything the run creates is named cmsk-<run>-...; it is torn down at the
end, also on Ctrl-C or failure; a run killed outright is swept by the next.
The logs are kept (path printed) when the run fails. Needs root.
Exit codes: 0 pass; 1 an event failed, a bound was exceeded, a component
died, or not root; 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if cfg.Duration < time.Minute || cfg.Every <= 0 || cfg.Settle < 0 || cfg.ProbeInterval < time.Millisecond ||
				cfg.ChurnEvery <= 0 || cfg.SampleEvery <= 0 || cfg.KeyRotation < 0 {
				return usageErrorf("--duration must be at least 1m; --every, --probe-interval (>= 1ms), --churn-every and --sample-every positive; --settle and --key-rotation not negative")
			}
			if cfg.Nodes < 2 || cfg.Nodes > 20 || cfg.ChurnPods < 1 {
				return usageErrorf("--nodes must be 2 to 20 and --churn-pods at least 1")
			}
			if err := checkControlPlanesFlag(controlPlanes); err != nil {
				return err
			}
			if os.Geteuid() != 0 {
				return failf("bench soak needs root: it creates network namespaces, TUN devices and nftables rules")
			}
			var toolsErr error
			if controlPlanes != soak.ModeStandalone {
				cfg.RepoRoot, cfg.K8sTools, toolsErr = k8sTools(cfg.K8sTools)
			}
			mode, note, err := soak.ResolveMode(controlPlanes, toolsErr)
			if err != nil {
				return failf("bench soak: %v", err)
			}
			if note != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "soak: %s\n", note)
			}
			cfg.ControlPlanes = mode
			if err := netlab.CheckHost(); err != nil {
				return failf("bench soak: %v", err)
			}
			self, err := os.Executable()
			if err != nil {
				return failf("bench soak: locate this binary: %v", err)
			}
			if cfg.CNIBin, err = findCNIPlugin(""); err != nil {
				return failf("bench soak: %v", err)
			}
			cfg.Bin = self
			run, err := soakRuns.Start()
			if err != nil {
				return failf("bench soak: %v", err)
			}
			defer run.Release()
			if removed, errs := soakRuns.Sweep(run); len(removed) > 0 || len(errs) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "soak: removed leftovers of ended soak runs: %s %v\n", strings.Join(removed, ", "), errs)
			}
			if cfg.Dir, err = run.TempDir("lab"); err != nil {
				return failf("bench soak: %v", err)
			}
			if cfg.Prefix, err = run.NextClusterPrefix(); err != nil {
				return failf("bench soak: %v", err)
			}
			cfg.Command = strings.Join(os.Args, " ")
			errw := cmd.ErrOrStderr()
			cfg.Logf = func(format string, args ...any) {
				fmt.Fprintf(errw, "%s soak: %s\n", time.Now().UTC().Format("15:04:05"), fmt.Sprintf(format, args...))
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			cfg.Logf("run %s, names %s-*, logs in %s, for %s, control planes: %s", run.ID, cfg.Prefix, cfg.Dir, cfg.Duration, cfg.ControlPlanes)
			rep, runErr := soak.Run(ctx, cfg)
			if rep == nil {
				os.RemoveAll(cfg.Dir)
				return failf("bench soak: %v", runErr)
			}
			if runErr != nil && len(rep.Failures) == 0 {
				rep.Failures = append(rep.Failures, runErr.Error())
			}
			if err := storeResults(results, "soak", rep); err != nil {
				return err
			}
			if output == formatJSON {
				if err := writeJSON(cmd.OutOrStdout(), rep); err != nil {
					return err
				}
			} else {
				rep.Render(cmd.OutOrStdout())
			}
			if rep.Failed() {
				return failf("bench soak failed (logs kept in %s): %s", cfg.Dir, strings.Join(rep.Failures, "; "))
			}
			os.RemoveAll(cfg.Dir)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&output, "output", "o", formatText, "output format: text or json")
	fl.StringVar(&controlPlanes, "control-planes", soak.ModeAuto, "auto, kubernetes (two replicas on a real kube-apiserver: failovers) or standalone (one, bbolt: kill and restart)")
	fl.StringVar(&cfg.K8sTools, "k8s-tools", "", "directory holding etcd and kube-apiserver (default: `k8s/tools/build.sh --dir` of the checkout above the working directory)")
	fl.DurationVar(&cfg.Duration, "duration", 30*time.Minute, "how long the soak runs (at least 1m)")
	fl.DurationVar(&cfg.Every, "every", 30*time.Second, "one scheduled event this often")
	fl.DurationVar(&cfg.Settle, "settle", 5*time.Second, "added to each event's window after it completed (one WireGuard handshake retry)")
	fl.IntVar(&cfg.Nodes, "nodes", 3, "stable nodes (probe traffic between a pod on each)")
	fl.DurationVar(&cfg.ProbeInterval, "probe-interval", 20*time.Millisecond, "one probe datagram per stream this often")
	fl.DurationVar(&cfg.ChurnEvery, "churn-every", 2*time.Second, "one pod ADD or DEL this often")
	fl.IntVar(&cfg.ChurnPods, "churn-pods", 4, "churned pods alive per stable node at most")
	fl.DurationVar(&cfg.KeyRotation, "key-rotation", 3*time.Minute, "the stable agents' --key-rotation (0: none)")
	fl.DurationVar(&cfg.SampleEvery, "sample-every", time.Minute, "RSS and goroutine samples this often")
	fl.DurationVar(&cfg.Bounds.MinLifetime, "judge-after", soak.DefaultBounds.MinLifetime, "apply the growth bounds to processes sampled over at least this long")
	resultsFlag(cmd, &results, "soak")
	return cmd
}

// k8sTools finds the confmesh checkout above the working directory (for
// manifests/base) and the directory holding etcd and kube-apiserver (dir,
// or the cache k8s/tools/build.sh builds into), or says why they cannot be
// used.
func k8sTools(dir string) (root, tools string, err error) {
	root, err = kubetest.RepoRoot()
	if err != nil {
		return "", "", fmt.Errorf("%v (run it from a confmesh checkout for manifests/base and k8s/tools)", err)
	}
	if dir == "" {
		if dir, err = kubetest.ToolsDir(); err != nil {
			return "", "", err
		}
	}
	for _, name := range []string{"etcd", "kube-apiserver"} {
		if _, err := kubetest.ToolIn(dir, name); err != nil {
			return "", "", err
		}
	}
	return root, dir, nil
}
