//go:build linux

package netlab

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/confmesh/confmesh/agent/podmeta"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// NodeOptions describe one node.
type NodeOptions struct {
	// SimDebug starts the node's simulated TEE with the debug bit (rogue).
	SimDebug bool
	// SimMeasurement is its launch measurement (96 hex digits; the MRTD on
	// sim-tdx); default zero.
	SimMeasurement string
	// TEE is the node's simulated TEE: TEESimSnp (default) or TEESimTDX
	// (the cluster must have a simulated TDX CA: Options.SimTDX).
	TEE string
	// Policy replaces the cluster's agent policy for this node.
	Policy *Policy
	// KeyRotation is the agent's --key-rotation (0: its default).
	KeyRotation time.Duration
	// AgentArgs are added to the end of the agent's command line (a flag
	// given there overrides the harness's own value of it).
	AgentArgs []string
}

// Node is one node: a network namespace with an underlay address and a
// `confmesh agent` process (which starts the userspace datapath).
type Node struct {
	c              *Cluster
	Index          int
	Name           string // node-<i>
	NS             string
	Device         string // WireGuard device (distinct per node: UAPI sockets share /var/run/wireguard)
	IP             netip.Addr
	StateDir       string
	Socket         string // agent local API
	WorkloadSocket string // SPIFFE Workload API (per node: the mount namespace is shared)
	PodMetadata    string // the agent's standalone pod-metadata file (--pod-metadata)
	Policy         string // policy file the agent applies
	Opts           NodeOptions

	mu     sync.Mutex
	proc   *Process
	starts int
	pods   int

	podMeta []podmeta.Entry // what PodMetadata holds

	// Known once the node is attested (WaitReady).
	PodCIDR netip.Prefix
	Key     wgtypes.Key
}

// AddNode creates the next node's namespace and starts its agent, without
// waiting for it: call WaitReady (honest node) or watch its Status (rogue).
func (c *Cluster) AddNode(opts NodeOptions) (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes) + 1
	if i > c.MaxNodes() {
		c.mu.Unlock()
		return nil, fmt.Errorf("at most %d nodes fit the names of cluster %s", c.MaxNodes(), c.Prefix)
	}
	n := &Node{c: c, Index: i, Name: fmt.Sprintf("node-%d", i), NS: fmt.Sprintf("%s-n%d", c.Prefix, i),
		Device: fmt.Sprintf("%sn%d", c.Prefix, i), IP: NodeIP(i), StateDir: filepath.Join(c.Dir, fmt.Sprintf("n%d", i)),
		Policy: c.agentPolicy, Opts: opts}
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	n.Socket = filepath.Join(n.StateDir, "agent.sock")
	n.WorkloadSocket = filepath.Join(n.StateDir, "workload.sock")
	n.PodMetadata = filepath.Join(n.StateDir, "pods.yaml")
	if opts.Policy != nil {
		n.Policy = filepath.Join(c.Dir, fmt.Sprintf("n%d-policy.yaml", i))
		if err := c.WritePolicy(n.Policy, *opts.Policy); err != nil {
			return n, err
		}
	}
	if err := ensureDir(n.StateDir); err != nil {
		return n, err
	}
	if err := c.attach(n.NS, fmt.Sprintf("n%d", i), n.IP); err != nil {
		return n, fmt.Errorf("%s namespace: %w", n.Name, err)
	}
	err := ipIn(n.NS, "route", "add", "default", "via", BridgeIP.String(), "dev", "eth0")
	if err == nil {
		err = InNS(n.NS, func() error { return WriteSysctl("net/ipv4/ip_forward", "1") })
	}
	if err != nil {
		return n, fmt.Errorf("%s: %w", n.Name, err)
	}
	return n, n.StartAgent()
}

// Endpoint is the node's WireGuard endpoint on the underlay.
func (n *Node) Endpoint() netip.AddrPort { return netip.AddrPortFrom(n.IP, WireGuardPort) }

