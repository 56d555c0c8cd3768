package cli

import (
	"fmt"
	"math"
	"os"

	"github.com/confmesh/confmesh/bench"
	"github.com/spf13/cobra"
)

func newBenchControlPlaneCmd() *cobra.Command {
	var output string
	var nodes, concurrency int
	cmd := &cobra.Command{
		Use:   "controlplane [--nodes N] [-o json]",
		Short: "Measure joins per second and peer-set fan-out of a real control plane",
		Long: `Starts a real control plane (bbolt store, gRPC over loopback TLS, simulated
TEE) and --nodes in-process simulated agents, each on its own simulated chip.
Every agent attests the control plane, joins (full verification of a chain
never seen before) and opens a watch stream with its node SVID.

Prints joins_per_second over the join phase, fanout_seconds (from the last
join's reply until every watcher has seen that node) and rss_mib (resident
memory with every watch open; client and server ends live in this process).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if nodes < 2 {
				return usageErrorf("--nodes must be at least 2, got %d", nodes)
			}
			dir, err := os.MkdirTemp("", "confmesh-bench-cp-")
			if err != nil {
				return failf("%v", err)
			}
			defer os.RemoveAll(dir)
			r, err := bench.RunControlPlane(cmd.Context(), bench.ControlPlaneConfig{Nodes: nodes, Concurrency: concurrency, Dir: dir})
			if err != nil {
				return failf("bench: %v", err)
			}
			round := func(v float64) float64 { return math.Round(v*1000) / 1000 }
			r.JoinsPerSecond, r.FanoutSeconds, r.RSSMiB = round(r.JoinsPerSecond), round(r.FanoutSeconds), round(r.RSSMiB)
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%d nodes: %.0f joins/s, fan-out %.3f s, RSS %.0f MiB\n", r.Nodes, r.JoinsPerSecond, r.FanoutSeconds, r.RSSMiB)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().IntVar(&nodes, "nodes", 100, "how many simulated agents join and watch")
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "agents joining at once (default 2 x CPUs)")
	return cmd
}
