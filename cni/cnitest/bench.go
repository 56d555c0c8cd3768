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
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// BenchConfig configures RunBench.
type BenchConfig struct {
	// Plugin is the confmesh-cni binary to exec.
	Plugin string
	// Concurrency is how many plugin processes run at once.
	Concurrency int
	// Pods is how many attachments are added and then deleted (0: 5 x Concurrency).
	Pods int
	// Dir holds the fake agent's socket and state.
	Dir string
}

// BenchResult holds the wall time of every ADD and DEL exec, and the CPU
// time (user + system) each plugin process used: on a machine with fewer
// cores than Concurrency, wall time is mostly waiting for a CPU.
type BenchResult struct {
	Add, Del       []time.Duration
	AddCPU, DelCPU []time.Duration
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

// RunBench execs the real plugin binary the way a runtime does (CNI_*
// environment, configuration on stdin), Concurrency processes at a time,
// against a FakeAgent on a unix socket: Pods ADDs, each into its own fresh
// network namespace, then as many DELs. The "host" side is a fresh network
// namespace too, so nothing touches the machine's own network. Creating
// the namespaces is not timed; each exec is, from fork to exit.
func RunBench(cfg BenchConfig) (BenchResult, error) {
	if cfg.Concurrency < 1 {
		return BenchResult{}, errors.New("concurrency must be at least 1")
	}
	if cfg.Pods == 0 {
		cfg.Pods = 5 * cfg.Concurrency
	}
	if cfg.Pods < 1 || cfg.Pods > 10000 {
		return BenchResult{}, fmt.Errorf("pods %d: want 1 to 10000", cfg.Pods)
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

	pods := make([]ns.NetNS, 0, cfg.Pods)
	defer func() {
		for _, p := range pods {
			p.Close()
			_ = testutils.UnmountNS(p)
		}
	}()
	for i := 0; i < cfg.Pods; i++ {
		p, err := testutils.NewNS()
		if err != nil {
			return BenchResult{}, fmt.Errorf("pod namespace: %w", err)
		}
		pods = append(pods, p)
	}
	conf := []byte(fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "confmesh-bench", "type": "confmesh-cni", "agentSocket": %q}`, sock))

	run := func(cmd string) ([]time.Duration, []time.Duration, error) {
		ds, cpu := make([]time.Duration, cfg.Pods), make([]time.Duration, cfg.Pods)
		errs := make([]error, cfg.Pods)
		next := make(chan int)
		var wg sync.WaitGroup
		for w := 0; w < cfg.Concurrency; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					errs[i] = hostNS.Do(func(ns.NetNS) error {
						var err error
						ds[i], cpu[i], err = execPlugin(cfg.Plugin, cmd, fmt.Sprintf("bench%05d", i), pods[i].Path(), conf)
						return err
					})
				}
			}()
		}
		for i := 0; i < cfg.Pods; i++ {
			next <- i
		}
		close(next)
		wg.Wait()
		return ds, cpu, errors.Join(errs...)
	}
	var res BenchResult
	if res.Add, res.AddCPU, err = run("ADD"); err != nil {
		_, _, _ = run("DEL")
		return res, err
	}
	if res.Del, res.DelCPU, err = run("DEL"); err != nil {
		return res, err
	}
	if left := fa.Allocations(); len(left) != 0 {
		return res, fmt.Errorf("%d reservations left after the DELs", len(left))
	}
	return res, nil
}

func execPlugin(plugin, command, id, netns string, conf []byte) (wall, cpu time.Duration, err error) {
	var out bytes.Buffer
	cmd := exec.Command(plugin)
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(plugin), "PATH=" + os.Getenv("PATH")}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(conf), &out, &out
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
