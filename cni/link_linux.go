package cni

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// The pod side of an attachment is a veth named CNI_IFNAME holding the pod
// address as a /32 (/128), a link-scope route to the gateway and a default
// route via it. The host side is a veth named HostVethName(...) holding the
// gateway address as a /32 (so the node answers the pod's ARP for the
// gateway on that link even where no WireGuard device carries it, as in
// ptp) and a link-scope /32 route to the pod. Everything else (forwarding
// to other nodes through the WireGuard device, strict rules) is the agent's.

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// linkExistsIn reports whether netns has a link called name.
func linkExistsIn(netns ns.NetNS, name string) (bool, error) {
	var exists bool
	err := netns.Do(func(ns.NetNS) error {
		_, err := netlinksafe.LinkByName(name)
		if isNotFound(err) {
			return nil
		}
		exists = err == nil
		return err
	})
	return exists, err
}

// setupVeth creates and addresses the pair; it is called from the host
// network namespace.
func setupVeth(netns ns.NetNS, ifname, hostVeth string, mtu int, addr, gw netip.Addr) (*current.Interface, *current.Interface, error) {
	hostNS, err := ns.GetCurrentNS()
	if err != nil {
		return nil, nil, err
	}
	defer hostNS.Close()
	// A host veth of this very attachment can only be left from an ADD
	// whose DEL never came and whose container is gone: it is in the way.
	if err := deleteHostVeth(hostVeth); err != nil {
		return nil, nil, err
	}
	if gw.Is4() {
		if err := ip.EnableIP4Forward(); err != nil {
			return nil, nil, fmt.Errorf("enable IPv4 forwarding: %w", err)
		}
	} else if err := ip.EnableIP6Forward(); err != nil {
		return nil, nil, fmt.Errorf("enable IPv6 forwarding: %w", err)
	}
	hostIf, contIf := &current.Interface{}, &current.Interface{}
	err = netns.Do(func(ns.NetNS) error {
		h, c, err := ip.SetupVethWithName(ifname, hostVeth, mtu, "", hostNS)
		if err != nil {
			if errors.Is(err, os.ErrExist) || errors.Is(err, syscall.EEXIST) {
				return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME: %v", err), "")
			}
			return err
		}
		hostIf.Name, hostIf.Mac = h.Name, h.HardwareAddr.String()
		contIf.Name, contIf.Mac, contIf.Sandbox = c.Name, c.HardwareAddr.String(), netns.Path()
		link, err := netlinksafe.LinkByName(ifname)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up: %w", ifname, err)
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(addr)}); err != nil {
			return fmt.Errorf("add %s to %s: %w", addr, ifname, err)
		}
		idx := link.Attrs().Index
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: hostPrefix(gw), Scope: netlink.SCOPE_LINK}); err != nil {
			return fmt.Errorf("route to gateway %s: %w", gw, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	link, err := netlinksafe.LinkByName(hostVeth)
	if err != nil {
		return nil, nil, fmt.Errorf("host veth %s: %w", hostVeth, err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(gw)}); err != nil && !errors.Is(err, syscall.EEXIST) {
		return nil, nil, fmt.Errorf("add gateway %s to %s: %w", gw, hostVeth, err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostPrefix(addr), Scope: netlink.SCOPE_LINK}); err != nil {
		return nil, nil, fmt.Errorf("route to pod %s via %s: %w", addr, hostVeth, err)
	}
	return hostIf, contIf, nil
}

// deleteHostVeth removes a host veth (and so its peer); a missing one is fine.
func deleteHostVeth(name string) error {
	link, err := netlinksafe.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, ok := link.(*netlink.Veth); !ok {
		return fmt.Errorf("%s is a %s, not a veth: not deleting it", name, link.Type())
	}
	if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// teardown removes an attachment's veth pair: through the host side, whose
// name is derived, and then the container side if one is somehow left. A
// netns that is gone (or no longer a netns) means nothing is left there.
func teardown(netnsPath, ifname, hostVeth string) error {
	if err := deleteHostVeth(hostVeth); err != nil {
		return err
	}
	if netnsPath == "" {
		return nil
	}
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(ifname)
		if isNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, ok := link.(*netlink.Veth); !ok {
			return nil // not ours
		}
		if err := netlink.LinkDel(link); err != nil && !isNotFound(err) {
			return fmt.Errorf("delete %s: %w", ifname, err)
		}
		return nil
	})
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	if errors.As(err, &notExist) || errors.As(err, &notNS) {
		return nil
	}
	return err
}

// expected is what CHECK looks for, taken from prevResult.
type expected struct {
	ifname, mac       string
	hostVeth, hostMac string
	addr, gw          netip.Addr
	routes            []*types.Route // prevResult routes via our gateway
}