// StartAgent starts (or restarts) the node's agent process.
func (n *Node) StartAgent() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.starts++
	args := []string{"agent", "--name", n.Name, "--control-plane", n.c.ControlPlaneList(), "--policy", n.Policy,
		"--state-dir", n.StateDir, "--endpoint", n.Endpoint().String(), "--device", n.Device,
		"--socket", n.Socket, "--workload-socket", n.WorkloadSocket, "--pod-metadata", n.PodMetadata,
		"--metrics-listen", n.c.AgentMetricsListen,
		"--cni-conf-dir", "", // never install the CNI plugin into the host's /etc/cni (AddCNIPod execs it itself)
		"--force-userspace"}
	switch n.Opts.TEE {
	case "", TEESimSnp:
		args = append(args, "--sim-dir", n.c.SimDir)
	case TEESimTDX:
		if n.c.SimTDXDir == "" {
			return fmt.Errorf("%s: TEE sim-tdx, but cluster %s has no simulated TDX CA (Options.SimTDX)", n.Name, n.c.Prefix)
		}
		args = append(args, "--sim-dir", n.c.SimTDXDir, "--sim-tee", TEESimTDX)
	default:
		return fmt.Errorf("%s: unknown simulated TEE %q", n.Name, n.Opts.TEE)
	}
	if n.Opts.SimDebug {
		args = append(args, "--sim-debug")
	}
	if n.Opts.SimMeasurement != "" {
		args = append(args, "--sim-measurement", n.Opts.SimMeasurement)
	}
	if n.Opts.KeyRotation > 0 {
		args = append(args, "--key-rotation", n.Opts.KeyRotation.String())
	}
	if n.c.AgentLogLevel != "" {
		args = append(args, "--log-level", n.c.AgentLogLevel)
	}
	args = append(args, n.Opts.AgentArgs...) // last: a test's own flags win
	log := filepath.Join(n.c.Dir, fmt.Sprintf("%s-agent-%d.log", n.Name, n.starts))
	p, err := n.c.start(fmt.Sprintf("%s agent (start %d)", n.Name, n.starts), log, n.NS, args...)
	if err != nil {
		return err
	}
	n.proc = p
	return nil
}

// Agent is the node's current agent process.
func (n *Node) Agent() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// StopAgent stops the agent with SIGTERM (bounded, then SIGKILL). The
// device, the datapath and the strict rules stay, by design.
func (n *Node) StopAgent() error { return n.Agent().Stop() }

// WaitReady waits until the agent reports attested and ready with a pod
// CIDR, and records the pod CIDR and WireGuard key.
func (n *Node) WaitReady() error {
	var last *Status
	err := Eventually(ReadyTimeout, PollEvery, func() error {
		if done, werr := n.Agent().Exited(); done {
			return Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		st, err := n.Status()
		if err != nil {
			return err
		}
		last = st
		if !st.Attested || !st.Ready || st.PodCIDR == "" {
			return fmt.Errorf("attested=%v ready=%v reason=%q podCIDR=%q", st.Attested, st.Ready, st.ReadyReason, st.PodCIDR)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s not ready: %v\nlast status: %+v\n%s", n.Name, err, last, Tail(n.Agent().Log, 30))
	}
	pfx, err := netip.ParsePrefix(last.PodCIDR)
	if err != nil {
		return fmt.Errorf("%s: pod CIDR %q: %v", n.Name, last.PodCIDR, err)
	}
	key, err := KeyFromHex(last.WireGuardKey)
	if err != nil {
		return fmt.Errorf("%s: WireGuard key: %v", n.Name, err)
	}
	n.mu.Lock()
	n.PodCIDR, n.Key = pfx, key
	n.mu.Unlock()
	return nil
}

// SetPodMetadata records in the node's pod-metadata file (which only root
// can write: the node's state directory is 0700) that pod namespace/name
// runs as serviceAccount, replacing an earlier entry for it.
func (n *Node) SetPodMetadata(namespace, name, serviceAccount string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.podMeta = slices.DeleteFunc(n.podMeta, func(e podmeta.Entry) bool { return e.Namespace == namespace && e.Name == name })
	n.podMeta = append(n.podMeta, podmeta.Entry{Namespace: namespace, Name: name, ServiceAccount: serviceAccount})
	return podmeta.WriteFile(n.PodMetadata, n.podMeta)
}
