//go:build linux

package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// ExchangeTCP connects from pod `from` to a listener in pod `to` (retrying
// the connection until timeout), sends req, and expects resp back; the
// listener checks it got req.
func ExchangeTCP(from, to *Pod, req, resp []byte, timeout time.Duration) error {
	addr := netip.AddrPortFrom(to.IP, RandomPort())
	var lis *net.TCPListener
	err := InNS(to.NS, func() error {
		var err error
		lis, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		return fmt.Errorf("listen tcp %s in %s: %w", addr, to.NS, err)
	}
	defer lis.Close()
	deadline := time.Now().Add(timeout)
	_ = lis.SetDeadline(deadline)
	served := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			served <- fmt.Errorf("accept: %w", err)
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(deadline)
		got := make([]byte, len(req))
		if _, err := io.ReadFull(conn, got); err != nil {
			served <- fmt.Errorf("server read: %w", err)
			return
		}
		if !bytes.Equal(got, req) {
			served <- fmt.Errorf("server got %q, want %q", got, req)
			return
		}
		_, err = conn.Write(resp)
		served <- err
	}()

	var conn net.Conn
	err = Eventually(timeout, 100*time.Millisecond, func() error {
		return InNS(from.NS, func() error {
			var err error
			conn, err = net.DialTimeout("tcp4", addr.String(), time.Second)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("tcp %s -> %s (%s): %w", from.Name, to.Name, addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write(req); err != nil {
		return fmt.Errorf("tcp %s -> %s: write: %w", from.Name, to.Name, err)
	}
	got := make([]byte, len(resp))
	if _, err := io.ReadFull(conn, got); err != nil {
		return fmt.Errorf("tcp %s -> %s: read reply: %w", from.Name, to.Name, err)
	}
	if !bytes.Equal(got, resp) {
		return fmt.Errorf("tcp %s -> %s: reply %q, want %q", from.Name, to.Name, got, resp)
	}
	select {
	case err := <-served:
		if err != nil {
			return fmt.Errorf("tcp %s -> %s: %w", from.Name, to.Name, err)
		}
	case <-time.After(time.Until(deadline)):
		return errors.New("tcp server did not finish")
	}
	return nil
}
