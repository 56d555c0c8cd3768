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
	cmd.AddCommand(newBenchSoakCmd())
	return cmd
}

func newBenchVerifyCmd() *cobra.Command {
	var output, results string
	var duration time.Duration
	var rounds, cold int
	cmd := &cobra.Command{
		Use:   "verify [-o json] [--duration 2s] [--rounds 10] [--cold 50]",
		Short: "Measure evidence verifications per second on one goroutine, warm and cold",
		Long: `Create a throw-away simulated TEE (test CA, nodes), a policy that trusts it
and accepts the nodes' measurement, and evidence bound to a fresh join
challenge.

Warm path (a known node: the chain verdict comes from the per-VCEK cache;
report signature, policy, binding): one node's evidence is verified
repeatedly on one goroutine, in --rounds windows interleaved with windows of
the baseline, the report's ECDSA P-384 signature check alone
(go-sev-guest), --duration in total for each, the order flipping every round
so a change in the machine's load affects both alike. Prints
verifications_per_second, signature_only_per_second and their ratio
(ratio_to_signature_only_baseline; the figure to read on a shared machine).

Cold path (a chain never seen before, as a new node's join costs): --cold
further nodes, each a new simulated chip with its own VCEK, are verified
once each (cold_verifications_per_second, cold_ms_per_verification, and the
ratio to the same baseline). The simulated chain is RSA-2048 (AMD's is
RSA-4096, whose signature checks cost more); creating the nodes is not
measured.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if duration <= 0 {
				return usageErrorf("--duration must be positive, got %s", duration)
			}
			if rounds < 1 || cold < 1 {
				return usageErrorf("--rounds and --cold must be at least 1")
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
			coldSet, err := s.NewColdSet(cold)
			if err != nil {
				return failf("bench setup: %v", err)
			}
			r, base, err := bench.RunInterleaved(s, duration, rounds)
			if err != nil {
				return failf("bench: %v", err)
			}
			c, err := bench.RunCold(coldSet)
			if err != nil {
				return failf("bench: %v", err)
			}
			ratio, coldRatio := r.PerSecond/base.PerSecond, c.PerSecond/base.PerSecond
			coldMs := c.Elapsed.Seconds() * 1000 / float64(c.Verifications)
			figures := map[string]float64{
				"verifications_per_second":              math.Round(r.PerSecond*10) / 10,
				"signature_only_per_second":             math.Round(base.PerSecond*10) / 10,
				"ratio_to_signature_only_baseline":      math.Round(ratio*1000) / 1000,
				"cold_verifications_per_second":         math.Round(c.PerSecond*10) / 10,
				"cold_ms_per_verification":              math.Round(coldMs*1000) / 1000,
				"cold_ratio_to_signature_only_baseline": math.Round(coldRatio*1000) / 1000,
			}
			if err := storeResults(results, "verify", figures); err != nil {
				return err
			}
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), figures)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "warm: %.0f verifications/s (%d in %s, one goroutine, chain verdict cached)\n",
				r.PerSecond, r.Verifications, r.Elapsed.Round(time.Millisecond))
			fmt.Fprintf(cmd.OutOrStdout(), "baseline, interleaved in %d rounds: %.0f report signature checks/s alone; warm verification runs at %.2f of that\n",
				rounds, base.PerSecond, ratio)
			fmt.Fprintf(cmd.OutOrStdout(), "cold: %.0f verifications/s, %.2f ms each (%d chains never seen before), %.2f of the baseline\n",
				c.PerSecond, coldMs, c.Verifications, coldRatio)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().DurationVar(&duration, "duration", 2*time.Second, "how long to measure each of the warm path and the baseline")
	cmd.Flags().IntVar(&rounds, "rounds", 10, "alternating warm/baseline windows")
	cmd.Flags().IntVar(&cold, "cold", 50, "new nodes verified once each for the cold path")
	resultsFlag(cmd, &results, "verify")
	return cmd
}
