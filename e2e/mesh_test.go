//go:build linux

package e2e

import (
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestFullMeshAndTraffic: three attested nodes form a full mesh (each has
// exactly the other two as WireGuard peers, allowed IPs = their pod CIDRs,
// endpoints = their underlay addresses) and pods on different nodes
// exchange UDP and TCP payloads in both directions.
func TestFullMeshAndTraffic(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 3})
	for _, n := range c.Nodes {
		if err := n.CheckPeers(others(c.Nodes, n)...); err != nil {
			t.Errorf("wgctrl: %v", err)
		}
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.Product != "Milan" {
			t.Errorf("%s status: product %q, want Milan (the simulated chip's product, from its own verified evidence)", n.Name, st.Product)
		}
		if st.Datapath != "userspace" || !st.StrictMode || !st.TrustsSimulatedRoot {
			t.Errorf("%s status: datapath=%q strictMode=%v trustsSimulatedRoot=%v, want userspace, true, true", n.Name, st.Datapath, st.StrictMode, st.TrustsSimulatedRoot)
		}
		verified := 0
		for _, p := range st.Peers {
			if p.State == "verified" {
				verified++
			} else {
				t.Errorf("%s: peer %s is %s: %s", n.Name, p.Name, p.State, p.Reason)
			}
		}
		if verified != 2 {
			t.Errorf("%s: %d verified peers in status, want 2", n.Name, verified)
		}
	}

	pods := []*Pod{c.AddPod(c.Nodes[0]), c.AddPod(c.Nodes[1]), c.AddPod(c.Nodes[2])}
	for i, a := range pods {
		for j, b := range pods {
			if i == j {
				continue
			}
			if err := netlab.SendUDP(a, b, netlab.RandomPayload("udp "+a.Name+" to "+b.Name, 32), 10*time.Second); err != nil {
				t.Errorf("UDP %s -> %s: %v", a.Name, b.Name, err)
			}
			req := netlab.RandomPayload("tcp request "+a.Name+" to "+b.Name, 2000)
			resp := netlab.RandomPayload("tcp reply "+b.Name+" to "+a.Name, 3000)
			if err := netlab.ExchangeTCP(a, b, req, resp, 10*time.Second); err != nil {
				t.Errorf("TCP %s -> %s: %v", a.Name, b.Name, err)
			}
		}
	}
}
