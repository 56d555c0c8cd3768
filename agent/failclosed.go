package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FailClosedMetric is the metric of the fail-closed routes: an
// "unreachable" route for each cluster CIDR, so that a cluster address
// without a more specific route (a peer's pod CIDR through the WireGuard
// device, a local pod's /32 on its veth) is refused by the routing table
// itself instead of following the default route onto the underlay. The
// longest prefix wins whatever the metric, so the more specific routes
// always take precedence; the high metric only keeps the route out of the
// way of an operator's own route for the same prefix (which strict mode's
// out chain still checks).
const FailClosedMetric = 0x7fffffff

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func failClosedRoute(p netip.Prefix) *netlink.Route {
	return &netlink.Route{
		Dst: ipNet(p), Type: unix.RTN_UNREACHABLE, Priority: FailClosedMetric,
		Table: unix.RT_TABLE_MAIN, Protocol: unix.RTPROT_STATIC, Family: family(p),
	}
}

func routeDst(r netlink.Route) (netip.Prefix, bool) {
	if r.Dst == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), ok
}

// failClosedRoutes lists the fail-closed routes in the main table.
func failClosedRoutes(fam int) ([]netlink.Route, error) {
	rs, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_UNREACHABLE},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	if err != nil {
		return nil, err
	}
	out := rs[:0]
	for _, r := range rs {
		if r.Priority == FailClosedMetric {
			out = append(out, r)
		}
	}
	return out, nil
}

// ensureFailClosedRoutes adds the fail-closed route of every cluster CIDR
// that lacks one and returns how many it added.
func ensureFailClosedRoutes(cidrs []netip.Prefix) (int, error) {
	added := 0
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		var want []netip.Prefix
		for _, c := range cidrs {
			if family(c) == fam {
				want = append(want, c)
			}
		}
		if len(want) == 0 {
			continue
		}
		have, err := failClosedRoutes(fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("list routes: %w", err))
			continue
		}
		present := map[netip.Prefix]bool{}
		for _, r := range have {
			if p, ok := routeDst(r); ok {
				present[p] = true
			}
		}
		for _, c := range want {
			if present[c.Masked()] {
				continue
			}
			if err := netlink.RouteReplace(failClosedRoute(c.Masked())); err != nil {
				errs = append(errs, fmt.Errorf("unreachable %s metric %d: %w", c, FailClosedMetric, err))
				continue
			}
			added++
		}
	}
	return added, errors.Join(errs...)
}

// RemoveFailClosedRoutes deletes every fail-closed route (`confmesh agent
// cleanup`); none is not an error.
func RemoveFailClosedRoutes() error {
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := failClosedRoutes(fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, r := range rs {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete unreachable %s: %w", r.Dst, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ensurePodRoutes restores the host route of every pod whose veth exists
// and is up but whose /32 (/128) route through it is gone (the CNI plugin adds it at
// ADD), and returns how many it restored.
func ensurePodRoutes(pods []netfilter.Pod) (int, error) {
	if len(pods) == 0 {
		return 0, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	// Only veths that are up: the plugin brings the host side up before it
	// adds the route, and takes it down or away at DEL, so a down veth is
	// a pod being created or removed, and it cannot carry a route anyway.
	index := map[string]int{}
	for _, l := range links {
		if l.Attrs().Flags&net.FlagUp != 0 {
			index[l.Attrs().Name] = l.Attrs().Index
		}
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	type key struct {
		link int
		dst  netip.Prefix
	}
	have := map[key]bool{}
	for _, r := range routes {
		if p, ok := routeDst(r); ok {
			have[key{r.LinkIndex, p}] = true
		}
	}
	restored := 0
	var errs []error
	for _, p := range pods {
		idx, ok := index[p.Interface]
		if !ok {
			continue // the veth is not there (yet, or any more)
		}
		dst := netip.PrefixFrom(p.Addr, p.Addr.BitLen())
		if have[key{idx, dst}] {
			continue
		}
		r := &netlink.Route{LinkIndex: idx, Dst: ipNet(dst), Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN, Family: family(dst)}
		if err := netlink.RouteReplace(r); err != nil {
			if errors.Is(err, unix.ENETDOWN) || errors.Is(err, unix.ENODEV) {
				continue // went down or away since the listing: a pod being removed
			}
			errs = append(errs, fmt.Errorf("route %s dev %s: %w", dst, p.Interface, err))
			continue
		}
		restored++
	}
	return restored, errors.Join(errs...)
}

// subscribeRoutes signals (capacity 1, never blocking) on every route
// deletion in the agent's network namespace, until ctx ends. Without a
// subscription the periodic check still repairs routes.
func subscribeRoutes(ctx context.Context, log *slog.Logger) <-chan struct{} {
	out := make(chan struct{}, 1)
	updates := make(chan netlink.RouteUpdate, 64)
	err := netlink.RouteSubscribeWithOptions(updates, ctx.Done(), netlink.RouteSubscribeOptions{
		ErrorCallback: func(err error) { log.Debug("route notifications", "err", err) },
	})
	if err != nil {
		log.Warn("strict mode: no route change notifications; checking every interval only", "err", err)
		return out
	}
	go func() {
		for u := range updates {
			if u.Type != unix.RTM_DELROUTE {
				continue
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}
