package wg

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SyncRoutes makes the main-table routes through the device exactly
// prefixes: scope link, no gateway, the given MTU on each (0: none). It adds
// missing routes, replaces ones whose attributes differ, and deletes other
// routes that point at the device. Routes through other links, and the
// kernel's own routes for the device's addresses (proto kernel), are left
// alone. Each route is a single netlink change, so traffic to prefixes that
// stay never loses its route.
func (d *Device) SyncRoutes(prefixes []netip.Prefix, mtu int) error {
	unlock, err := d.open()
	if err != nil {
		return err
	}
	defer unlock()
	l, err := d.nl.LinkByName(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("sync routes: look up %s: %w", d.cfg.Name, err)
	}
	want := make(map[netip.Prefix]bool, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return fmt.Errorf("sync routes: invalid prefix %s", p)
		}
		want[p.Masked()] = true
	}
	have, err := d.deviceRoutes(l)
	if err != nil {
		return fmt.Errorf("sync routes: %w", err)
	}

	// The route that stays for a prefix is the one at metric 0 (what
	// RouteReplace below targets); any other route via the device goes.
	ok := make(map[netip.Prefix]bool, len(have))
	for _, r := range have {
		p := routePrefix(r)
		if want[p] && r.Priority == 0 {
			ok[p] = routeMatches(r, mtu)
			continue
		}
		if err := d.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("sync routes: delete %s: %w", p, err)
		}
	}
	for _, p := range sortedPrefixes(want) {
		if ok[p] {
			continue
		}
		r := &netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       ipNet(p),
			Scope:     netlink.SCOPE_LINK,
			Protocol:  unix.RTPROT_STATIC,
			Table:     unix.RT_TABLE_MAIN,
			MTU:       mtu,
		}
		if err := d.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("sync routes: route %s dev %s mtu %d: %w", p, d.cfg.Name, mtu, err)
		}
	}
	return nil
}

// Routes lists the prefixes routed through the device in the main table
// (the set SyncRoutes manages), sorted.
func (d *Device) Routes() ([]netip.Prefix, error) {
	unlock, err := d.open()
	if err != nil {
		return nil, err
	}
	defer unlock()
	l, err := d.nl.LinkByName(d.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("routes: look up %s: %w", d.cfg.Name, err)
	}
	have, err := d.deviceRoutes(l)
	if err != nil {
		return nil, fmt.Errorf("routes: %w", err)
	}
	set := make(map[netip.Prefix]bool, len(have))
	for _, r := range have {
		set[routePrefix(r)] = true
	}
	return sortedPrefixes(set), nil
}

// deviceRoutes lists the main-table unicast routes out of l, except the
// kernel's own.
func (d *Device) deviceRoutes(l netlink.Link) ([]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: l.Attrs().Index, Table: unix.RT_TABLE_MAIN}
	all, err := listRetry(func() ([]netlink.Route, error) {
		return d.nl.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes via %s: %w", d.cfg.Name, err)
	}
	out := all[:0]
	for _, r := range all {
		if r.Protocol == unix.RTPROT_KERNEL || (r.Type != 0 && r.Type != unix.RTN_UNICAST) || len(r.MultiPath) > 0 {
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

func routeMatches(r netlink.Route, mtu int) bool {
	return r.Scope == netlink.SCOPE_LINK && r.Gw == nil && r.Src == nil && r.MTU == mtu
}

// routePrefix is r's destination; a default route may come without Dst.
func routePrefix(r netlink.Route) netip.Prefix {
	if p, ok := prefixOf(r.Dst); ok {
		return p.Masked()
	}
	if r.Family == unix.AF_INET6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

func sortedPrefixes(set map[netip.Prefix]bool) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(set))
	for p, in := range set {
		if in {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}
