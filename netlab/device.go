//go:build linux

package netlab

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WGDevice reads the node's WireGuard device with wgctrl inside its namespace.
func (n *Node) WGDevice() (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := InNS(n.NS, func() error {
		wc, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer wc.Close()
		dev, err = wc.Device(n.Device)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: wgctrl %s: %w", n.Name, n.Device, err)
	}
	return dev, nil
}

// HasPeerKey reports whether k is among the node's WireGuard peers.
func (n *Node) HasPeerKey(k wgtypes.Key) (bool, error) {
	dev, err := n.WGDevice()
	if err != nil {
		return false, err
	}
	for _, p := range dev.Peers {
		if p.PublicKey == k {
			return true, nil
		}
	}
	return false, nil
}

// DeviceRoutes lists the destinations routed through the node's WireGuard
// device (main table, IPv4), read with netlink in its namespace.
func (n *Node) DeviceRoutes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := InNS(n.NS, func() error {
		link, err := netlink.LinkByName(n.Device)
		if err != nil {
			return err
		}
		routes, err := netlink.RouteList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			if r.Dst == nil {
				continue
			}
			a, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			p := netip.PrefixFrom(a.Unmap(), ones)
			if p.Bits() < p.Addr().BitLen() { // not the device's own /32
				out = append(out, p)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: routes via %s: %w", n.Name, n.Device, err)
	}
	return out, nil
}

// StrictCounters reads the strict-mode drop counters (packets) in the
// node's namespace.
func (n *Node) StrictCounters() (out, in uint64, err error) {
	err = InNS(n.NS, func() error {
		var e error
		out, in, e = netfilter.Counters(agent.DefaultTable)
		return e
	})
	return out, in, err
}

// DatapathPID reads the datapath's PID file.
func (n *Node) DatapathPID() (int, error) {
	return ReadPIDFile(filepath.Join(n.StateDir, "datapath.pid"))
}

// KeyFromHex parses a WireGuard key written as hex (`confmesh status -o json`).
func KeyFromHex(h string) (wgtypes.Key, error) {
	b, err := hex.DecodeString(h)
	if err != nil {
		return wgtypes.Key{}, err
	}
	return wgtypes.NewKey(b)
}

// RoutingRefuses reports whether the node's routing table refuses dst: the
// route lookup ends at an unreachable route (strict mode's fail-closed
// route for the cluster CIDR) instead of a device.
func (n *Node) RoutingRefuses(dst netip.Addr) (bool, error) {
	var refused bool
	err := InNS(n.NS, func() error {
		_, err := netlink.RouteGet(dst.AsSlice())
		switch {
		case errors.Is(err, unix.EHOSTUNREACH), errors.Is(err, unix.ENETUNREACH):
			refused = true
			return nil
		case err != nil:
			return fmt.Errorf("%s: route get %s: %w", n.Name, dst, err)
		}
		return nil
	})
	return refused, err
}
