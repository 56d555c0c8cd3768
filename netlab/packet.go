//go:build linux

package netlab

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// FramesContaining counts the frames that carry payload anywhere.
func FramesContaining(frames []Frame, payload []byte) int {
	n := 0
	for _, f := range frames {
		if bytes.Contains(f.Data, payload) {
			n++
		}
	}
	return n
}

// Packet is what a frame is, as far as the underlay checks care.
type Packet struct {
	EtherType        uint16
	Proto            uint8 // IPv4 protocol
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16 // UDP and TCP, first fragment only
}

// Ether types and IP protocols the checks name.
const (
	EtherIPv4 = 0x0800
	EtherARP  = 0x0806
	EtherIPv6 = 0x86dd
	ProtoICMP = 1
	ProtoIGMP = 2
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// Parse classifies an Ethernet frame (untagged).
func Parse(f Frame) Packet {
	d := f.Data
	if len(d) < 14 {
		return Packet{}
	}
	p := Packet{EtherType: binary.BigEndian.Uint16(d[12:14])}
	if p.EtherType != EtherIPv4 || len(d) < 14+20 {
		return p
	}
	ipHdr := d[14:]
	ihl := int(ipHdr[0]&0x0f) * 4
	p.Proto = ipHdr[9]
	p.Src = netip.AddrFrom4([4]byte(ipHdr[12:16]))
	p.Dst = netip.AddrFrom4([4]byte(ipHdr[16:20]))
	fragOff := binary.BigEndian.Uint16(ipHdr[6:8]) & 0x1fff
	if fragOff == 0 && (p.Proto == ProtoTCP || p.Proto == ProtoUDP) && len(ipHdr) >= ihl+4 {
		p.SrcPort = binary.BigEndian.Uint16(ipHdr[ihl : ihl+2])
		p.DstPort = binary.BigEndian.Uint16(ipHdr[ihl+2 : ihl+4])
	}
	return p
}

// String renders the packet as "udp 198.18.0.11:51820 > 198.18.0.12:51820",
// "arp", "ipv6" or "ether 0x....".
func (p Packet) String() string {
	switch p.EtherType {
	case EtherIPv4:
	case EtherARP:
		return "arp"
	case EtherIPv6:
		return "ipv6"
	default:
		return fmt.Sprintf("ether 0x%04x", p.EtherType)
	}
	switch p.Proto {
	case ProtoUDP:
		return fmt.Sprintf("udp %s:%d > %s:%d", p.Src, p.SrcPort, p.Dst, p.DstPort)
	case ProtoTCP:
		return fmt.Sprintf("tcp %s:%d > %s:%d", p.Src, p.SrcPort, p.Dst, p.DstPort)
	case ProtoICMP:
		return fmt.Sprintf("icmp %s > %s", p.Src, p.Dst)
	case ProtoIGMP:
		return fmt.Sprintf("igmp %s > %s", p.Src, p.Dst)
	}
	return fmt.Sprintf("ip proto %d %s > %s", p.Proto, p.Src, p.Dst)
}

// Summarize counts frames by Packet.String, most frequent first, one line each.
func Summarize(frames []Frame) string {
	counts := map[string]int{}
	for _, f := range frames {
		counts[Parse(f).String()]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if counts[keys[i]] != counts[keys[j]] {
			return counts[keys[i]] > counts[keys[j]]
		}
		return keys[i] < keys[j]
	})
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %6d  %s\n", counts[k], k)
	}
	return b.String()
}

// WireGuard message types (the first byte of the UDP payload).
const (
	WGHandshakeInitiation = 1
	WGHandshakeResponse   = 2
	WGCookieReply         = 3
	WGTransportData       = 4
)

// WireGuardType is the WireGuard message type of an IPv4 UDP frame (the
// first byte of its payload), and false when the frame is no such datagram
// (not UDP, a later fragment, no payload).
func WireGuardType(f Frame) (uint8, bool) {
	p := Parse(f)
	if p.EtherType != EtherIPv4 || p.Proto != ProtoUDP || p.SrcPort == 0 {
		return 0, false
	}
	ihl := int(f.Data[14]&0x0f) * 4
	off := 14 + ihl + 8
	if len(f.Data) <= off {
		return 0, false
	}
	return f.Data[off], true
}
