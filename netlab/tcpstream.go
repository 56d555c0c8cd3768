//go:build linux

package netlab

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// tcpRecordSize is the size of one TCPStream record: an 8-byte sequence
// number, an 8-byte stream token and a filler derived from both.
const tcpRecordSize = 64

// TCPStream writes count sequence-numbered records, one every interval,
// over one TCP connection from one pod to a listener in another; the
// receiver checks that every record arrives, in order and intact, and then
// acknowledges the count. Any error on either side (a reset, a timeout, a
// gap, a reordering) is reported by Finish.
type TCPStream struct {
	From, To *Pod
	count    int
	sent     atomic.Int64
	received atomic.Int64
	sendErr  chan error
	recvErr  chan error
}

func tcpRecord(token uint64, seq int) []byte {
	b := make([]byte, tcpRecordSize)
	binary.BigEndian.PutUint64(b[0:8], uint64(seq))
	binary.BigEndian.PutUint64(b[8:16], token)
	for i := 16; i < tcpRecordSize; i++ {
		b[i] = byte(uint64(seq)*31 + token>>(i%8) + uint64(i))
	}
	return b
}

// StartTCPStream connects (retrying while WireGuard may still be shaking
// hands, at most 10 s) and starts the stream in the background; the whole
// stream, acknowledgement included, must finish within
// count*interval + slack.
func StartTCPStream(from, to *Pod, count int, interval, slack time.Duration) (*TCPStream, error) {
	addr := netip.AddrPortFrom(to.IP, RandomPort())
	var lis *net.TCPListener
	err := InNS(to.NS, func() error {
		var err error
		lis, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s in %s: %w", addr, to.NS, err)
	}
	var conn net.Conn
	err = Eventually(10*time.Second, 100*time.Millisecond, func() error {
		return InNS(from.NS, func() error {
			var err error
			conn, err = net.DialTimeout("tcp4", addr.String(), time.Second)
			return err
		})
	})
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("tcp %s -> %s (%s): %w", from.Name, to.Name, addr, err)
	}
	_ = lis.SetDeadline(time.Now().Add(5 * time.Second))
	srv, err := lis.Accept()
	lis.Close()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("tcp %s: accept: %w", to.Name, err)
	}
	var tok [8]byte
	copy(tok[:], RandomPayload("", 8)[1:])
	token := binary.BigEndian.Uint64(tok[:])
	deadline := time.Now().Add(time.Duration(count)*interval + slack)
	_ = conn.SetDeadline(deadline)
	_ = srv.SetDeadline(deadline)
	s := &TCPStream{From: from, To: to, count: count, sendErr: make(chan error, 1), recvErr: make(chan error, 1)}

	go func() { // receiver
		defer srv.Close()
		r := bufio.NewReader(srv)
		got := make([]byte, tcpRecordSize)
		for i := range count {
			if _, err := io.ReadFull(r, got); err != nil {
				s.recvErr <- fmt.Errorf("receiver: record %d: %w", i, err)
				return
			}
			if want := tcpRecord(token, i); !bytes.Equal(got, want) {
				s.recvErr <- fmt.Errorf("receiver: record %d: got seq %d (token ok: %v), want seq %d intact",
					i, binary.BigEndian.Uint64(got[0:8]), bytes.Equal(got[8:16], want[8:16]), i)
				return
			}
			s.received.Add(1)
		}
		if n, err := r.Read(got[:1]); n != 0 || !errors.Is(err, io.EOF) {
			s.recvErr <- fmt.Errorf("receiver: after %d records: want EOF, got %d bytes, %v", count, n, err)
			return
		}
		_, err := fmt.Fprintf(srv, "ok %d\n", count)
		s.recvErr <- err
	}()

	go func() { // sender
		defer conn.Close()
		t := time.NewTicker(interval)
		defer t.Stop()
		for i := range count {
			if _, err := conn.Write(tcpRecord(token, i)); err != nil {
				s.sendErr <- fmt.Errorf("sender: record %d: %w", i, err)
				return
			}
			s.sent.Add(1)
			<-t.C
		}
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			s.sendErr <- fmt.Errorf("sender: close write: %w", err)
			return
		}
		ack, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			s.sendErr <- fmt.Errorf("sender: reading the receiver's acknowledgement: %w", err)
			return
		}
		if want := fmt.Sprintf("ok %d\n", count); ack != want {
			s.sendErr <- fmt.Errorf("sender: acknowledgement %q, want %q", ack, want)
			return
		}
		s.sendErr <- nil
	}()
	return s, nil
}

// Sent is how many records have been written so far.
func (s *TCPStream) Sent() int { return int(s.sent.Load()) }

// Received is how many records arrived intact and in order so far.
func (s *TCPStream) Received() int { return int(s.received.Load()) }

// Finish waits for both ends (they are bounded by the stream's deadline)
// and returns every error either saw.
func (s *TCPStream) Finish() error {
	return errors.Join(<-s.sendErr, <-s.recvErr)
}
