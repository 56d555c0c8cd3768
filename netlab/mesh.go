//go:build linux

package netlab

import (
	"fmt"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WaitMesh waits until every node in nodes has exactly the others as
// WireGuard peers, each with its pod CIDR as allowed IPs and its underlay
// endpoint.
func (c *Cluster) WaitMesh(nodes ...*Node) error {
	err := Eventually(MeshTimeout, PollEvery, func() error {
		var errs []string
		for _, n := range nodes {
			if err := n.CheckPeers(Others(nodes, n)...); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("no full mesh: %w", err)
	}
	return nil
}

// Others is nodes without n.
func Others(nodes []*Node, n *Node) []*Node {
	var out []*Node
	for _, m := range nodes {
		if m != n {
			out = append(out, m)
		}
	}
	return out
}

// CheckPeers compares the node's WireGuard peers (wgctrl in its namespace)
// with want: the same keys, and for each the peer's pod CIDR as the only
// allowed IPs and its underlay endpoint.
func (n *Node) CheckPeers(want ...*Node) error {
	dev, err := n.WGDevice()
	if err != nil {
		return err
	}
	got := map[wgtypes.Key]wgtypes.Peer{}
	for _, p := range dev.Peers {
		got[p.PublicKey] = p
	}
	var problems []string
	for _, w := range want {
		p, ok := got[w.Key]
		if !ok {
			problems = append(problems, "missing "+w.Name)
			continue
		}
		delete(got, w.Key)
		var allowed []string
		for _, a := range p.AllowedIPs {
			allowed = append(allowed, a.String())
		}
		if len(allowed) != 1 || allowed[0] != w.PodCIDR.String() {
			problems = append(problems, fmt.Sprintf("%s allowed IPs %v, want [%s]", w.Name, allowed, w.PodCIDR))
		}
		if p.Endpoint == nil || p.Endpoint.String() != w.Endpoint().String() {
			problems = append(problems, fmt.Sprintf("%s endpoint %v, want %s", w.Name, p.Endpoint, w.Endpoint()))
		}
	}
	for k := range got {
		problems = append(problems, fmt.Sprintf("unexpected peer %s (%s)", k, n.c.nameOfKey(k)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s: %s", n.Name, strings.Join(problems, ", "))
	}
	return nil
}

// nameOfKey names the node whose WireGuard key is k, if known.
func (c *Cluster) nameOfKey(k wgtypes.Key) string {
	for _, n := range c.Nodes() {
		if n.Key == k {
			return n.Name
		}
	}
	return "unknown node"
}
