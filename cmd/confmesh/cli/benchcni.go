package cli

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/confmesh/confmesh/cni"
	"github.com/confmesh/confmesh/cni/cnitest"
	"github.com/spf13/cobra"
)

func newBenchCNICmd() *cobra.Command {
	var output, plugin string
	var concurrency, pods int
	cmd := &cobra.Command{
		Use:   "cni [--concurrency 20] [--pods N] [--plugin PATH] [-o json]",
		Short: "Measure confmesh-cni ADD and DEL latency under parallel pod creation",
		Long: `Exec the real confmesh-cni binary as a container runtime does, --concurrency
processes at a time: --pods ADDs (default 5 x concurrency), each into a fresh
network namespace, then as many DELs. The plugin talks to a fake agent on a
unix socket (real gRPC and the agent's real IPAM store; the node is treated
as attested), and the host side is a throw-away network namespace, so the
machine's own network is not touched. Needs root.

Prints the 50th and 99th percentile of the ADD exec time and the 99th of
DEL, from fork to exit (text output adds DEL's 50th and the mean CPU time
per plugin process: with more processes than cores, wall time is mostly
waiting for a CPU). Build the plugin with CGO_ENABLED=0, as shipped. The plugin is looked up next to this binary, then
on PATH, unless --plugin names it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if concurrency < 1 {
				return usageErrorf("--concurrency must be at least 1, got %d", concurrency)
			}
			if pods < 0 {
				return usageErrorf("--pods must not be negative, got %d", pods)
			}
			if os.Geteuid() != 0 {
				return failf("bench cni needs root: it creates network namespaces and veths")
			}
			path, err := findCNIPlugin(plugin)
			if err != nil {
				return usageErrorf("%v", err)
			}
			dir, err := os.MkdirTemp("", "confmesh-bench-cni-")
			if err != nil {
				return failf("%v", err)
			}
			defer os.RemoveAll(dir)
			r, err := cnitest.RunBench(cnitest.BenchConfig{Plugin: path, Concurrency: concurrency, Pods: pods, Dir: dir})
			if err != nil {
				return failf("bench: %v", err)
			}
			ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
			addP50, addP99 := cnitest.Percentile(r.Add, 0.50), cnitest.Percentile(r.Add, 0.99)
			delP50, delP99 := cnitest.Percentile(r.Del, 0.50), cnitest.Percentile(r.Del, 0.99)
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), map[string]float64{
					"add_p50_ms": ms(addP50), "add_p99_ms": ms(addP99), "del_p99_ms": ms(delP99),
				})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ADD p50 %.2f ms  p99 %.2f ms  (mean CPU per exec %.2f ms)\n"+
				"DEL p50 %.2f ms  p99 %.2f ms  (mean CPU per exec %.2f ms)\n(%d pods, %d at a time, %d CPUs, %s)\n",
				ms(addP50), ms(addP99), ms(cnitest.Mean(r.AddCPU)), ms(delP50), ms(delP99), ms(cnitest.Mean(r.DelCPU)),
				len(r.Add), concurrency, runtime.NumCPU(), path)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().IntVarP(&concurrency, "concurrency", "c", 20, "plugin processes running at once")
	cmd.Flags().IntVar(&pods, "pods", 0, "attachments to add and delete (0: 5 x concurrency)")
	cmd.Flags().StringVar(&plugin, "plugin", "", "confmesh-cni binary `PATH` (default: next to this binary, then PATH)")
	return cmd
}

func findCNIPlugin(flag string) (string, error) {
	if flag != "" {
		if st, err := os.Stat(flag); err != nil || st.IsDir() {
			return "", fmt.Errorf("--plugin %s: not an executable file", flag)
		}
		return filepath.Abs(flag)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), cni.PluginType)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	if p, err := exec.LookPath(cni.PluginType); err == nil {
		return filepath.Abs(p)
	}
	return "", fmt.Errorf("%s not found next to this binary or on PATH (make build puts both in bin/; or pass --plugin)", cni.PluginType)
}
