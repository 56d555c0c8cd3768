//go:build linux

package e2e

import (
	"fmt"
	"net/netip"
)

// setupUnderlay creates the underlay namespace with its bridge, which also
// has the address every node uses as its default gateway.
func (c *Cluster) setupUnderlay() error {
	c.Underlay = c.Prefix + "-ul"
	c.trackNS(c.Underlay)
	if err := addNetns(c.Underlay); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"link", "add", c.Bridge, "type", "bridge"},
		{"addr", "add", fmt.Sprintf("%s/%d", bridgeIP, underlayBits), "dev", c.Bridge},
		{"link", "set", c.Bridge, "up"},
	} {
		if err := ipIn(c.Underlay, args...); err != nil {
			return err
		}
	}
	return nil
}

// attach creates netns name with a veth eth0 (address addr) whose peer,
// port, is a port of the underlay bridge.
func (c *Cluster) attach(name, port string, addr netip.Addr) error {
	c.trackNS(name)
	if err := addNetns(name); err != nil {
		return err
	}
	for _, step := range []struct {
		ns   string
		args []string
	}{
		{name, []string{"link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", c.Underlay}},
		{c.Underlay, []string{"link", "set", port, "master", c.Bridge}},
		{c.Underlay, []string{"link", "set", port, "up"}},
		{name, []string{"addr", "add", fmt.Sprintf("%s/%d", addr, underlayBits), "dev", "eth0"}},
		{name, []string{"link", "set", "eth0", "up"}},
	} {
		if err := ipIn(step.ns, step.args...); err != nil {
			return err
		}
	}
	return nil
}
