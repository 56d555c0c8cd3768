//go:build linux

package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"net"
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
