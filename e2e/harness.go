//go:build linux

package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Underlay addressing: the control plane, node i, and the bridge (the
// nodes' default gateway, so that a packet a node would leak in plaintext
// is really sent, and seen on the bridge).
const (
	underlayBits = 24
	cpPort       = 7443
	wgPort       = 51820
	maxNodes     = 9 // device names: <run prefix><cluster ID>n<i> must fit in 15 bytes
)

var (
	cpIP      = netip.MustParseAddr("198.18.0.1")
	bridgeIP  = netip.MustParseAddr("198.18.0.254")
	nodeIPMin = 10 // node i is 198.18.0.(10+i)
)

// Bounds of the waits NewCluster and the tests use.
const (
	ReadyTimeout = 30 * time.Second // agent attested and ready
	MeshTimeout  = 30 * time.Second // every node has every peer
	pollEvery    = 100 * time.Millisecond
)

// Options describe a cluster.
type Options struct {
	// Nodes is how many honest nodes NewCluster starts and waits for
	// (attested, ready, full mesh). At most 9 per cluster.
	Nodes int
	// AgentPolicy is every agent's policy (default: strict).
	AgentPolicy Policy
	// ControlPlanePolicy is the control plane's policy; nil: AgentPolicy.
	ControlPlanePolicy *Policy
}

// NodeOptions describe one node.
type NodeOptions struct {
	// SimDebug starts the node's simulated TEE with the debug bit (rogue).
	SimDebug bool
	// SimMeasurement is its launch measurement (96 hex digits); default zero.
	SimMeasurement string
	// Policy replaces the cluster's agent policy for this node.
	Policy *Policy
}

// Cluster is a control plane, nodes and pods in network namespaces joined
// by a bridge in the underlay namespace.
type Cluster struct {
	T      testing.TB
	Prefix string // every name of this cluster starts with it, e.g. "cme2e-1a2b-03"
	Dir    string // per-cluster temporary directory: state dirs, logs, policies
	Bin    string // the confmesh binary
	SimDir string // the simulated CA (sim-snp)

	Underlay string // network namespace holding the bridge
	Bridge   string // the bridge's name in Underlay
	CP       *ControlPlane

	agentPolicy string

	mu         sync.Mutex
	Nodes      []*Node
	pods       []*Pod
	namespaces []string   // in creation order
	procs      []*Process // every process ever started, for the log dump
}

// ControlPlane is the `confmesh controlplane` process and its files.
type ControlPlane struct {
	NS          string
	IP          netip.Addr
	Addr        string // agents' endpoint, IP:7443
	StateDir    string
	AdminSocket string
	AdminDir    string // admin credential (<state dir>/admin)
	Policy      string
	Proc        *Process
}

// Node is one node: a network namespace with an underlay address and a
// `confmesh agent` process (which starts the userspace datapath).
type Node struct {
	c        *Cluster
	Index    int
	Name     string // node-<i>
	NS       string
	Device   string // WireGuard device (distinct per node: UAPI sockets share /var/run/wireguard)
	IP       netip.Addr
	StateDir string
	Socket   string // agent local API
	Policy   string // policy file the agent applies
	Opts     NodeOptions

	mu     sync.Mutex
	proc   *Process
	starts int
	pods   int

	// Known once the node is attested (WaitReady).
	PodCIDR netip.Prefix
	Key     wgtypes.Key
}

var clusterSeq atomic.Int64

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
	if opts.Nodes > maxNodes {
		t.Fatalf("e2e: at most %d nodes per cluster", maxNodes)
	}
	runPrefix, err := RunPrefix()
	if err != nil {
		t.Fatalf("e2e: run lock: %v", err)
	}
	seq := clusterSeq.Add(1)
	if seq >= 36*36 {
		t.Fatal("e2e: more than 1295 clusters in one run")
	}
	id := strconv.FormatInt(seq, 36)
	if len(id) < 2 {
		id = "0" + id
	}
	c := &Cluster{T: t, Prefix: runPrefix + id, Bin: Binary(t), Bridge: "br0"}
	c.Dir = t.TempDir()
	t.Cleanup(c.teardown) // registered after TempDir: runs before its removal
	start := time.Now()

	c.SimDir = filepath.Join(c.Dir, "sim")
	root, err := saveSimCA(c.SimDir)
	if err != nil {
		t.Fatalf("e2e: simulated CA: %v", err)
	}
	c.agentPolicy = filepath.Join(c.Dir, "agent-policy.yaml")
	if err := writePolicy(c.agentPolicy, root, opts.AgentPolicy); err != nil {
		t.Fatal(err)
	}
	cpPolicy := c.agentPolicy
	if opts.ControlPlanePolicy != nil {
		cpPolicy = filepath.Join(c.Dir, "cp-policy.yaml")
		if err := writePolicy(cpPolicy, root, *opts.ControlPlanePolicy); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.setupUnderlay(); err != nil {
		t.Fatalf("e2e: underlay: %v", err)
	}
	c.startControlPlane(cpPolicy)
	nodes := make([]*Node, opts.Nodes)
	for i := range nodes {
		nodes[i] = c.AddNode(NodeOptions{})
	}
	for _, n := range nodes {
		n.WaitReady()
	}
	c.WaitMesh(nodes...)
	t.Logf("e2e: cluster %s: control plane and %d nodes attested, full mesh, in %s", c.Prefix, len(nodes), time.Since(start).Round(time.Millisecond))
	return c
}

func (c *Cluster) trackNS(name string) {
	c.mu.Lock()
	c.namespaces = append(c.namespaces, name)
	c.mu.Unlock()
}

func (c *Cluster) trackProc(p *Process) {
	c.mu.Lock()
	c.procs = append(c.procs, p)
	c.mu.Unlock()
}

func (c *Cluster) startControlPlane(policy string) {
	t := c.T
	t.Helper()
	cp := &ControlPlane{NS: c.Prefix + "-cp", IP: cpIP, Addr: netip.AddrPortFrom(cpIP, cpPort).String(),
		StateDir: filepath.Join(c.Dir, "cp"), Policy: policy}
	cp.AdminSocket = filepath.Join(cp.StateDir, "admin.sock")
	cp.AdminDir = filepath.Join(cp.StateDir, "admin")
	c.CP = cp
	if err := c.attach(cp.NS, "cp", cp.IP); err != nil {
		t.Fatalf("e2e: control plane namespace: %v", err)
	}
	p, err := startProcess("control plane", filepath.Join(c.Dir, "controlplane.log"), cp.NS, c.Bin,
		"controlplane", "--policy", policy, "--state-dir", cp.StateDir, "--listen", cp.Addr,
		"--admin-socket", cp.AdminSocket, "--metrics-listen", "127.0.0.1:9464", "--sim-dir", c.SimDir,
		"--sim-name", c.Prefix+"-cp", "--log-format", "text")
	if err != nil {
		t.Fatal(err)
	}
	cp.Proc = p
	c.trackProc(p)
	err = Eventually(ReadyTimeout, 50*time.Millisecond, func() error {
		if done, werr := p.Exited(); done {
			return Permanent(fmt.Errorf("control plane exited: %v", werr))
		}
		if _, err := os.Stat(cp.AdminSocket); err != nil {
			return err
		}
		return InNS(cp.NS, func() error {
			conn, err := net.DialTimeout("tcp", cp.Addr, time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
	})
	if err != nil {
		t.Fatalf("e2e: control plane not serving on %s: %v\n%s", cp.Addr, err, tail(p.Log, 30))
	}
}
