//go:build linux

package throughput_test

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/gobuild"
	"github.com/confmesh/confmesh/netlab"
)

// TestBenchThroughputSmoke runs `confmesh bench throughput` briefly (one
// round of 1 s loads, the built-in generator) as CI does, and checks that
// the JSON carries sane positive figures for all three paths and that
// every namespace, device socket and process of the run is gone afterwards.
func TestBenchThroughputSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the bench creates network namespaces, TUN devices and nftables rules")
	}
	if err := netlab.CheckHost(); err != nil {
		t.Fatalf("%v (make deps installs it)", err)
	}
	root, err := gobuild.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin, cni, err := netlab.BuildBinaries(dir)
	if err != nil {
		t.Fatal(err)
	}
	wg, err := gobuild.Build(root, dir, "golang.zx2c4.com/wireguard")
	if err != nil {
		t.Fatal(err)
	}
	plot := filepath.Join(dir, "tput.png")
	results := filepath.Join(dir, "results.json")
	if err := os.WriteFile(results, []byte(`{"verify": {"verifications_per_second": 1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "throughput", "--duration", "1s", "--rounds", "1", "--generator", "go", "--idle-wait", "0",
		"--plugin", cni, "--wireguard-go", wg, "-o", "json", "--plot", plot, "--results", results)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	t.Logf("bench took %s; stderr:\n%s", time.Since(start).Round(time.Millisecond), stderr.String())

	// Whatever happened, the run's names must be gone.
	m := regexp.MustCompile(`lab (cmtp-[0-9a-f]{4}-)`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no lab prefix in stderr (run error %v)", runErr)
	}
	prefix := m[1]
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("namespace left behind: %s", line)
		}
	}
	socks, _ := filepath.Glob(filepath.Join(netlab.WireGuardSocketDir, prefix+"*"))
	if len(socks) > 0 {
		t.Errorf("UAPI sockets left behind: %v", socks)
	}
	if runErr != nil {
		t.Fatalf("bench throughput: %v\nstdout: %s", runErr, stdout.String())
	}

	var res map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("JSON output: %v\n%s", err, stdout.String())
	}
	positive := func(key string, v any) {
		t.Helper()
		x, ok := v.(float64)
		if !ok || !(x > 0) {
			t.Errorf("%s = %v, want a positive number", key, v)
		}
	}
	for _, k := range []string{"plaintext_gbps", "wireguard_go_gbps", "confmesh_gbps", "plaintext_gbps_4", "wireguard_go_gbps_4",
		"confmesh_gbps_4", "ratio_vs_wireguard_go", "ratio_vs_wireguard_go_4", "ratio_vs_plaintext", "ratio_vs_plaintext_4",
		"datapath_rss_mib", "agent_rss_mib", "controlplane_rss_mib", "wireguard_go_rss_mib"} {
		positive(k, res[k])
	}
	for _, k := range []string{"cpu_s_per_gb", "rr_p50_us", "rr_p99_us"} {
		per, ok := res[k].(map[string]any)
		if !ok {
			t.Errorf("%s = %v, want an object per variant", k, res[k])
			continue
		}
		for _, v := range []string{"wireguard_go", "confmesh", "plaintext"} {
			if k == "cpu_s_per_gb" && v == "plaintext" {
				continue // no tunnel process
			}
			positive(k+"."+v, per[v])
		}
	}
	if r, _ := res["ratio_vs_plaintext"].(float64); r >= 1.5 {
		t.Errorf("ratio_vs_plaintext = %v: an encrypted userspace tunnel well above the bare underlay means the paths are mixed up", r)
	}
	for _, k := range []string{"datapath_rss_mib", "agent_rss_mib", "controlplane_rss_mib"} {
		if x, _ := res[k].(float64); x > 4096 {
			t.Errorf("%s = %v MiB: not a plausible resident size", k, x)
		}
	}
	if d, _ := res["datapath"].(string); !strings.Contains(d, "userspace") {
		t.Errorf("datapath = %q, want it to say the userspace datapath was measured", d)
	}
	if st, err := os.Stat(plot); err != nil || st.Size() < 1000 {
		t.Errorf("plot %s: %v (size %v)", plot, err, st)
	}
	var merged map[string]json.RawMessage
	b, _ := os.ReadFile(results)
	if err := json.Unmarshal(b, &merged); err != nil || merged["verify"] == nil || merged["throughput"] == nil {
		t.Errorf("--results did not merge into the existing object (keys kept): %v %s", err, b)
	}
}
