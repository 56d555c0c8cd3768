package cnitest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// BenchConfig configures RunBench.
type BenchConfig struct {
	// Plugin is the confmesh-cni binary to exec.
	Plugin string
	// Reference, when set, is a directory holding the reference plugins
	// ptp and host-local, run the same way in the same run.
	Reference string
	// Concurrency is how many plugin processes run at once.
	Concurrency int
	// Pods is how many attachments are added and then deleted at
	// Concurrency (0: 5 x Concurrency); SerialPods how many one at a time
	// (0: 100, so that p99 is not simply the slowest).
	Pods, SerialPods int
	// Dir holds the fake agent's socket and state and host-local's store.
	Dir string
}

// Runs holds the wall time of every ADD and DEL exec of one phase, and the
// CPU time (user + system, including the children it waited for) each
// plugin process used: on a machine with fewer cores than the concurrency,
// wall time is mostly waiting for a CPU.
type Runs struct {
	Add, Del       []time.Duration
	AddCPU, DelCPU []time.Duration
}

// PluginResult is one plugin's runs one at a time (Serial) and at the
// configured concurrency (Parallel).
type PluginResult struct {
	Serial, Parallel Runs
}

// AddCPU and DelCPU are every exec's CPU time, both phases together.
func (r PluginResult) AddCPU() []time.Duration {
	return append(append([]time.Duration(nil), r.Serial.AddCPU...), r.Parallel.AddCPU...)
}

// DelCPU: see AddCPU.
func (r PluginResult) DelCPU() []time.Duration {
	return append(append([]time.Duration(nil), r.Serial.DelCPU...), r.Parallel.DelCPU...)
}

// BenchResult is confmesh-cni's runs and, with BenchConfig.Reference, the
// reference plugins'.
type BenchResult struct {
	Confmesh, Reference PluginResult
}

// Mean is the average of ds.
func Mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}

// Percentile is the nearest-rank q-quantile (0 < q <= 1) of ds.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(math.Ceil(q*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

// target is a plugin and how to exec it.
type target struct {
	plugin, cniPath string
	conf            []byte
}

