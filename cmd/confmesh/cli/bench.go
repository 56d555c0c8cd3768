package cli

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"time"

	"github.com/confmesh/confmesh/bench"
	"github.com/spf13/cobra"
)

func newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure confmesh's hot paths",
	}
	cmd.AddCommand(newBenchVerifyCmd())
	cmd.AddCommand(newBenchCNICmd())
	cmd.AddCommand(newBenchControlPlaneCmd())
	cmd.AddCommand(newBenchThroughputCmd())
	return cmd
}

func newBenchVerifyCmd() *cobra.Command {
	var output string
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "verify [-o json] [--duration 2s]",
		Short: "Measure evidence verifications per second on one goroutine",
		Long: `Create a throw-away simulated TEE (test CA, one node), a policy that trusts
it and accepts the node's measurement, and one piece of evidence bound to a
fresh join challenge. Verify it once (this also warms the per-VCEK chain
cache), then verify it repeatedly on one goroutine for --duration and print
the rate: the steady-state cost of checking a known node's evidence (report
signature, policy, binding; the chain verdict comes from the cache).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if duration <= 0 {
				return usageErrorf("--duration must be positive, got %s", duration)
			}
			dir, err := os.MkdirTemp("", "confmesh-bench-")
			if err != nil {
				return failf("%v", err)
			}
			defer os.RemoveAll(dir)
			s, err := bench.NewVerifySetup(dir, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil)))
			if err != nil {
				return failf("bench setup: %v", err)
			}
			r, err := bench.RunVerify(s, duration)
			if err != nil {
				return failf("bench: %v", err)
			}
			base, err := bench.RunSignatureBaseline(s, duration)
			if err != nil {
				return failf("bench baseline: %v", err)
			}
			ratio := r.PerSecond / base.PerSecond
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]float64{
					"verifications_per_second":         math.Round(r.PerSecond*10) / 10,
					"signature_only_per_second":        math.Round(base.PerSecond*10) / 10,
					"ratio_to_signature_only_baseline": math.Round(ratio*1000) / 1000,
				})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%.0f verifications/s (%d in %s, one goroutine, chain verdict cached)\n",
				r.PerSecond, r.Verifications, r.Elapsed.Round(time.Millisecond))
			fmt.Fprintf(cmd.OutOrStdout(), "baseline, same run: %.0f report signature checks/s alone; full verification runs at %.2f of that\n",
				base.PerSecond, ratio)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().DurationVar(&duration, "duration", 2*time.Second, "how long to measure")
	return cmd
}
