//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
	"golang.org/x/sys/unix"
)

// Issue 21, item 3: a pod must not be able to leave its node unable to
// network pods. The agent runs with a lowered RLIMIT_NOFILE (prlimit on
// the running process) so that the flood stays cheap.

const (
	helperFloodEnv   = "CME2E_WL_FLOOD" // flood: how many connections to open
	floodHold        = 90 * time.Second // a flood helper lets go at the latest after this
	agentMetricsAddr = "127.0.0.1:9465" // inside the node's namespace
	// floodPerCaller is the agent's default per-caller cap of Workload
	// API connections (agent.DefaultWorkloadMaxConnsPerCaller).
	floodPerCaller = 32
	// healWithin bounds how long the node may take to serve again once
	// the cause is gone: "within seconds", with room for a loaded machine.
	healWithin = 20 * time.Second
)

// floodReport is what a flood helper prints: once its connections are
// open, and again when it lets go.
type floodReport struct {
	Dialed   int    `json:"dialed"`   // connections the kernel accepted (connect returned)
	DialErrs int    `json:"dialErrs"` // connects that failed
	Closed   int    `json:"closed"`   // of Dialed, closed by the agent (second report)
	Held     int    `json:"held"`     // of Dialed, still open when letting go (second report)
	Err      string `json:"err,omitempty"`
}

// runFloodHelper is the flood helper's main: it opens up to
// $CME2E_WL_FLOOD connections to the Workload API and sends nothing on
// them (idle, unused), reports, holds them until stdin closes (or
// floodHold), and reports how many the agent closed.
func runFloodHelper() int {
	var rep floodReport
	want, err := strconv.Atoi(os.Getenv(helperFloodEnv))
	if err != nil || want <= 0 || want > 20000 {
		rep.Err = fmt.Sprintf("%s=%q: want 1..20000", helperFloodEnv, os.Getenv(helperFloodEnv))
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
		return 0
	}
	sock := os.Getenv(helperSocketEnv)
	var conns []net.Conn
	var closed atomic.Int64
	for i := 0; i < want && rep.DialErrs < 20; i++ {
		c, err := net.DialTimeout("unix", sock, time.Second)
		if err != nil {
			rep.DialErrs++
			continue
		}
		conns = append(conns, c)
		go func() {
			// Whatever the agent sends is read and dropped; an EOF or reset
			// means it closed the connection.
			_, err := io.Copy(io.Discard, c)
			if err == nil || !errors.Is(err, net.ErrClosed) {
				closed.Add(1)
			}
		}()
	}
	rep.Dialed = len(conns)
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(floodHold):
	}
	rep.Closed = int(closed.Load())
	rep.Held = rep.Dialed - rep.Closed
	for _, c := range conns {
		c.Close()
	}
	out, _ = json.Marshal(rep)
	fmt.Println(string(out))
	return 0
}

// flood is a running flood helper.
type flood struct {
	pod    *Pod
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  *bufio.Reader
	first  floodReport
	closed bool
}

func startFlood(t *testing.T, p *Pod, socket string, conns int) *flood {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), floodHold+30*time.Second)
	f := &flood{pod: p, cmd: exec.CommandContext(ctx, "ip", "netns", "exec", p.NS, exe)}
	f.cmd.Env = append(os.Environ(), helperEnv+"=flood", helperSocketEnv+"="+socket, fmt.Sprintf("%s=%d", helperFloodEnv, conns))
	f.cmd.Stderr = os.Stderr
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.stop(t)
		cancel()
	})
	f.lines = bufio.NewReader(stdout)
	if err := f.read(&f.first); err != nil {
		t.Fatalf("flood from %s: %v", p.Name, err)
	}
	t.Logf("flood from %s: %d idle connections open, %d connects failed", p.Name, f.first.Dialed, f.first.DialErrs)
	return f
}

func (f *flood) read(rep *floodReport) error {
	line, err := f.lines.ReadString('\n')
	if err != nil {
		return fmt.Errorf("no report: %v", err)
	}
	if err := json.Unmarshal([]byte(line), rep); err != nil {
		return fmt.Errorf("report %q: %v", line, err)
	}
	if rep.Err != "" {
		return errors.New(rep.Err)
	}
	return nil
}

// stop lets go of the connections and returns the final report.
func (f *flood) stop(t *testing.T) floodReport {
	var rep floodReport
	if f.closed {
		return rep
	}
	f.closed = true
	f.stdin.Close()
	if err := f.read(&rep); err != nil {
		t.Errorf("flood from %s: final %v", f.pod.Name, err)
	}
	_ = f.cmd.Wait()
	return rep
}

