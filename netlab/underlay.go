//go:build linux

package netlab

import (
	"net/netip"
	"strings"
	"time"
)

var linkLocalMulticast = netip.MustParsePrefix("224.0.0.0/24")

// StartCapture captures on the cluster's underlay bridge for at most max.
func (c *Cluster) StartCapture(max time.Duration) (*Capture, error) {
	return StartCapture(c.Underlay, c.Bridge, max)
}

// UnderlayViolations lists the frames (summarized) that are not what the
// underlay may carry: ARP, WireGuard (UDP 51820 <-> 51820) between node
// addresses, TCP between a node and a control-plane replica's port 7443, and the
// kernel's IGMP membership reports to link-local multicast (224.0.0.0/24,
// the bridge's address sends them). Anything else, including IPv6 (off in
// every namespace) and any packet to or from another address, is a
// violation.
func (c *Cluster) UnderlayViolations(frames []Frame) []string {
	nodes, cps := map[netip.Addr]bool{}, map[netip.Addr]bool{}
	for _, n := range c.Nodes() {
		nodes[n.IP] = true
	}
	for _, cp := range c.ControlPlanes() {
		cps[cp.IP] = true
	}
	var bad []Frame
	for _, f := range frames {
		p := Parse(f)
		ok := false
		switch {
		case p.EtherType == EtherARP:
			ok = true
		case p.EtherType != EtherIPv4:
		case p.Proto == ProtoIGMP:
			ok = linkLocalMulticast.Contains(p.Dst)
		case nodes[p.Src] && nodes[p.Dst]:
			ok = p.Proto == ProtoUDP && p.SrcPort == WireGuardPort && p.DstPort == WireGuardPort
		case nodes[p.Src] && cps[p.Dst]:
			ok = p.Proto == ProtoTCP && p.DstPort == ControlPlanePort
		case cps[p.Src] && nodes[p.Dst]:
			ok = p.Proto == ProtoTCP && p.SrcPort == ControlPlanePort
		}
		if !ok {
			bad = append(bad, f)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(Summarize(bad), "\n"), "\n")
}
