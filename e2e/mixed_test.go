//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestMixedSNPAndTDXMesh: a node on simulated SEV-SNP and a node on
// simulated TDX verify each other's evidence (each under its own policy,
// which trusts both simulated roots) and mesh; pods on them exchange UDP
// and TCP through the tunnel. A third node on sim-tdx with the debug bit is
// refused by the control plane.
func TestMixedSNPAndTDXMesh(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2, NodeTEEs: []string{netlab.TEESimSnp, netlab.TEESimTDX}})
	snp, tdx := c.Nodes[0], c.Nodes[1]
	for _, n := range c.Nodes {
		if err := n.CheckPeers(others(c.Nodes, n)...); err != nil {
			t.Errorf("wgctrl: %v", err)
		}
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Peers) != 1 || st.Peers[0].State != "verified" {
			t.Fatalf("%s peers: %+v", n.Name, st.Peers)
		}
	}
	stS, _ := snp.Status()
	stT, _ := tdx.Status()
	if stS.Peers[0].Name != tdx.Name || stT.Peers[0].Name != snp.Name {
		t.Errorf("peers: %s sees %s, %s sees %s", snp.Name, stS.Peers[0].Name, tdx.Name, stT.Peers[0].Name)
	}
	if stS.Product != "Milan" || stT.Product != "TDX" {
		t.Errorf("own products: %s says %q, %s says %q; want Milan and TDX (each from its own evidence, verified under its own policy)", snp.Name, stS.Product, tdx.Name, stT.Product)
	}
	if stS.Peers[0].Product != "TDX" || stT.Peers[0].Product != "Milan" {
		t.Errorf("peer products: %s sees %q, %s sees %q; want TDX and Milan", snp.Name, stS.Peers[0].Product, tdx.Name, stT.Peers[0].Product)
	}
	t.Logf("%s (sim-snp) status: %+v", snp.Name, stS.Peers[0])
	t.Logf("%s (sim-tdx) status: %+v", tdx.Name, stT.Peers[0])

	a, b := c.AddPod(snp), c.AddPod(tdx)
	for _, pr := range [][2]*Pod{{a, b}, {b, a}} {
		if err := netlab.SendUDP(pr[0], pr[1], netlab.RandomPayload("udp "+pr[0].Name, 32), 10*time.Second); err != nil {
			t.Errorf("UDP %s -> %s: %v", pr[0].Name, pr[1].Name, err)
		}
		if err := netlab.ExchangeTCP(pr[0], pr[1], netlab.RandomPayload("tcp req", 2000), netlab.RandomPayload("tcp resp", 3000), 10*time.Second); err != nil {
			t.Errorf("TCP %s -> %s: %v", pr[0].Name, pr[1].Name, err)
		}
	}

	// A debug TD is refused, by name, and no honest node gets it as a peer.
	rogue := c.AddNode(NodeOptions{TEE: netlab.TEESimTDX, SimDebug: true})
	err := netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
		if done, werr := rogue.Agent().Exited(); done {
			return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		st, err := rogue.Status()
		if err != nil {
			return err
		}
		if st.Attested {
			return netlab.Permanent(fmt.Errorf("debug TD attested"))
		}
		if !strings.Contains(st.ReadyReason, "debug") {
			return fmt.Errorf("ready reason %q does not name debug yet", st.ReadyReason)
		}
		t.Logf("%s (sim-tdx, debug): %q", rogue.Name, st.ReadyReason)
		return nil
	})
	if err != nil {
		t.Fatalf("debug TD: %v", err)
	}
	for _, n := range c.Nodes[:2] {
		if err := n.CheckPeers(others(c.Nodes[:2], n)...); err != nil {
			t.Errorf("after the debug TD: %v", err)
		}
	}
}
