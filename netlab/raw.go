//go:build linux

package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// SpoofedUDP builds an IPv4/UDP packet with any source address: what an
// attacker hands a raw socket. The IPv4 header checksum is computed; the
// UDP checksum is left zero (optional in IPv4).
func SpoofedUDP(src, dst netip.AddrPort, payload []byte) ([]byte, error) {
	if !src.Addr().Is4() || !dst.Addr().Is4() {
		return nil, errors.New("SpoofedUDP: IPv4 addresses only")
	}
	total := 20 + 8 + len(payload)
	if total > 65535 {
		return nil, fmt.Errorf("SpoofedUDP: %d bytes do not fit one IPv4 packet", total)
	}
	b := make([]byte, total)
	b[0] = 0x45 // version 4, header of 5 words
	binary.BigEndian.PutUint16(b[2:4], uint16(total))
	binary.BigEndian.PutUint16(b[6:8], 0x4000) // don't fragment
	b[8] = 64                                  // TTL
	b[9] = ProtoUDP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	binary.BigEndian.PutUint16(b[10:12], ipChecksum(b[:20]))
	binary.BigEndian.PutUint16(b[20:22], src.Port())
	binary.BigEndian.PutUint16(b[22:24], dst.Port())
	binary.BigEndian.PutUint16(b[24:26], uint16(8+len(payload)))
	copy(b[28:], payload)
	return b, nil
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// SendSpoofedUDP sends count copies of a UDP datagram with source src to
// dst from inside netns, through a raw IPv4 socket (IPPROTO_RAW: the
// header is ours, so the source can be anything). The kernel of netns
// routes the packet by dst as usual.
func SendSpoofedUDP(netns string, src, dst netip.AddrPort, payload []byte, count int) error {
	pkt, err := SpoofedUDP(src, dst, payload)
	if err != nil {
		return err
	}
	fd := -1
	err = InNS(netns, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		return err
	})
	if err != nil {
		return fmt.Errorf("raw socket in %s: %w", netns, err)
	}
	defer unix.Close(fd)
	to := &unix.SockaddrInet4{Addr: dst.Addr().As4()}
	for range count {
		if err := unix.Sendto(fd, pkt, 0, to); err != nil {
			return fmt.Errorf("send %s -> %s from %s: %w", src, dst, netns, err)
		}
	}
	return nil
}
