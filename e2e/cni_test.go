//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestCNIPodsTalkThroughTunnel (issue 5): pods made by the real
// confmesh-cni plugin (ADD run in the node's namespace against the node's
// agent socket; the agent allocates the address) on two nodes exchange UDP
// and TCP in both directions, their addresses are in their nodes' pod
// CIDRs, and `confmesh status` on each node shows the other as its one
// verified peer. A pod ADD on a node whose agent the control plane refuses
// (--sim-debug, never attested) fails with CNI code 11 (try again later).
func TestCNIPodsTalkThroughTunnel(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	rogue := c.AddNode(NodeOptions{SimDebug: true})
	a, b := c.AddPod(n1), c.AddPod(n2)
	for _, p := range []*Pod{a, b} {
		if !p.CNI || !p.Node.PodCIDR.Contains(p.IP) || p.IP == p.Node.PodCIDR.Masked().Addr() {
			t.Errorf("pod %s: CNI=%v address %s, want a plugin-made pod with a host address of %s", p.Name, p.CNI, p.IP, p.Node.PodCIDR)
		}
	}
	for _, pair := range [][2]*Pod{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		if err := netlab.SendUDP(from, to, netlab.RandomPayload("udp "+from.Name+" to "+to.Name, 32), 10*time.Second); err != nil {
			t.Errorf("UDP %s -> %s: %v", from.Name, to.Name, err)
		}
		req := netlab.RandomPayload("tcp request "+from.Name, 2000)
		resp := netlab.RandomPayload("tcp reply "+to.Name, 3000)
		if err := netlab.ExchangeTCP(from, to, req, resp, 10*time.Second); err != nil {
			t.Errorf("TCP %s -> %s: %v", from.Name, to.Name, err)
		}
	}
	for _, n := range []*Node{n1, n2} {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		other := others([]*Node{n1, n2}, n)[0]
		if len(st.Peers) != 1 || st.Peers[0].Name != other.Name || st.Peers[0].State != "verified" {
			t.Errorf("%s: status peers %+v, want exactly %s verified", n.Name, st.Peers, other.Name)
		}
	}

	// The rogue's agent answers on its socket but is never attested.
	err := netlab.Eventually(10*time.Second, netlab.PollEvery, func() error {
		st, err := rogue.Status()
		if err != nil {
			return err
		}
		if st.Attested || st.Ready {
			return netlab.Permanent(fmt.Errorf("%s: attested=%v ready=%v, want neither", rogue.Name, st.Attested, st.Ready))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.Cluster.AddCNIPod(rogue.Node, PodSpec{})
	var ce *netlab.CNIError
	switch {
	case err == nil:
		t.Errorf("pod ADD on unattested %s succeeded (address %s), want CNI error 11", rogue.Name, p.IP)
	case !errors.As(err, &ce):
		t.Errorf("pod ADD on unattested %s: %v, want a CNI error result", rogue.Name, err)
	case ce.Code != 11:
		t.Errorf("pod ADD on unattested %s: %v, want CNI code 11", rogue.Name, ce)
	default:
		t.Logf("pod ADD on unattested %s refused as expected: %v", rogue.Name, ce)
	}
}
