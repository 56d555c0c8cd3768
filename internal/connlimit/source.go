package connlimit

import (
	"net"
	"net/netip"
)

// SourceIP is the IP address a connection from a comes from, an
// IPv4-mapped IPv6 address unmapped to IPv4; ok is false when a names no
// IP address.
func SourceIP(a net.Addr) (ip netip.Addr, ok bool) {
	switch a := a.(type) {
	case nil:
		return netip.Addr{}, false
	case *net.TCPAddr:
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		ap, err := netip.ParseAddrPort(a.String())
		if err != nil {
			return netip.Addr{}, false
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	return ip, ip.IsValid()
}

// Source names the source a connection from a counts against: its IPv4
// address, or its IPv6 /64 (one host's share of a network). An address
// that names no IP is its own source ("unknown" for none).
func Source(a net.Addr) string {
	ip, ok := SourceIP(a)
	switch {
	case a == nil:
		return "unknown"
	case !ok:
		return a.String()
	case ip.Is6():
		pfx, _ := ip.Prefix(64)
		return pfx.String()
	}
	return ip.String()
}

// BySource is a Config.Key: the Source of the connection's remote address.
func BySource(c net.Conn) string { return Source(c.RemoteAddr()) }
