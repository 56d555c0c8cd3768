package agent

import (
	"net"
	"net/netip"
	"slices"
	"sort"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeepaliveInterval keeps NAT and conntrack state warm and makes a fresh
// handshake follow a key change promptly.
const KeepaliveInterval = 25 * time.Second

// DesiredPeer is a peer that passed local verification: the only kind the
// device may carry.
type DesiredPeer struct {
	Name       string
	PublicKey  wgtypes.Key
	Endpoint   netip.AddrPort
	AllowedIPs []netip.Prefix
}

// Plan is what the loop must do to the device to reach the desired state.
type Plan struct {
	// Changes are incremental wgctrl peer changes (never replace-all).
	Changes []wgtypes.PeerConfig
	// Routes are the prefixes that must be routed through the device.
	Routes []netip.Prefix
}

// Reconcile is the pure step from (desired, current device peers) to a
// plan: remove peers nobody vouches for, add new ones, update endpoint or
// allowed IPs of changed ones, leave the rest alone (so their sessions and
// handshakes are undisturbed). A key change is a removal plus an addition.
func Reconcile(desired []DesiredPeer, current []wgtypes.Peer) Plan {
	want := make(map[wgtypes.Key]DesiredPeer, len(desired))
	for _, d := range desired {
		want[d.PublicKey] = d
	}
	have := make(map[wgtypes.Key]wgtypes.Peer, len(current))
	for _, c := range current {
		have[c.PublicKey] = c
	}
	var plan Plan
	for _, c := range current {
		if _, ok := want[c.PublicKey]; !ok {
			plan.Changes = append(plan.Changes, wgtypes.PeerConfig{PublicKey: c.PublicKey, Remove: true})
		}
	}
	for _, d := range desired {
		c, ok := have[d.PublicKey]
		switch {
		case !ok:
			plan.Changes = append(plan.Changes, peerConfig(d, false))
		case !sameEndpoint(c.Endpoint, d.Endpoint) || !samePrefixes(c.AllowedIPs, d.AllowedIPs):
			plan.Changes = append(plan.Changes, peerConfig(d, true))
		}
		plan.Routes = append(plan.Routes, d.AllowedIPs...)
	}
	sort.Slice(plan.Changes, func(i, j int) bool {
		// Removals first, so a prefix moving between keys never overlaps.
		if plan.Changes[i].Remove != plan.Changes[j].Remove {
			return plan.Changes[i].Remove
		}
		return plan.Changes[i].PublicKey.String() < plan.Changes[j].PublicKey.String()
	})
	slices.SortFunc(plan.Routes, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	plan.Routes = slices.Compact(plan.Routes)
	return plan
}

func peerConfig(d DesiredPeer, update bool) wgtypes.PeerConfig {
	keepalive := KeepaliveInterval
	pc := wgtypes.PeerConfig{
		PublicKey:                   d.PublicKey,
		UpdateOnly:                  update,
		ReplaceAllowedIPs:           true,
		PersistentKeepaliveInterval: &keepalive,
	}
	if d.Endpoint.IsValid() {
		pc.Endpoint = net.UDPAddrFromAddrPort(d.Endpoint)
	}
	for _, p := range d.AllowedIPs {
		pc.AllowedIPs = append(pc.AllowedIPs, net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return pc
}

func sameEndpoint(have *net.UDPAddr, want netip.AddrPort) bool {
	if have == nil {
		return !want.IsValid()
	}
	ap := have.AddrPort()
	return ap.Addr().Unmap() == want.Addr().Unmap() && ap.Port() == want.Port()
}

func samePrefixes(have []net.IPNet, want []netip.Prefix) bool {
	if len(have) != len(want) {
		return false
	}
	set := map[netip.Prefix]bool{}
	for _, n := range have {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			return false
		}
		ones, _ := n.Mask.Size()
		set[netip.PrefixFrom(a.Unmap(), ones)] = true
	}
	for _, p := range want {
		if !set[p] {
			return false
		}
	}
	return true
}

// Gateway is the node-side address of pod veths and of the WireGuard
// device: the first host address of the node's pod CIDR.
func Gateway(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr().Next() }
