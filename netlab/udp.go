//go:build linux

package netlab

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxDatagrams bounds what a UDPReceiver keeps.
const maxDatagrams = 100000

// RandomPayload returns n random bytes, prefixed with tag for readable
// failures (the random part is what makes it unique on the wire).
func RandomPayload(tag string, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return append([]byte(tag+":"), b...)
}

// RandomPort picks a port in 20000-59999.
func RandomPort() uint16 {
	n, err := rand.Int(rand.Reader, big.NewInt(40000))
	if err != nil {
		panic(err)
	}
	return uint16(20000 + n.Int64())
}

// UDPReceiver collects the datagrams arriving on a UDP socket bound inside
// a network namespace.
type UDPReceiver struct {
	conn *net.UDPConn
	done chan struct{}

	mu  sync.Mutex
	got [][]byte
}

// ListenUDP binds addr inside netns and starts collecting.
func ListenUDP(netns string, addr netip.AddrPort) (*UDPReceiver, error) {
	var conn *net.UDPConn
	err := InNS(netns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, netns, err)
	}
	r := &UDPReceiver{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 65536)
		for {
			n, _, err := conn.ReadFromUDP(buf)
			if err != nil {
				return // closed
			}
			r.mu.Lock()
			if len(r.got) < maxDatagrams {
				r.got = append(r.got, bytes.Clone(buf[:n]))
			}
			r.mu.Unlock()
		}
	}()
	return r, nil
}

// Close stops collecting.
func (r *UDPReceiver) Close() {
	r.conn.Close()
	<-r.done
}

// Has reports whether a datagram equal to payload arrived.
func (r *UDPReceiver) Has(payload []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.got {
		if bytes.Equal(d, payload) {
			return true
		}
	}
	return false
}

// Datagrams returns a copy of what arrived so far.
func (r *UDPReceiver) Datagrams() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.got...)
}

// DialUDP returns a UDP socket created inside netns and connected to dst.
func DialUDP(netns string, dst netip.AddrPort) (*net.UDPConn, error) {
	var conn *net.UDPConn
	err := InNS(netns, func() error {
		var err error
		conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial udp %s from %s: %w", dst, netns, err)
	}
	return conn, nil
}

// SendUDP sends payload from pod `from` to pod `to` every 100 ms until it
// arrives or timeout passes. The first datagrams may be spent while
// WireGuard completes a handshake.
func SendUDP(from, to *Pod, payload []byte, timeout time.Duration) error {
	dst := netip.AddrPortFrom(to.IP, RandomPort())
	r, err := ListenUDP(to.NS, dst)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := DialUDP(from.NS, dst)
	if err != nil {
		return err
	}
	defer s.Close()
	var lastErr error
	err = Eventually(timeout, 100*time.Millisecond, func() error {
		if r.Has(payload) {
			return nil
		}
		if _, err := s.Write(payload); err != nil {
			lastErr = err
		}
		return fmt.Errorf("no datagram from %s (%s) at %s (%s) yet", from.Name, from.IP, to.Name, dst)
	})
	if err != nil && lastErr != nil {
		err = fmt.Errorf("%w (last send error: %v)", err, lastErr)
	}
	return err
}

// CountUDP sends count datagrams carrying payload from `from` to `to`, one
// every interval, waits grace for stragglers and returns how many arrived.
func CountUDP(from, to *Pod, payload []byte, count int, interval, grace time.Duration) (int, error) {
	dst := netip.AddrPortFrom(to.IP, RandomPort())
	r, err := ListenUDP(to.NS, dst)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	s, err := DialUDP(from.NS, dst)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	t := time.NewTicker(interval)
	defer t.Stop()
	for i := 0; i < count; i++ {
		_, _ = s.Write(payload) // errors (e.g. ICMP unreachable) mean not delivered
		<-t.C
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(r.Datagrams()) < count {
		time.Sleep(20 * time.Millisecond)
	}
	arrived := 0
	for _, d := range r.Datagrams() {
		if bytes.Equal(d, payload) {
			arrived++
		}
	}
	return arrived, nil
}
