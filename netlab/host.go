//go:build linux

package netlab

import (
	"fmt"
	"net/netip"
)

// AddUnderlayHost creates a network namespace of the cluster named
// <prefix>-<suffix>, plugged into the underlay bridge like a node (veth
// eth0 with addr/UnderlayBits, bridge port named port) but running no
// agent: a host for traffic that bypasses confmesh (a plaintext baseline,
// another tunnel). Teardown deletes it.
func (c *Cluster) AddUnderlayHost(suffix, port string, addr netip.Addr) (string, error) {
	if c.Underlay == "" {
		return "", fmt.Errorf("netlab: AddUnderlayHost(%s) before the underlay exists (Start first)", suffix)
	}
	name := c.Prefix + "-" + suffix
	if err := c.attach(name, port, addr); err != nil {
		return name, fmt.Errorf("underlay host %s: %w", name, err)
	}
	return name, nil
}

// StartProcess starts argv in the network namespace netns as a process of
// the cluster, its output appended to log: Teardown stops it by PID
// (SIGTERM, then SIGKILL) before it removes the namespaces.
func (c *Cluster) StartProcess(name, log, netns string, argv ...string) (*Process, error) {
	p, err := StartProcess(ProcessSpec{Name: name, Log: log, NetNS: netns, Argv: argv, OwnGroup: c.OwnProcessGroup})
	if err != nil {
		return nil, err
	}
	c.trackProc(p)
	return p, nil
}

// IPIn runs `ip -n NETNS ARGS...` (bounded by CommandTimeout).
func IPIn(netns string, args ...string) error { return ipIn(netns, args...) }
