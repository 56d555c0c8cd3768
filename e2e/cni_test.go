//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"strings"
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

// TestCNIFromWrongNamespaceRefused (issue 9, item 9): the real plugin run
// from a network namespace that is not the node's (as a misconfigured
// runtime, or the host in a test setup, would) against the node's real
// agent socket is refused with CNI error 101 naming both namespaces,
// before it changes anything: ip_forward in that namespace stays 0, no
// interface appears there or in the pod, and the node still networks pods
// normally afterwards.
func TestCNIFromWrongNamespaceRefused(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 1})
	n1 := c.Nodes[0]
	wrong, err := c.AddNamespace("wrong")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.InNS(wrong, func() error { return netlab.WriteSysctl("net/ipv4/ip_forward", "0") }); err != nil {
		t.Fatal(err)
	}
	linksBefore, err := netlab.Links(wrong)
	if err != nil {
		t.Fatal(err)
	}
	p, err := c.AddCNIPodFrom(wrong, n1.Node, PodSpec{})
	var ce *netlab.CNIError
	switch {
	case err == nil:
		t.Errorf("ADD from namespace %s (not %s's) succeeded: pod %s got %s", wrong, n1.Name, p.Name, p.IP)
	case !errors.As(err, &ce):
		t.Errorf("ADD from namespace %s: %v, want a CNI error result", wrong, err)
	case ce.Code != 101 || !strings.Contains(ce.Msg, "network namespace"):
		t.Errorf("ADD from namespace %s: %v, want CNI error 101 naming the network namespace", wrong, ce)
	default:
		t.Logf("ADD from %s refused: %v", wrong, ce)
	}
	if v, err := netlab.ReadSysctl(wrong, "net/ipv4/ip_forward"); err != nil || v != "0" {
		t.Errorf("net.ipv4.ip_forward in %s is %q (%v) after the ADD, want 0 (untouched)", wrong, v, err)
	}
	if after, err := netlab.Links(wrong); err != nil || len(after) != len(linksBefore) {
		t.Errorf("interfaces in %s: before %v, after %v (%v)", wrong, linksBefore, after, err)
	}
	podNS := fmt.Sprintf("%sp%d", n1.NS, 1) // the namespace AddCNIPodFrom made for the pod
	if links, err := netlab.Links(podNS); err != nil || len(links) != 1 {
		t.Errorf("interfaces in the pod namespace %s: %v (%v), want only lo", podNS, links, err)
	}

	// The refusal cost nothing: a pod ADD from the node's own namespace works.
	a := c.AddPod(n1)
	if !n1.PodCIDR.Contains(a.IP) {
		t.Errorf("pod %s got %s, not in %s", a.Name, a.IP, n1.PodCIDR)
	}
}
