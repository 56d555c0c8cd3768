package agent

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// InterfaceMTU returns the MTU of the interface that holds addr (the
// node's underlay address), so the WireGuard device's MTU follows the
// underlay instead of a number written into a manifest.
func InterfaceMTU(addr netip.Addr) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return 0, fmt.Errorf("addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr.Unmap() {
				return l.Attrs().MTU, nil
			}
		}
	}
	return 0, fmt.Errorf("no interface holds %s", addr)
}