func expectedFromResult(res *current.Result, netnsPath, ifname, hostVeth string) (expected, error) {
	w := expected{ifname: ifname, hostVeth: hostVeth}
	idx := -1
	for i, intf := range res.Interfaces {
		switch {
		case intf.Name == ifname && intf.Sandbox == netnsPath:
			idx, w.mac = i, intf.Mac
		case intf.Name == hostVeth && intf.Sandbox == "":
			w.hostMac = intf.Mac
		}
	}
	if idx < 0 {
		return w, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("prevResult lists no interface %s in %s", ifname, netnsPath), "")
	}
	for _, c := range res.IPs {
		if c.Interface == nil || *c.Interface != idx {
			continue
		}
		a, ok1 := netip.AddrFromSlice(c.Address.IP)
		g, ok2 := netip.AddrFromSlice(c.Gateway)
		if !ok1 || !ok2 {
			return w, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("prevResult address %s of %s has no gateway", c.Address.String(), ifname), "")
		}
		w.addr, w.gw = a.Unmap(), g.Unmap()
	}
	if !w.addr.IsValid() {
		return w, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("prevResult lists no address for %s", ifname), "")
	}
	for _, r := range res.Routes {
		if g, ok := netip.AddrFromSlice(r.GW); ok && g.Unmap() == w.gw {
			w.routes = append(w.routes, r)
		}
	}
	return w, nil
}

// checkVeth verifies both ends of the pair against want; it is called from
// the host network namespace.
func checkVeth(netns ns.NetNS, w expected) error {
	var peerIndex int
	err := netns.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName(w.ifname)
		if err != nil {
			return fmt.Errorf("interface %s: %w", w.ifname, err)
		}
		if _, ok := link.(*netlink.Veth); !ok {
			return fmt.Errorf("interface %s is a %s, not a veth", w.ifname, link.Type())
		}
		if w.mac != "" && link.Attrs().HardwareAddr.String() != w.mac {
			return fmt.Errorf("interface %s has MAC %s, prevResult says %s", w.ifname, link.Attrs().HardwareAddr, w.mac)
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("interface %s is down", w.ifname)
		}
		peerIndex = link.Attrs().ParentIndex
		if err := hasAddr(link, w.addr); err != nil {
			return err
		}
		routes, err := netlinksafe.RouteList(link, family(w.addr))
		if err != nil {
			return fmt.Errorf("routes of %s: %w", w.ifname, err)
		}
		if !hasRoute(routes, netip.PrefixFrom(w.gw, w.gw.BitLen()), netip.Addr{}) {
			return fmt.Errorf("no route to gateway %s on %s", w.gw, w.ifname)
		}
		for _, r := range w.routes {
			dst, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if !hasRoute(routes, netip.PrefixFrom(dst.Unmap(), ones), w.gw) {
				return fmt.Errorf("no route to %s via %s on %s", r.Dst.String(), w.gw, w.ifname)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	host, err := netlinksafe.LinkByName(w.hostVeth)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", w.hostVeth, err)
	}
	if host.Attrs().Index != peerIndex {
		return fmt.Errorf("host veth %s is not the peer of %s", w.hostVeth, w.ifname)
	}
	if w.hostMac != "" && host.Attrs().HardwareAddr.String() != w.hostMac {
		return fmt.Errorf("host veth %s has MAC %s, prevResult says %s", w.hostVeth, host.Attrs().HardwareAddr, w.hostMac)
	}
	if err := hasAddr(host, w.gw); err != nil {
		return err
	}
	routes, err := netlinksafe.RouteList(host, family(w.addr))
	if err != nil {
		return fmt.Errorf("routes of %s: %w", w.hostVeth, err)
	}
	if !hasRoute(routes, netip.PrefixFrom(w.addr, w.addr.BitLen()), netip.Addr{}) {
		return fmt.Errorf("no host route to pod %s via %s", w.addr, w.hostVeth)
	}
	return nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func hasAddr(link netlink.Link, a netip.Addr) error {
	addrs, err := netlinksafe.AddrList(link, family(a))
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", link.Attrs().Name, err)
	}
	for _, x := range addrs {
		got, ok := netip.AddrFromSlice(x.IP)
		ones, _ := x.Mask.Size()
		if ok && got.Unmap() == a && ones == a.BitLen() {
			return nil
		}
	}
	return fmt.Errorf("%s does not hold %s/%d", link.Attrs().Name, a, a.BitLen())
}

// hasRoute looks for a route to dst (via gw when gw is valid).
func hasRoute(routes []netlink.Route, dst netip.Prefix, gw netip.Addr) bool {
	for _, r := range routes {
		var d netip.Prefix
		if r.Dst == nil {
			d = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if dst.Addr().Is6() {
				d = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
		} else {
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			d = netip.PrefixFrom(a.Unmap(), ones)
		}
		if d != dst {
			continue
		}
		g, _ := netip.AddrFromSlice(r.Gw)
		if !gw.IsValid() || g.Unmap() == gw {
			return true
		}
	}
	return false
}
