//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// The harness types are netlab's; only what calls t.Fatal differs.
type (
	// Options describe a cluster (netlab.Options).
	Options = netlab.Options
	// NodeOptions describe one node (netlab.NodeOptions).
	NodeOptions = netlab.NodeOptions
	// Policy is the varied part of a policy (netlab.Policy).
	Policy = netlab.Policy
	// Status is `confmesh status -o json` (netlab.Status).
	Status = netlab.Status
	// Pod is a pod (netlab.Pod), made by the CNI plugin.
	Pod = netlab.Pod
	// PodSpec is what CNI_ARGS says about a pod (netlab.PodSpec).
	PodSpec = netlab.PodSpec
)

// LogDirEnv names a directory to copy every cluster's process logs into
// (one subdirectory per test), kept after the run; unset, logs go with the
// test's temporary directory.
const LogDirEnv = "CME2E_LOG_DIR"

// LogLevelEnv sets every agent's --log-level (e.g. debug: with the
// datapath's wireguard-go handshake messages, to diagnose a tunnel
// problem); unset, the agents' default.
const LogLevelEnv = "CME2E_LOG_LEVEL"

// Cluster is a netlab cluster bound to a test: failures end the test, and
// everything is torn down in t.Cleanup.
type Cluster struct {
	*netlab.Cluster
	T testing.TB
	// Nodes are the cluster's nodes in the order they were added.
	Nodes []*Node
}

// Node is a netlab node whose waits end the test on failure.
type Node struct {
	*netlab.Node
	c *Cluster
}

// RequireRoot skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e: needs root (network namespaces, TUN, nftables, raw sockets); run `go test ./e2e/` as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("e2e: the ip command (iproute2) is required")
	}
}

// NewCluster builds the topology, starts the control plane and opts.Nodes
// honest agents, and waits until every one is attested and ready and the
// mesh is full. Everything is torn down in t.Cleanup.
func NewCluster(t testing.TB, opts Options) *Cluster {
	t.Helper()
	RequireRoot(t)
	r, err := Run()
	if err != nil {
		t.Fatalf("e2e: run lock: %v", err)
	}
	prefix, err := r.NextClusterPrefix()
	if err != nil {
		t.Fatalf("e2e: %v", err)
	}
	cfg := netlab.Config{Prefix: prefix, Dir: t.TempDir(), Bin: Binary(t), CNIBin: CNIBinary(t), AgentLogLevel: os.Getenv(LogLevelEnv)}
	if testing.Verbose() {
		cfg.Logf = func(format string, args ...any) { t.Logf("e2e cleanup: "+format, args...) }
	}
	c := &Cluster{Cluster: netlab.NewCluster(cfg), T: t}
	t.Cleanup(c.teardown) // registered after TempDir: runs before its removal
	start := time.Now()
	if err := c.Start(Options{AgentPolicy: opts.AgentPolicy, ControlPlanePolicy: opts.ControlPlanePolicy, SVIDTTL: opts.SVIDTTL,
		NodeTEEs: opts.NodeTEEs, SimTDX: opts.SimTDX,
		ControlPlaneReplicas: opts.ControlPlaneReplicas, ControlPlaneSetup: opts.ControlPlaneSetup}); err != nil {
		t.Fatalf("e2e: %v", err)
	}
	nodes := make([]*Node, opts.Nodes)
	for i := range nodes {
		var no NodeOptions
		if i < len(opts.NodeTEEs) {
			no.TEE = opts.NodeTEEs[i]
		}
		nodes[i] = c.AddNode(no)
	}
	for _, n := range nodes {
		n.WaitReady()
	}
	c.WaitMesh(nodes...)
	t.Logf("e2e: cluster %s: control plane and %d nodes attested, full mesh, in %s", c.Prefix, len(nodes), time.Since(start).Round(time.Millisecond))
	return c
}

// teardown: on failure the log tails and each node's network state first, then netlab's teardown (each
// problem fails the test), then the logs are kept if CME2E_LOG_DIR says so.
func (c *Cluster) teardown() {
	t := c.T
	if t.Failed() {
		for _, s := range c.LogTails(40) {
			t.Logf("e2e: %s", s)
		}
		for _, s := range c.NetworkSnapshots() {
			t.Logf("e2e: %s", s)
		}
	}
	for _, err := range c.Teardown() {
		t.Errorf("e2e cleanup: %v", err)
	}
	if dst := logDir(t); dst != "" {
		if err := c.CopyLogs(dst); err != nil {
			t.Logf("e2e: %s: %v", LogDirEnv, err)
		} else {
			t.Logf("e2e: logs kept in %s", dst)
		}
	}
}

// AddNode creates the next node and starts its agent, without waiting for
// it: call WaitReady (honest node) or watch its Status (rogue).
func (c *Cluster) AddNode(opts NodeOptions) *Node {
	c.T.Helper()
	n, err := c.Cluster.AddNode(opts)
	if err != nil {
		c.T.Fatalf("e2e: %v", err)
	}
	w := &Node{Node: n, c: c}
	c.Nodes = append(c.Nodes, w)
	return w
}

// AddPod makes the next pod on node n with the CNI plugin (n must be
// ready): namespace "default", a generated name and UID.
func (c *Cluster) AddPod(n *Node) *Pod {
	c.T.Helper()
	return c.AddPodSpec(n, PodSpec{})
}

// AddPodSpec makes the next pod on node n with the CNI plugin, with the
// namespace, name and UID of spec in CNI_ARGS.
func (c *Cluster) AddPodSpec(n *Node, spec PodSpec) *Pod {
	c.T.Helper()
	p, err := c.Cluster.AddCNIPod(n.Node, spec)
	if err != nil {
		c.T.Fatalf("e2e: %v", err)
	}
	return p
}

// WaitMesh waits until the nodes form a full mesh (netlab.Cluster.WaitMesh).
func (c *Cluster) WaitMesh(nodes ...*Node) {
	c.T.Helper()
	if err := c.Cluster.WaitMesh(unwrap(nodes)...); err != nil {
		c.T.Fatalf("e2e: %v", err)
	}
}

// StartCapture captures on the underlay bridge for at most max.
func (c *Cluster) StartCapture(max time.Duration) *netlab.Capture {
	c.T.Helper()
	cp, err := c.Cluster.StartCapture(max)
	if err != nil {
		c.T.Fatalf("e2e: %v", err)
	}
	return cp
}

// StartAgent starts (or restarts) the node's agent.
func (n *Node) StartAgent() {
	n.c.T.Helper()
	if err := n.Node.StartAgent(); err != nil {
		n.c.T.Fatalf("e2e: %v", err)
	}
}

// WaitReady waits until the agent is attested and ready (netlab.Node.WaitReady).
func (n *Node) WaitReady() {
	n.c.T.Helper()
	if err := n.Node.WaitReady(); err != nil {
		n.c.T.Fatalf("e2e: %v", err)
	}
}

// CheckPeers compares the node's WireGuard peers with want (netlab.Node.CheckPeers).
func (n *Node) CheckPeers(want ...*Node) error { return n.Node.CheckPeers(unwrap(want)...) }

// others is nodes without n.
func others(nodes []*Node, n *Node) []*Node {
	var out []*Node
	for _, m := range nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

func unwrap(nodes []*Node) []*netlab.Node {
	out := make([]*netlab.Node, len(nodes))
	for i, n := range nodes {
		out[i] = n.Node
	}
	return out
}

// sanitize makes a test name usable as a directory name.
func sanitize(name string) string { return strings.NewReplacer("/", "_", " ", "_").Replace(name) }
