package cli

import (
	"fmt"
	"math"
	"os"
	"reflect"
	"runtime"

	"github.com/confmesh/confmesh/bench"
	"github.com/spf13/cobra"
)

func newBenchControlPlaneCmd() *cobra.Command {
	var output, results string
	var nodes, concurrency, fanoutJoins, renewals int
	cmd := &cobra.Command{
		Use:   "controlplane [--nodes N] [--fanout-joins M] [--renewals R] [-o json]",
		Short: "Measure a control plane process's CPU per join, memory and peer-set fan-out",
		Long: `Starts 'confmesh controlplane' (this binary) as its own process on the
simulated TEE (bbolt store, gRPC over loopback TLS) and drives it from
simulated agents in this process, each on its own simulated chip (a chain
never seen before, so every join runs the full verification). CPU and memory
are the control plane process's own, from /proc/PID/stat and status.

Phases: --nodes agents join (joins_per_second, server_cpu_ms_per_join: the
control plane's CPU time over the phase / joins, nobody watching); every
agent opens its watch stream with its node SVID (server_cpu_ms_per_watch:
mTLS handshake and snapshot); --fanout-joins further nodes join while all
--nodes watch (server_cpu_ms_per_watched_join, fanout_p50_ms/p99_ms/max_ms:
from the control plane's store commit of each join, read from its debug log,
to each watcher's receipt of that delta); --renewals watching nodes renew
(the same figures for renewals); one node is revoked with 'confmesh nodes
revoke' (server_cpu_ms_revoke, revoke_fanout_*). server_rss_mib is the
control plane's resident memory with every watch open at the end
(server_peak_rss_mib its peak). docs/benchmarks.md has figures.

The agents share the machine with the control plane: on a small machine the
fan-out figures include waiting for a CPU on both sides. CPU times are read
in clock ticks (10 ms): divide by enough operations (or read the revocation's
figure as coarse).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if nodes < 2 {
				return usageErrorf("--nodes must be at least 2, got %d", nodes)
			}
			if fanoutJoins < 0 || renewals < 0 || concurrency < 0 {
				return usageErrorf("--fanout-joins, --renewals and --concurrency must not be negative")
			}
			self, err := os.Executable()
			if err != nil {
				return failf("cannot find this binary to run the control plane: %v", err)
			}
			dir, err := os.MkdirTemp("", "confmesh-bench-cp-")
			if err != nil {
				return failf("%v", err)
			}
			defer os.RemoveAll(dir)
			r, err := bench.RunControlPlane(cmd.Context(), bench.ControlPlaneConfig{
				Command: []string{self}, Env: os.Environ(), Nodes: nodes, Concurrency: concurrency,
				FanoutJoins: fanoutJoins, Renewals: renewals, Dir: dir})
			if err != nil {
				return failf("bench: %v", err)
			}
			roundFloats(&r)
			if err := storeResults(results, "controlplane", r); err != nil {
				return err
			}
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), `%d nodes (%d joining at once, %d CPUs); figures are the control plane process's own
join:    %.1f joins/s, %.2f ms CPU per join (nobody watching)
watch:   %.2f ms CPU per watch opened (mTLS handshake + snapshot)
fan-out: %d joins while %d watch: %.2f ms CPU per join; commit to watcher p50 %.1f ms, p99 %.1f ms, max %.1f ms
renew:   %d renewals while %d watch: %.2f ms CPU per renewal; fan-out p50 %.1f ms, p99 %.1f ms
revoke:  %.0f ms CPU; fan-out to %d watchers p50 %.1f ms, p99 %.1f ms, max %.1f ms
memory:  RSS %.1f MiB with every watch open (peak %.1f MiB); %d deliveries measured
`, r.Nodes, r.Concurrency, runtime.NumCPU(),
				r.JoinsPerSecond, r.ServerCPUMsPerJoin, r.ServerCPUMsPerWatch,
				r.FanoutJoins, r.Nodes, r.ServerCPUMsPerWatchedJoin, r.FanoutP50Ms, r.FanoutP99Ms, r.FanoutMaxMs,
				r.Renewals, r.Nodes, r.ServerCPUMsPerRenewal, r.RenewFanoutP50Ms, r.RenewFanoutP99Ms,
				r.ServerCPUMsRevoke, r.Nodes-1, r.RevokeFanoutP50Ms, r.RevokeFanoutP99Ms, r.RevokeFanoutMaxMs,
				r.ServerRSSMiB, r.ServerPeakRSSMiB, r.Deliveries)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().IntVar(&nodes, "nodes", 100, "how many simulated agents join and watch")
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "agents joining or renewing at once (default 2 x CPUs)")
	cmd.Flags().IntVar(&fanoutJoins, "fanout-joins", 0, "further nodes joining while all watch (default min(50, --nodes))")
	cmd.Flags().IntVar(&renewals, "renewals", 0, "watching nodes renewing (default --fanout-joins)")
	resultsFlag(cmd, &results, "controlplane")
	return cmd
}

// roundFloats rounds every float64 field of the struct *v to 3 decimals.
func roundFloats(v any) {
	rv := reflect.ValueOf(v).Elem()
	for i := 0; i < rv.NumField(); i++ {
		if f := rv.Field(i); f.Kind() == reflect.Float64 {
			f.SetFloat(math.Round(f.Float()*1000) / 1000)
		}
	}
}
