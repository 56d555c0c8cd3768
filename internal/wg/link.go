package wg

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// setupLink sets the MTU, adds missing addresses and brings the link up.
// On an adopted device each step is a no-op when already in place.
func (d *Device) setupLink() error {
	l, err := d.nl.LinkByName(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("look up link: %w", err)
	}
	if d.cfg.MTU > 0 && l.Attrs().MTU != d.cfg.MTU {
		if err := d.nl.LinkSetMTU(l, d.cfg.MTU); err != nil {
			return fmt.Errorf("set MTU %d: %w", d.cfg.MTU, err)
		}
	}
	have, err := listRetry(func() ([]netlink.Addr, error) { return d.nl.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	present := make(map[netip.Prefix]bool, len(have))
	for _, a := range have {
		if p, ok := prefixOf(a.IPNet); ok {
			present[p] = true
		}
	}
	for _, p := range d.cfg.Addresses {
		if present[p] {
			continue
		}
		if err := d.nl.AddrReplace(l, &netlink.Addr{IPNet: ipNet(p)}); err != nil {
			return fmt.Errorf("add address %s: %w", p, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("set link up: %w", err)
		}
	}
	return nil
}

// ipNet converts p; the address keeps its host bits (an interface address).
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().Unmap().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().Unmap().BitLen())}
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
