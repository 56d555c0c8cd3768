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
	"github.com/confmesh/confmesh/internal/gobuild"
	"github.com/spf13/cobra"
)

func newBenchCNICmd() *cobra.Command {
	var output, plugin, reference, results string
	var concurrency, pods, serialPods int
	cmd := &cobra.Command{
		Use:   "cni [--concurrency 20] [--pods N] [--serial-pods N] [--plugin PATH] [--reference build|none|DIR] [-o json]",
		Short: "Measure confmesh-cni's CPU and latency per ADD and DEL beside the reference ptp plugin",
		Long: `Exec the real confmesh-cni binary as a container runtime does: --serial-pods
ADDs one at a time, each into a fresh network namespace, then as many DELs;
then --pods ADDs (default 5 x concurrency) and DELs --concurrency at a time.
The plugin talks to a fake agent on a unix socket (real gRPC, the agent's
real IPAM store and caller-namespace check; the node is treated as
attested), and the host side is a throw-away network namespace, so the
machine's own network is not touched. Needs root.

The reference plugins ptp + host-local (containernetworking/plugins, the
version this module requires) run the same way in the same run, into the
same namespaces: --reference build (default) builds them with the go tool
from the module in the working directory into a temporary directory,
--reference DIR uses ptp and host-local from DIR, --reference none skips them.

Prints add_cpu_ms and del_cpu_ms (median CPU time, user + system, per plugin
process, including the children it waited for: host-local for ptp; the
agent's work is not in confmesh-cni's figure), the 50th and 99th percentile
of wall time (fork to exit) at concurrency 1 (add_c1_*, del_c1_*) and at
--concurrency (add_*, del_*), and the same for the reference (reference_*).
With more processes than cores, wall time is mostly waiting for a CPU.
Build the plugin with CGO_ENABLED=0, as shipped. The plugin is looked up
next to this binary, then on PATH, unless --plugin names it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkFormat(output); err != nil {
				return err
			}
			if concurrency < 1 {
				return usageErrorf("--concurrency must be at least 1, got %d", concurrency)
			}
			if pods < 0 || serialPods < 0 {
				return usageErrorf("--pods and --serial-pods must not be negative")
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
			refDir := reference
			switch reference {
			case "none":
				refDir = ""
			case "build":
				refDir = filepath.Join(dir, "reference")
				root, err := gobuild.ModuleRoot()
				if err == nil {
					err = cnitest.BuildReference(root, refDir)
				}
				if err != nil {
					return failf("build the reference plugins (--reference DIR or none to avoid it): %v", err)
				}
			}
			r, err := cnitest.RunBench(cnitest.BenchConfig{Plugin: path, Reference: refDir, Concurrency: concurrency,
				Pods: pods, SerialPods: serialPods, Dir: dir})
			if err != nil {
				return failf("bench: %v", err)
			}
			out := benchCNIFigures("", r.Confmesh)
			if refDir != "" {
				for k, v := range benchCNIFigures("reference_", r.Reference) {
					out[k] = v
				}
				out["add_cpu_ratio"] = math.Round(out["add_cpu_ms"]/out["reference_add_cpu_ms"]*100) / 100
				out["del_cpu_ratio"] = math.Round(out["del_cpu_ms"]/out["reference_del_cpu_ms"]*100) / 100
			}
			out["concurrency"] = float64(concurrency)
			if err := storeResults(results, "cni", out); err != nil {
				return err
			}
			if output == formatJSON {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%d CPUs; %d pods one at a time, %d pods %d at a time\n", runtime.NumCPU(),
				len(r.Confmesh.Serial.Add), len(r.Confmesh.Parallel.Add), concurrency)
			line := func(name, p string) {
				fmt.Fprintf(w, "%-14s ADD CPU %6.2f ms  c=1 p50 %6.2f p99 %6.2f ms  c=%d p50 %7.2f p99 %7.2f ms\n", name,
					out[p+"add_cpu_ms"], out[p+"add_c1_p50_ms"], out[p+"add_c1_p99_ms"], concurrency, out[p+"add_p50_ms"], out[p+"add_p99_ms"])
				fmt.Fprintf(w, "%-14s DEL CPU %6.2f ms  c=1 p50 %6.2f p99 %6.2f ms  c=%d p50 %7.2f p99 %7.2f ms\n", "",
					out[p+"del_cpu_ms"], out[p+"del_c1_p50_ms"], out[p+"del_c1_p99_ms"], concurrency, out[p+"del_p50_ms"], out[p+"del_p99_ms"])
			}
			line("confmesh-cni", "")
			if refDir != "" {
				line("ptp+host-local", "reference_")
				fmt.Fprintf(w, "CPU ratio to the reference: ADD %.2fx, DEL %.2fx\n", out["add_cpu_ratio"], out["del_cpu_ratio"])
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text or json")
	cmd.Flags().IntVarP(&concurrency, "concurrency", "c", 20, "plugin processes running at once in the parallel phase")
	cmd.Flags().IntVar(&pods, "pods", 0, "attachments to add and delete in the parallel phase (0: 5 x concurrency)")
	cmd.Flags().IntVar(&serialPods, "serial-pods", 0, "attachments to add and delete one at a time (0: 100)")
	cmd.Flags().StringVar(&plugin, "plugin", "", "confmesh-cni binary `PATH` (default: next to this binary, then PATH)")
	cmd.Flags().StringVar(&reference, "reference", "build", "reference plugins: build, none, or a `DIR` holding ptp and host-local")
	resultsFlag(cmd, &results, "cni")
	return cmd
}

// benchCNIFigures are one plugin's figures in milliseconds, keys prefixed.
func benchCNIFigures(prefix string, r cnitest.PluginResult) map[string]float64 {
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
	p := cnitest.Percentile
	return map[string]float64{
		prefix + "add_cpu_ms": ms(p(r.AddCPU(), 0.5)), prefix + "del_cpu_ms": ms(p(r.DelCPU(), 0.5)),
		prefix + "add_c1_p50_ms": ms(p(r.Serial.Add, 0.5)), prefix + "add_c1_p99_ms": ms(p(r.Serial.Add, 0.99)),
		prefix + "del_c1_p50_ms": ms(p(r.Serial.Del, 0.5)), prefix + "del_c1_p99_ms": ms(p(r.Serial.Del, 0.99)),
		prefix + "add_p50_ms": ms(p(r.Parallel.Add, 0.5)), prefix + "add_p99_ms": ms(p(r.Parallel.Add, 0.99)),
		prefix + "del_p50_ms": ms(p(r.Parallel.Del, 0.5)), prefix + "del_p99_ms": ms(p(r.Parallel.Del, 0.99)),
	}
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
