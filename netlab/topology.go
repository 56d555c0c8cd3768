//go:build linux

package netlab

import (
	"fmt"
	"net/netip"
)

// Underlay addressing: the control plane, node i, and the bridge (the
// nodes' default gateway, so that a packet a node would leak in plaintext
// is really sent, and seen on the bridge).
const (
	UnderlayBits     = 24
	ControlPlanePort = 7443
	WireGuardPort    = 51820
)

var (
	// ControlPlaneIP is the control plane's underlay address.
	ControlPlaneIP = netip.MustParseAddr("198.18.0.1")
	// BridgeIP is the underlay bridge's address, every node's default gateway.
	BridgeIP  = netip.MustParseAddr("198.18.0.254")
	nodeIPMin = 10 // node i is 198.18.0.(10+i)
)

// MaxReplicas is how many control-plane replicas fit below the nodes'
// addresses (and leave 198.18.0.9 for a service they share).
const MaxReplicas = 8

// ReplicaIP is control-plane replica k's (from 0) underlay address,
// 198.18.0.(1+k): replica 0 is ControlPlaneIP.
func ReplicaIP(k int) netip.Addr {
	b := ControlPlaneIP.As4()
	b[3] = byte(int(b[3]) + k)
	return netip.AddrFrom4(b)
}

// SharedServiceIP is the underlay address a test may give a service the
// control-plane replicas share (an API server): AttachNS.
var SharedServiceIP = netip.MustParseAddr("198.18.0.9")

// NodeIP is node i's underlay address, 198.18.0.(10+i).
func NodeIP(i int) netip.Addr {
	b := ControlPlaneIP.As4()
	b[3] = byte(nodeIPMin + i)
	return netip.AddrFrom4(b)
}

// setupUnderlay creates the underlay namespace with its bridge, which also
// has the address every node uses as its default gateway.
func (c *Cluster) setupUnderlay() error {
	c.Underlay = c.Prefix + "-ul"
	c.trackNS(c.Underlay)
	if err := AddNetns(c.Underlay); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "add", c.Bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", BridgeIP, UnderlayBits), "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	} {
		if err := ipIn(c.Underlay, args...); err != nil {
			return err
		}
	}
	return nil
}

// AttachNS creates network namespace name (the cluster's: torn down with
// it) with a veth eth0 holding addr on the underlay; port names the veth's
// bridge end (at most 15 bytes). For a service of the test's own, e.g. an
// API server the control-plane replicas share (SharedServiceIP).
func (c *Cluster) AttachNS(name, port string, addr netip.Addr) error {
	return c.attach(name, port, addr)
}

// attach creates netns name with a veth eth0 (address addr) whose peer,
// port, is a port of the underlay bridge.
func (c *Cluster) attach(name, port string, addr netip.Addr) error {
	c.trackNS(name)
	if err := AddNetns(name); err != nil {
		return err
	}
	for _, step := range []struct {
		ns   string
		args []string
	}{
		{name, []string{"link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", c.Underlay}},
		{c.Underlay, []string{"link", "set", port, "master", c.Bridge}},
		{c.Underlay, []string{"link", "set", port, "up"}},
		{name, []string{"addr", "add", fmt.Sprintf("%s/%d", addr, UnderlayBits), "dev", "eth0"}},
		{name, []string{"link", "set", "eth0", "up"}},
	} {
		if err := ipIn(step.ns, step.args...); err != nil {
			return err
		}
	}
	return nil
}
