package connpool

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
)

// server accepts on a limited loopback listener and keeps what it accepts.
type server struct {
	l *Listener

	mu       sync.Mutex
	accepted []net.Conn
	refused  map[string]int
	closed   map[string]int
}

func startServer(t *testing.T, cfg Config) *server {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{refused: map[string]int{}, closed: map[string]int{}}
	cfg.Refused = func(r string) { s.mu.Lock(); s.refused[r]++; s.mu.Unlock() }
	cfg.Closed = func(r string) { s.mu.Lock(); s.closed[r]++; s.mu.Unlock() }
	if s.l, err = New(raw, cfg); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, c)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		s.l.Close()
		<-done
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.accepted {
			c.Close()
		}
	})
	return s
}

func (s *server) count(m map[string]int, r string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return m[r]
}

// waitCount polls until m counts want of r (10 s): the listener reports a
// refusal or a close after closing the connection, so a client may see
// the close before it is counted.
func (s *server) waitCount(t *testing.T, m map[string]int, r string, want int, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.count(m, r) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s counted as %s: %d, want %d", what, r, s.count(m, r), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// dial connects from src and reports whether the server kept the
// connection: it shows up among the accepted ones (kept), or the client
// sees it closed before that (refused at accept).
func dial(t *testing.T, s *server, src string) (net.Conn, bool) {
	t.Helper()
	c := connect(t, s, src)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if s.has(c) {
			return c, true
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			return c, false
		}
	}
	t.Fatalf("the connection from %s was neither accepted nor closed within 10s", src)
	return nil, false
}

// has reports whether the server accepted the client connection c.
func (s *server) has(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range s.accepted {
		if a.RemoteAddr().String() == c.LocalAddr().String() {
			return true
		}
	}
	return false
}

func connect(t *testing.T, s *server, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", s.l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialRaw connects from src and waits until the server accepted it.
func dialRaw(t *testing.T, s *server, src string) net.Conn {
	t.Helper()
	c := connect(t, s, src)
	deadline := time.Now().Add(10 * time.Second)
	for !s.has(c) {
		if time.Now().After(deadline) {
			t.Fatalf("the server did not accept the connection from %s", src)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return c
}

// closedByServer waits up to 10 s for c to be closed from the other end.
func closedByServer(c net.Conn) bool {
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || (err != nil && !isTimeout(err))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// waitStats polls the listener until cond holds (10 s).
func waitStats(t *testing.T, l *Listener, what string, cond func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond(l.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats %+v", what, l.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestUnauthenticatedPoolFairShare: when the pool is full, a source that
// holds fewer connections than the heaviest displaces the heaviest
// source's oldest; the heaviest source's own newcomers are refused.
func TestUnauthenticatedPoolFairShare(t *testing.T) {
	s := startServer(t, Config{MaxUnauthenticated: 4})
	var flood []net.Conn
	for i := 0; i < 4; i++ {
		c, kept := dial(t, s, "127.0.0.2")
		if !kept {
			t.Fatalf("flood connection %d refused below the pool size", i+1)
		}
		flood = append(flood, c)
	}
	if _, kept := dial(t, s, "127.0.0.2"); kept {
		t.Fatal("the heaviest source got a 5th connection into a full pool")
	}
	s.waitCount(t, s.refused, RefusedUnauthenticated, 1, "refusals")
	if _, kept := dial(t, s, "127.0.0.1"); !kept {
		t.Fatal("a light source was refused by a pool one heavy source filled")
	}
	if !closedByServer(flood[0]) {
		t.Fatal("the heaviest source's oldest connection was not closed to make room")
	}
	s.waitCount(t, s.closed, ClosedEvicted, 1, "closes")
	if st := s.l.Stats(); st.Total != 4 || st.Unauthenticated != 4 {
		t.Fatalf("stats %+v, want 4 connections, all unauthenticated", st)
	}
	// An authenticated connection leaves the pool: room for one more.
	if !s.l.Authenticated(acceptedFrom(t, s, "127.0.0.1")) {
		t.Fatal("Authenticated did not find the connection")
	}
	if st := s.l.Stats(); st.Total != 4 || st.Unauthenticated != 3 {
		t.Fatalf("stats %+v after authenticating one, want 4 connections, 3 unauthenticated", st)
	}
	if _, kept := dial(t, s, "127.0.0.2"); !kept {
		t.Fatal("the pool had room but refused")
	}
}

// acceptedFrom returns the server-side addresses of the accepted
// connection from src.
func acceptedFrom(t *testing.T, s *server, src string) (remote, local net.Addr) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.accepted {
		if connlimit.Source(c.RemoteAddr()) == src {
			return c.RemoteAddr(), c.LocalAddr()
		}
	}
	t.Fatalf("no accepted connection from %s", src)
	return nil, nil
}

// TestIdleTimeout: an unauthenticated connection is closed after the idle
// timeout, a Touch restarts its clock, and an authenticated one is kept
// however long it is idle.
func TestIdleTimeout(t *testing.T) {
	const idle = time.Second
	s := startServer(t, Config{IdleTimeout: idle})
	start := time.Now()
	idler := dialRaw(t, s, "127.0.0.2")
	toucher := dialRaw(t, s, "127.0.0.3")
	authed := dialRaw(t, s, "127.0.0.4")
	s.l.Authenticated(acceptedFrom(t, s, "127.0.0.4"))
	stopTouch := make(chan struct{})
	touched := make(chan struct{})
	go func() {
		defer close(touched)
		r, l := acceptedFrom(t, s, "127.0.0.3")
		for {
			select {
			case <-stopTouch:
				return
			case <-time.After(idle / 4):
				s.l.Touch(r, l)
			}
		}
	}()
	if !closedByServer(idler) {
		t.Fatal("the idle unauthenticated connection was not closed")
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("closed after %s, before the idle timeout %s", d, idle)
	}
	// Three idle timeouts later the touched and the authenticated
	// connections are still open.
	time.Sleep(3 * idle) // the property is "nothing happens": no condition to poll
	for name, c := range map[string]net.Conn{"touched": toucher, "authenticated": authed} {
		c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			t.Fatalf("the %s connection was closed: %v", name, err)
		}
	}
	close(stopTouch)
	<-touched
	if !closedByServer(toucher) {
		t.Fatal("the touched connection was not closed once the touches stopped")
	}
	s.waitCount(t, s.closed, ClosedIdle, 2, "closes")
	if st := s.l.Stats(); st.Total != 1 || st.Unauthenticated != 0 {
		t.Fatalf("stats %+v, want the authenticated connection only", st)
	}
}

func TestValidate(t *testing.T) {
	if err := (Config{MaxUnauthenticated: -1}).Validate(); err == nil {
		t.Fatal("a negative limit was accepted")
	}
	if _, err := New(nil, Config{IdleTimeout: -time.Second}); err == nil {
		t.Fatal("New accepted a negative idle timeout")
	}
}