// RunBench execs the real plugin binary the way a runtime does (CNI_*
// environment, configuration on stdin) against a FakeAgent on a unix
// socket: SerialPods ADDs one at a time, each into its own network
// namespace, then as many DELs; then Pods ADDs and DELs Concurrency at a
// time. With Reference, the reference ptp plugin (with host-local IPAM)
// does the same after each confmesh-cni phase, into the same namespaces.
// The "host" side is a fresh network namespace, so nothing touches the
// machine's own network. Creating the namespaces is not timed; each exec
// is, from fork to exit.
func RunBench(cfg BenchConfig) (BenchResult, error) {
	if cfg.Concurrency < 1 {
		return BenchResult{}, errors.New("concurrency must be at least 1")
	}
	if cfg.Pods == 0 {
		cfg.Pods = 5 * cfg.Concurrency
	}
	if cfg.SerialPods == 0 {
		cfg.SerialPods = 100
	}
	for _, n := range []int{cfg.Pods, cfg.SerialPods} {
		if n < 1 || n > 10000 {
			return BenchResult{}, fmt.Errorf("pods %d: want 1 to 10000", n)
		}
	}
	confmesh := target{plugin: cfg.Plugin, cniPath: filepath.Dir(cfg.Plugin)}
	var ref target
	if cfg.Reference != "" {
		for _, name := range []string{"ptp", "host-local"} {
			if st, err := os.Stat(filepath.Join(cfg.Reference, name)); err != nil || st.IsDir() {
				return BenchResult{}, fmt.Errorf("reference plugin %s not in %s", name, cfg.Reference)
			}
		}
		ref = target{plugin: filepath.Join(cfg.Reference, "ptp"), cniPath: cfg.Reference,
			conf: []byte(fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "confmesh-bench-ref", "type": "ptp", "mtu": 1420, "ipMasq": false,
  "ipam": {"type": "host-local", "subnet": "10.251.0.0/16", "dataDir": %q}}`, filepath.Join(cfg.Dir, "host-local")))}
	}
	hostNS, err := testutils.NewNS()
	if err != nil {
		return BenchResult{}, fmt.Errorf("host namespace: %w", err)
	}
	defer func() {
		hostNS.Close()
		_ = testutils.UnmountNS(hostNS)
	}()
	fa, err := NewFakeAgent(cfg.Dir, netip.MustParsePrefix("10.250.0.0/16"), 1420)
	if err != nil {
		return BenchResult{}, err
	}
	fa.SetReady(true, "")
	fa.NodeNetNS = hostNS.Path() // the plugin runs there, as on a node
	sock := filepath.Join(cfg.Dir, "agent.sock")
	if err := fa.Start(sock); err != nil {
		return BenchResult{}, err
	}
	defer fa.Stop()
	confmesh.conf = []byte(fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "confmesh-bench", "type": "confmesh-cni", "agentSocket": %q}`, sock))

	pods := make([]ns.NetNS, 0, max(cfg.Pods, cfg.SerialPods))
	defer func() {
		for _, p := range pods {
			p.Close()
			_ = testutils.UnmountNS(p)
		}
	}()
	for i := 0; i < cap(pods); i++ {
		p, err := testutils.NewNS()
		if err != nil {
			return BenchResult{}, fmt.Errorf("pod namespace: %w", err)
		}
		pods = append(pods, p)
	}

	run := func(t target, cmd, prefix string, n, conc int) ([]time.Duration, []time.Duration, error) {
		ds, cpu := make([]time.Duration, n), make([]time.Duration, n)
		errs := make([]error, n)
		next := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < conc; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					errs[i] = hostNS.Do(func(ns.NetNS) error {
						var err error
						ds[i], cpu[i], err = execPlugin(t, cmd, fmt.Sprintf("%s%05d", prefix, i), pods[i].Path())
						return err
					})
				}
			}()
		}
		for i := 0; i < n; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		return ds, cpu, errors.Join(errs...)
	}
	phase := func(t target, prefix string, n, conc int) (Runs, error) {
		var r Runs
		var err error
		if r.Add, r.AddCPU, err = run(t, "ADD", prefix, n, conc); err != nil {
			_, _, _ = run(t, "DEL", prefix, n, conc)
			return r, err
		}
		r.Del, r.DelCPU, err = run(t, "DEL", prefix, n, conc)
		return r, err
	}
	var res BenchResult
	for _, p := range []struct {
		prefix  string
		n, conc int
		cm, rf  *Runs
	}{
		{"s", cfg.SerialPods, 1, &res.Confmesh.Serial, &res.Reference.Serial},
		{"p", cfg.Pods, cfg.Concurrency, &res.Confmesh.Parallel, &res.Reference.Parallel},
	} {
		if *p.cm, err = phase(confmesh, "cm"+p.prefix, p.n, p.conc); err != nil {
			return res, err
		}
		if left := fa.Allocations(); len(left) != 0 {
			return res, fmt.Errorf("%d reservations left after confmesh-cni's DELs", len(left))
		}
		if cfg.Reference == "" {
			continue
		}
		if *p.rf, err = phase(ref, "rf"+p.prefix, p.n, p.conc); err != nil {
			return res, fmt.Errorf("reference: %w", err)
		}
		if left, err := hostLocalLeft(filepath.Join(cfg.Dir, "host-local", "confmesh-bench-ref")); err != nil || left != 0 {
			return res, fmt.Errorf("reference: %d host-local reservations left after the DELs (%v)", left, err)
		}
	}
	return res, nil
}

// hostLocalLeft counts the addresses host-local still holds in dir (one
// file per address, named by it).
func hostLocalLeft(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			n++
		}
	}
	return n, nil
}

func execPlugin(t target, command, id, netns string) (wall, cpu time.Duration, err error) {
	var out bytes.Buffer
	cmd := exec.Command(t.plugin)
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
		"CNI_PATH=" + t.cniPath, "PATH=" + os.Getenv("PATH")}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(t.conf), &out, &out
	start := time.Now()
	err = cmd.Run()
	wall = time.Since(start)
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return wall, cpu, fmt.Errorf("%s %s: %v: %s", command, id, err, bytes.TrimSpace(out.Bytes()))
	}
	return wall, cpu, nil
}

// ReferenceModule is the module of the reference plugins.
const ReferenceModule = "github.com/containernetworking/plugins"

// BuildReference builds the reference ptp and host-local plugins, static,
// into dir, at the version of ReferenceModule that the module at root
// requires (in a scratch module under dir, so root's go.mod and go.sum are
// not touched). It needs the go tool and the module proxy or a module
// cache holding that version.
func BuildReference(root, dir string) error {
	goCmd := func(wd string, args ...string) ([]byte, error) {
		cmd := exec.Command("go", args...)
		cmd.Dir = wd
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=mod", "GOWORK=off")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out, nil
	}
	out, err := goCmd(root, "list", "-m", "-f", "{{.Version}}", ReferenceModule)
	if err != nil {
		return err
	}
	version := strings.TrimSpace(string(out))
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		return err
	}
	mod := fmt.Sprintf("module confmesh-bench-reference\n\ngo 1.24\n\nrequire %s %s\n", ReferenceModule, version)
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte(mod), 0o644); err != nil {
		return err
	}
	_, err = goCmd(src, "build", "-o", dir+string(filepath.Separator),
		ReferenceModule+"/plugins/main/ptp", ReferenceModule+"/plugins/ipam/host-local")
	return err
}
