//go:build linux

package e2e

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of a capture.
const (
	captureMaxFrames = 200000
	captureMaxBytes  = 256 << 20
	captureRcvBuf    = 32 << 20
)

// Frame is one captured Ethernet frame.
type Frame struct {
	Data     []byte
	Outgoing bool // sent by the bridge itself (PACKET_OUTGOING)
}

// Capture collects every frame crossing a Linux bridge: an AF_PACKET raw
// socket bound to the bridge, with the bridge in promiscuous mode (so the
// bridge also passes up the frames it forwards between its ports, not only
// those addressed to itself).
type Capture struct {
	fd   int
	stop chan struct{}
	done chan struct{}

	mu     sync.Mutex
	frames []Frame
	bytes  int
	capped bool
	err    error
}

// StartCapture starts capturing on ifname inside netns for at most max.
func StartCapture(netns, ifname string, max time.Duration) (*Capture, error) {
	fd := -1
	err := InNS(netns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		if fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto)); err != nil {
			return fmt.Errorf("AF_PACKET socket: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, captureRcvBuf); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
			return fmt.Errorf("bind to %s: %w", ifname, err)
		}
		mreq := &unix.PacketMreq{Ifindex: int32(ifi.Index), Type: unix.PACKET_MR_PROMISC}
		if err := unix.SetsockoptPacketMreq(fd, unix.SOL_PACKET, unix.PACKET_ADD_MEMBERSHIP, mreq); err != nil {
			return fmt.Errorf("promiscuous mode on %s: %w", ifname, err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("capture on %s in %s: %w", ifname, netns, err)
	}
	// Frames queued between bind and now belong to the capture too.
	c := &Capture{fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop(time.Now().Add(max))
	return c, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (c *Capture) loop(deadline time.Time) {
	defer close(c.done)
	buf := make([]byte, 1<<17) // GSO frames from wireguard-go can be up to 64 KiB
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		if time.Now().After(deadline) {
			return
		}
		n, from, err := unix.Recvfrom(c.fd, buf, unix.MSG_TRUNC)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		c.mu.Lock()
		if n > len(buf) {
			c.err = fmt.Errorf("frame of %d bytes truncated to %d", n, len(buf))
			n = len(buf)
		}
		if len(c.frames) >= captureMaxFrames || c.bytes+n > captureMaxBytes {
			c.capped = true
			c.mu.Unlock()
			return
		}
		out := false
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			out = true
		}
		c.frames = append(c.frames, Frame{Data: bytes.Clone(buf[:n]), Outgoing: out})
		c.bytes += n
		c.mu.Unlock()
	}
}

// Stop ends the capture and returns the frames. It fails when the capture
// is incomplete: the kernel dropped frames, a frame was truncated, or a
// bound was hit.
func (c *Capture) Stop() ([]Frame, error) {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
	stats, serr := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	unix.Close(c.fd)
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return c.frames, fmt.Errorf("capture: %w", c.err)
	case c.capped:
		return c.frames, fmt.Errorf("capture hit its bound (%d frames, %d bytes)", len(c.frames), c.bytes)
	case serr != nil:
		return c.frames, fmt.Errorf("capture statistics: %w", serr)
	case stats.Drops > 0:
		return c.frames, fmt.Errorf("capture incomplete: the kernel dropped %d frames", stats.Drops)
	}
	return c.frames, nil
}

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

var linkLocalMulticast = netip.MustParsePrefix("224.0.0.0/24")

// StartCapture captures on the cluster's underlay bridge for at most max.
func (c *Cluster) StartCapture(max time.Duration) *Capture {
	c.T.Helper()
	cp, err := StartCapture(c.Underlay, c.Bridge, max)
	if err != nil {
		c.T.Fatalf("e2e: %v", err)
	}
	return cp
}

// UnderlayViolations lists the frames (summarized) that are not what the
// underlay may carry: ARP, WireGuard (UDP 51820 <-> 51820) between node
// addresses, TCP between a node and the control plane's port 7443, and the
// kernel's IGMP membership reports to link-local multicast (224.0.0.0/24,
// the bridge's address sends them). Anything else, including IPv6 (off in
// every namespace) and any packet to or from another address, is a
// violation.
func (c *Cluster) UnderlayViolations(frames []Frame) []string {
	c.mu.Lock()
	nodes := map[netip.Addr]bool{}
	for _, n := range c.Nodes {
		nodes[n.IP] = true
	}
	c.mu.Unlock()
	var bad []Frame
	for _, f := range frames {
		p := Parse(f)
		ok := false
		switch {
		case p.EtherType == EtherARP:
			ok = true
		case p.EtherType != EtherIPv4:
		case p.Proto == ProtoIGMP:
			ok = linkLocalMulticast.Contains(p.Dst)
		case nodes[p.Src] && nodes[p.Dst]:
			ok = p.Proto == ProtoUDP && p.SrcPort == wgPort && p.DstPort == wgPort
		case nodes[p.Src] && p.Dst == c.CP.IP:
			ok = p.Proto == ProtoTCP && p.DstPort == cpPort
		case p.Src == c.CP.IP && nodes[p.Dst]:
			ok = p.Proto == ProtoTCP && p.SrcPort == cpPort
		}
		if !ok {
			bad = append(bad, f)
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(Summarize(bad), "\n"), "\n")
}
