//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/attest/sim"
)

// maxDeviceName is the longest network interface name Linux accepts.
const maxDeviceName = 15

// Config says where and with what a cluster is built.
type Config struct {
	// Prefix starts every name of the cluster (Run.NextClusterPrefix),
	// e.g. "cme2e-1a2b-03".
	Prefix string
	// Dir is the cluster's working directory (it must exist): the
	// simulated CA, policies, state directories, sockets and logs.
	Dir string
	// Bin is the confmesh binary the processes run.
	Bin string
	// CNIBin is the confmesh-cni binary (BuildCNI). When set, AddPod makes
	// pods with it (AddCNIPod); when empty, AddPod makes them by hand
	// (AddHandPod).
	CNIBin string
	// OwnProcessGroup starts every process in a process group of its own
	// (see ProcessSpec.OwnGroup).
	OwnProcessGroup bool
	// AgentMetricsListen is every agent's --metrics-listen (each in its
	// node's namespace, so one address serves for all); empty: off.
	AgentMetricsListen string
	// AgentLogLevel is every agent's --log-level (empty: the agent's
	// default). At debug the agent's datapath logs at debug too, which
	// includes wireguard-go's handshake messages.
	AgentLogLevel string
	// Logf, if set, receives notes from Teardown (what cleanup printed).
	Logf func(format string, args ...any)
}

// Options describe a cluster's shape.
type Options struct {
	// Nodes is how many honest nodes Start starts and waits for
	// (attested, ready, full mesh).
	Nodes int
	// AgentPolicy is every agent's policy (default: strict).
	AgentPolicy Policy
	// ControlPlanePolicy is the control plane's policy; nil: AgentPolicy.
	ControlPlanePolicy *Policy
	// SVIDTTL is the control plane's --svid-ttl (0: its default).
	SVIDTTL time.Duration
	// NodeTEEs is the simulated TEE of each of the Nodes honest nodes
	// (TEESimSnp or TEESimTDX; missing or empty: sim-snp).
	NodeTEEs []string
	// SimTDX makes a simulated TDX CA and trusts it in every lab policy
	// (implied when NodeTEEs names sim-tdx).
	SimTDX bool
	// ControlPlaneReplicas is how many control-plane replicas run (0: one).
	// Replica k (from 0) has its own namespace, address (ReplicaIP),
	// state directory and simulated TEE; every agent is given all their
	// addresses. Several replicas need a shared store: ControlPlaneSetup.
	ControlPlaneReplicas int
	// ControlPlaneSetup, if set, runs once the underlay exists and before
	// any replica starts (to start what they share, e.g. an API server in
	// a namespace of its own: AttachNS); the arguments it returns are
	// added to every replica's command line.
	ControlPlaneSetup func(c *Cluster) ([]string, error)
}

// Simulated TEEs a lab node can run on.
const (
	TEESimSnp = "sim-snp"
	TEESimTDX = "sim-tdx"
)

// Cluster is a control plane, nodes and pods in network namespaces joined
// by a bridge in the underlay namespace.
type Cluster struct {
	Config
	SimDir    string          // the simulated CA (sim-snp)
	SimTDXDir string          // the simulated TDX CA, when the cluster has one
	Underlay  string          // network namespace holding the bridge
	Bridge    string          // the bridge's name in Underlay
	CP        *ControlPlane   // the first (or only) control-plane replica
	CPs       []*ControlPlane // every control-plane replica, CP first

	agentPolicy string
	tdxRoot     string

	mu         sync.Mutex
	nodes      []*Node
	pods       []*Pod
	namespaces []string   // in creation order
	procs      []*Process // every process ever started, for the logs
}

// NewCluster prepares a cluster; it creates nothing yet. Call Teardown when
// done, also when Start fails: it removes whatever was created.
func NewCluster(cfg Config) *Cluster {
	return &Cluster{Config: cfg, Bridge: "br0"}
}

// MaxNodes is how many nodes fit the cluster's names (device names are
// Prefix + "n" + node number, at most 15 bytes).
func (c *Cluster) MaxNodes() int {
	digits := maxDeviceName - len(c.Prefix) - 1
	n := 0
	for range min(digits, 3) {
		n = n*10 + 9
	}
	return min(n, 200)
}

// Start builds the topology, starts the control plane and opts.Nodes
// honest agents, and waits until every one is attested and ready and the
// mesh is full.
func (c *Cluster) Start(opts Options) error {
	if c.Prefix == "" || c.Dir == "" || c.Bin == "" {
		return errors.New("netlab: Config needs Prefix, Dir and Bin")
	}
	if opts.Nodes > c.MaxNodes() {
		return fmt.Errorf("at most %d nodes fit the names of cluster %s", c.MaxNodes(), c.Prefix)
	}
	c.SimDir = filepath.Join(c.Dir, "sim")
	_, err := SaveSimCA(c.SimDir)
	if err != nil {
		return fmt.Errorf("simulated CA: %w", err)
	}
	if opts.SimTDX || slices.Contains(opts.NodeTEEs, TEESimTDX) {
		c.SimTDXDir = filepath.Join(c.Dir, "sim-tdx")
		if c.tdxRoot, err = SaveSimTDXCA(c.SimTDXDir); err != nil {
			return fmt.Errorf("simulated TDX CA: %w", err)
		}
	}
	c.agentPolicy = filepath.Join(c.Dir, "agent-policy.yaml")
	if err := c.WritePolicy(c.agentPolicy, opts.AgentPolicy); err != nil {
		return err
	}
	cpPolicy := c.agentPolicy
	if opts.ControlPlanePolicy != nil {
		cpPolicy = filepath.Join(c.Dir, "cp-policy.yaml")
		if err := c.WritePolicy(cpPolicy, *opts.ControlPlanePolicy); err != nil {
			return err
		}
	}
	if err := c.setupUnderlay(); err != nil {
		return fmt.Errorf("underlay: %w", err)
	}
	if err := c.startControlPlane(cpPolicy, opts); err != nil {
		return err
	}
	nodes := make([]*Node, opts.Nodes)
	for i := range nodes {
		var no NodeOptions
		if i < len(opts.NodeTEEs) {
			no.TEE = opts.NodeTEEs[i]
		}
		if nodes[i], err = c.AddNode(no); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := n.WaitReady(); err != nil {
			return err
		}
	}
	return c.WaitMesh(nodes...)
}

// WritePolicy writes p trusting the cluster's simulated roots (and its
// simulated TDX root when it has one) to path.
func (c *Cluster) WritePolicy(path string, p Policy) error {
	if c.tdxRoot != "" && p.SimTDXRoot == "" {
		p.SimTDXRoot = c.tdxRoot
	}
	return WritePolicy(path, filepath.Join(c.SimDir, sim.RootFile), p)
}

// Nodes returns the cluster's nodes in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Processes returns every process the cluster started, in order.
func (c *Cluster) Processes() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Process(nil), c.procs...)
}

// Namespaces returns the cluster's network namespaces in creation order.
func (c *Cluster) Namespaces() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.namespaces...)
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

// start starts a process of the cluster in netns and tracks it.
func (c *Cluster) start(name, log, netns string, args ...string) (*Process, error) {
	p, err := StartProcess(ProcessSpec{Name: name, Log: log, NetNS: netns, Argv: append([]string{c.Bin}, args...), OwnGroup: c.OwnProcessGroup})
	if err != nil {
		return nil, err
	}
	c.trackProc(p)
	return p, nil
}

// ensureDir creates dir (0700) if needed.
func ensureDir(dir string) error { return os.MkdirAll(dir, 0o700) }
