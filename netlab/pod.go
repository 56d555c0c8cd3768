//go:build linux

package netlab

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/confmesh/confmesh/agent"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/confmesh/confmesh/internal/hostveth"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// PodMTU is the underlay MTU (1500) minus WireGuard's 60 over the lab's
// IPv4 underlay, as the CNI plugin sets it.
const PodMTU = 1500 - agent.WireGuardOverheadIPv4

// Pod is a network namespace with a veth whose pod end, eth0, holds the pod
// IP (/32) and routes everything via the node's pod gateway; the node end
// has a /32 route to the pod IP. Either the CNI plugin made it (AddCNIPod)
// or the harness did (AddHandPod).
type Pod struct {
	Name   string // <node>/pod-<k>
	NS     string
	IP     netip.Addr
	Node   *Node
	HostIf string // node end of the veth

	// Set for pods the CNI plugin made.
	CNI            bool
	ContainerID    string // CNI_CONTAINERID
	Namespace      string // K8S_POD_NAMESPACE
	PodName        string // K8S_POD_NAME
	UID            string // K8S_POD_UID
	ServiceAccount string // what the node's pod-metadata file says (PodSpec.ServiceAccount)
	deleted        bool   // DEL ran
}

// AddPod makes the next pod on node n: with the CNI plugin when the
// cluster has one (Config.CNIBin; namespace "default", name pod-<k>), by
// hand otherwise.
func (c *Cluster) AddPod(n *Node) (*Pod, error) {
	if c.CNIBin != "" {
		return c.AddCNIPod(n, PodSpec{})
	}
	return c.AddHandPod(n)
}

// AddHandPod makes the next pod on node n by hand (n must be attested: its
// pod CIDR is known), doing what the CNI plugin does with the ip command:
// the address comes from the agent's IPAM (AllocateIP on its local socket)
// and the host end of the veth gets the plugin's name for the attachment,
// so strict mode lets the pod send from its address. The agent has no pod
// record for it (so no Workload API identity).
func (c *Cluster) AddHandPod(n *Node) (*Pod, error) {
	n.mu.Lock()
	n.pods++
	k := n.pods
	cidr := n.PodCIDR
	n.mu.Unlock()
	if !cidr.IsValid() {
		return nil, fmt.Errorf("AddPod(%s): the node has no pod CIDR yet (WaitReady first)", n.Name)
	}
	ns := fmt.Sprintf("%sp%d", n.NS, k)
	addr, err := allocateIP(n.Socket, ns, "eth0")
	if err != nil {
		return nil, fmt.Errorf("AddPod(%s): %w", n.Name, err)
	}
	if !cidr.Contains(addr) {
		return nil, fmt.Errorf("AddPod(%s): the agent allocated %s, outside pod CIDR %s", n.Name, addr, cidr)
	}
	gw := agent.Gateway(cidr).String()
	p := &Pod{Name: fmt.Sprintf("%s/pod-%d", n.Name, k), NS: ns, IP: addr, Node: n, HostIf: hostveth.Name(ns, "eth0"), ContainerID: ns}
	c.trackNS(p.NS)
	if err := AddNetns(p.NS); err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	for _, step := range []struct {
		ns   string
		args []string
	}{
		{p.NS, []string{"link", "add", "eth0", "mtu", fmt.Sprint(PodMTU), "type", "veth", "peer", "name", p.HostIf, "netns", n.NS}},
		{p.NS, []string{"addr", "add", addr.String() + "/32", "dev", "eth0"}},
		{p.NS, []string{"link", "set", "eth0", "up"}},
		{p.NS, []string{"route", "add", gw, "dev", "eth0", "scope", "link"}},
		{p.NS, []string{"route", "add", "default", "via", gw, "dev", "eth0"}},
		{n.NS, []string{"link", "set", p.HostIf, "up"}},
		{n.NS, []string{"route", "add", addr.String() + "/32", "dev", p.HostIf}},
	} {
		if err := ipIn(step.ns, step.args...); err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Name, err)
		}
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	return p, nil
}

// Pods returns the cluster's pods in the order they were added.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Pod(nil), c.pods...)
}

// allocateIP asks the agent on its local socket for the address of the
// attachment (containerID, ifname), as the CNI plugin does at ADD.
func allocateIP(socket, containerID, ifname string) (netip.Addr, error) {
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("agent socket %s: %w", socket, err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	r, err := agentv1.NewAgentClient(cc).AllocateIP(ctx, &agentv1.AllocateIPRequest{ContainerId: containerID, Interface: ifname})
	if err != nil {
		return netip.Addr{}, fmt.Errorf("allocate an address from the agent at %s: %w", socket, err)
	}
	a, err := netip.ParseAddr(r.GetIp())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("agent at %s allocated %q: %w", socket, r.GetIp(), err)
	}
	return a, nil
}