// nodeHTTP is an HTTP client for the agent's metrics listener inside the
// node's namespace. It keeps one connection, so it can still ask the agent
// while the agent cannot accept new ones.
func nodeHTTP(ns string) *http.Client {
	tr := &http.Transport{
		MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, IdleConnTimeout: 10 * time.Minute,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := netlab.InNS(ns, func() error {
				var err error
				c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func httpGet(c *http.Client, path string) (int, string, error) {
	resp, err := c.Get("http://" + agentMetricsAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

// metricSum sums the samples of a metric in a Prometheus text exposition.
func metricSum(exposition, name string) (float64, bool) {
	sum, found := 0.0, false
	for _, line := range strings.Split(exposition, "\n") {
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum, found = sum+v, true
		}
	}
	return sum, found
}

func openFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// setNoFile sets the running process's RLIMIT_NOFILE soft limit (the hard
// one stays: raising it again would need CAP_SYS_RESOURCE) and returns the
// soft limit it had.
func setNoFile(t *testing.T, pid int, n uint64) uint64 {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatalf("prlimit %d: %v", pid, err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: old.Max}, nil); err != nil {
		t.Fatalf("prlimit %d nofile %d:%d: %v", pid, n, old.Max, err)
	}
	return old.Cur
}

// awaitStatus polls path over c (an open connection into the node) every
// 200 ms for up to 30 s until it answers want, and returns its last
// answer; a request that fails ends the wait at once.
func awaitStatus(c *http.Client, path string, want int) (code int, body string, err error) {
	err = netlab.Eventually(30*time.Second, 200*time.Millisecond, func() error {
		var gerr error
		code, body, gerr = httpGet(c, path)
		if gerr != nil {
			return netlab.Permanent(fmt.Errorf("%s over the open connection: %v", path, gerr))
		}
		if code != want {
			return fmt.Errorf("%s %d %q", path, code, body)
		}
		return nil
	})
	return code, body, err
}

// servesPods checks what the CNI plugin and operators need: the agent
// answers, is ready with strict mode installed, and a CNI ADD succeeds.
func servesPods(c *Cluster, n *Node) error {
	st, err := n.Status()
	if err != nil {
		return err
	}
	if !st.Ready || !st.StrictMode || st.Strict.State != "installed" {
		return fmt.Errorf("ready=%v (%s) strictMode=%v strict=%s (%s)", st.Ready, st.ReadyReason, st.StrictMode, st.Strict.State, st.Strict.Reason)
	}
	if _, err := c.Cluster.AddCNIPod(n.Node, PodSpec{}); err != nil {
		return fmt.Errorf("CNI ADD: %w", err)
	}
	return nil
}

// TestWorkloadAPIFloodLeavesNodeServing: three pods each open 700 idle
// connections to their node's Workload API, far beyond the agent's file
// descriptors (its RLIMIT_NOFILE lowered to what it has open plus 600).
// While they hold them, the agent keeps at most the per-caller cap of
// each pod's connections and refuses the rest (counted), so it stays ready
// with strict mode, serves CNI ADDs and gives an honest pod its SVID; once
// they let go, it serves CNI ADDs again within seconds, with no manual
// step.
func TestWorkloadAPIFloodLeavesNodeServing(t *testing.T) {
	c := NewCluster(t, Options{})
	n := c.AddNode(NodeOptions{AgentArgs: []string{"--metrics-listen", agentMetricsAddr}})
	n.WaitReady()
	honest := c.AddPodSpec(n, PodSpec{Namespace: "shop", Name: "api-0", ServiceAccount: "api"})
	var pods []*Pod
	for range 3 {
		pods = append(pods, c.AddPod(n))
	}
	hc := nodeHTTP(n.NS)
	if code, body, err := httpGet(hc, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the flood: %d %q %v", code, body, err)
	}
	pid := n.Agent().PID()
	open := openFDs(t, pid)
	limit := uint64(open + 600)
	old := setNoFile(t, pid, limit)
	t.Logf("agent pid %d: %d descriptors open; RLIMIT_NOFILE lowered from %d to %d", pid, open, old, limit)

	var floods []*flood
	for _, p := range pods {
		floods = append(floods, startFlood(t, p, n.WorkloadSocket, 700))
	}
	// While the flood holds its connections.
	if err := servesPods(c, n); err != nil {
		t.Errorf("during the flood the node does not serve pods: %v", err)
	}
	h := startHelper(t, honest.NS, "fetch", helperSocketEnv+"="+n.WorkloadSocket)
	if !strings.HasPrefix(h.report.ID, "spiffe://") || !strings.HasSuffix(h.report.ID, "/ns/shop/sa/api") {
		t.Errorf("during the flood an honest pod's FetchX509SVID: ID %q, error %s", h.report.ID, h.report.Err)
	}
	if code, body, err := httpGet(hc, "/metrics"); err != nil || code != http.StatusOK {
		t.Errorf("/metrics during the flood: %d %v", code, err)
	} else {
		refused, ok := metricSum(body, "confmesh_agent_workload_connections_refused_total")
		active, _ := metricSum(body, "confmesh_agent_workload_connections")
		most, _ := metricSum(body, "confmesh_agent_workload_connections_max_per_caller")
		// The flooders' plus, until the agent sees it closed, the honest pod's.
		if !ok || refused == 0 || most > floodPerCaller || active > 3*floodPerCaller+1 {
			t.Errorf("during the flood: %v refused (metric present %v), %v open, at most %v by one caller; want refusals counted, at most %d open, %d per caller",
				refused, ok, active, most, 3*floodPerCaller+1, floodPerCaller)
		}
		t.Logf("during the flood: %v Workload API connections refused, %v open, at most %v by one caller", refused, active, most)
	}
	for _, f := range floods {
		rep := f.stop(t)
		t.Logf("flood from %s let go: %d dialed, %d closed by the agent, %d held", f.pod.Name, rep.Dialed, rep.Closed, rep.Held)
		if rep.Held > floodPerCaller {
			t.Errorf("pod %s held %d idle Workload API connections; want at most the per-caller cap %d", f.pod.Name, rep.Held, floodPerCaller)
		}
	}
	start := time.Now()
	var last error
	if err := netlab.Eventually(healWithin, 250*time.Millisecond, func() error {
		last = servesPods(c, n)
		return last
	}); err != nil {
		t.Fatalf("the flood ended %s ago and the node still does not serve pods: %v\n%s", time.Since(start).Round(time.Millisecond), err, netlab.Tail(n.Agent().Log, 20))
	}
	t.Logf("node serves pods %s after the flood ended", time.Since(start).Round(time.Millisecond))
}

// TestAgentHealsFDExhaustion: whatever exhausts the agent's file
// descriptors (here its RLIMIT_NOFILE lowered to 3: no new descriptor at
// all), its checks fail, it reports not ready and why, and /healthz fails
// once that lasts longer than --liveness-timeout (so the kubelet would
// restart it). When descriptors are available again, every degraded state
// clears by itself within seconds: ready, strict mode installed, /healthz
// ok, CNI ADDs served.
func TestAgentHealsFDExhaustion(t *testing.T) {
	c := NewCluster(t, Options{})
	n := c.AddNode(NodeOptions{AgentArgs: []string{"--metrics-listen", agentMetricsAddr, "--liveness-timeout", "4s"}})
	n.WaitReady()
	hc := nodeHTTP(n.NS)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body, err := httpGet(hc, path); code != http.StatusOK {
			t.Fatalf("%s before: %d %q %v", path, code, body, err)
		}
	}
	pid := n.Agent().PID()
	old := setNoFile(t, pid, 3)
	restored := false
	restore := func() {
		if !restored {
			restored = true
			setNoFile(t, pid, old)
		}
	}
	defer restore()
	squeezed := time.Now()
	code, body, err := awaitStatus(hc, "/readyz", http.StatusServiceUnavailable)
	if err != nil {
		t.Fatalf("descriptors exhausted: %v", err)
	}
	t.Logf("descriptors exhausted: /readyz %d %q after %s", code, body, time.Since(squeezed).Round(time.Millisecond))
	code, body, err = awaitStatus(hc, "/healthz", http.StatusServiceUnavailable)
	if err != nil {
		t.Errorf("descriptors exhausted for %s, liveness timeout 4s: %v", time.Since(squeezed).Round(time.Millisecond), err)
	} else {
		took := time.Since(squeezed)
		t.Logf("/healthz %d %q after %s", code, body, took.Round(time.Millisecond))
		if took < 4*time.Second {
			t.Errorf("/healthz failed %s after the exhaustion began, before the 4s liveness timeout", took.Round(time.Millisecond))
		}
	}

	restore()
	start := time.Now()
	err = netlab.Eventually(healWithin, 250*time.Millisecond, func() error {
		for _, path := range []string{"/healthz", "/readyz"} {
			code, body, err := httpGet(hc, path)
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("%s %d %q %v", path, code, body, err)
			}
		}
		return servesPods(c, n)
	})
	if err != nil {
		t.Fatalf("descriptors available again for %s and the node still does not serve pods: %v\n%s", time.Since(start).Round(time.Millisecond), err, netlab.Tail(n.Agent().Log, 20))
	}
	t.Logf("node healed %s after descriptors were available again", time.Since(start).Round(time.Millisecond))
}
