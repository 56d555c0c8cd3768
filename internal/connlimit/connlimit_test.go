package connlimit

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// server accepts on a Listener and reports each connection's fate, so a
// test knows, without timing, whether a dial was admitted or refused.
type server struct {
	l        *Listener
	accepted chan net.Conn
	refused  chan string
}

func serve(t *testing.T, network, addr string, cfg Config) *server {
	t.Helper()
	raw, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{accepted: make(chan net.Conn, 64), refused: make(chan string, 64)}
	cfg.OnRefuse = func(_, reason string) { s.refused <- reason }
	s.l = New(raw, cfg)
	go func() {
		for {
			c, err := s.l.Accept()
			if err != nil {
				return
			}
			s.accepted <- c
		}
	}()
	t.Cleanup(func() { s.l.Close() })
	return s
}

// dial connects from source (a loopback address, "" for any) and returns
// the server's side of the connection, or the reason it was refused.
func (s *server) dial(t *testing.T, source string) (net.Conn, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if source != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(source)}
	}
	addr := s.l.Addr()
	c, err := d.Dial(addr.Network(), addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	select {
	case sc := <-s.accepted:
		return sc, ""
	case r := <-s.refused:
		// A refused connection is closed at once: the client reads EOF.
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err == nil {
			t.Errorf("refused connection: read %d, %v; want EOF", n, err)
		}
		return nil, r
	case <-time.After(10 * time.Second):
		t.Fatal("connection neither accepted nor refused")
		return nil, ""
	}
}

func byRemoteIP(c net.Conn) string {
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	return host
}

func TestPerKeyAndTotalCaps(t *testing.T) {
	s := serve(t, "tcp", "127.0.0.1:0", Config{Key: byRemoteIP, PerKey: 3, Total: 5})
	var held []net.Conn
	for i := range 5 {
		c, reason := s.dial(t, "127.0.0.1")
		switch {
		case i < 3 && c == nil:
			t.Fatalf("connection %d from 127.0.0.1 refused (%s) under the per-caller cap 3", i, reason)
		case i >= 3 && reason != ReasonPerKey:
			t.Fatalf("connection %d from 127.0.0.1: refused %q, want %q", i, reason, ReasonPerKey)
		}
		if c != nil {
			held = append(held, c)
		}
	}
	// Another caller fills the total, then is refused for the total.
	for i := range 3 {
		c, reason := s.dial(t, "127.0.0.2")
		switch {
		case i < 2 && c == nil:
			t.Fatalf("connection %d from 127.0.0.2 refused (%s) under the total cap 5", i, reason)
		case i == 2 && reason != ReasonTotal:
			t.Fatalf("connection %d from 127.0.0.2: refused %q, want %q", i, reason, ReasonTotal)
		}
	}
	st := s.l.Stats()
	if st.Open != 5 || st.Keys != 2 || st.MaxKey != 3 || st.Refused[ReasonPerKey] != 2 || st.Refused[ReasonTotal] != 1 || st.Cap != 5 {
		t.Fatalf("stats %+v; want 5 open by 2 keys (at most 3), 2 per-caller and 1 total refusal", st)
	}
	if got := s.l.OpenByKey(); len(got) != 2 || got[0] != (KeyCount{"127.0.0.1", 3}) || got[1] != (KeyCount{"127.0.0.2", 2}) {
		t.Fatalf("open by key %v", got)
	}
	// A closed connection gives its slot back, once however often it is closed.
	held[0].Close()
	held[0].Close()
	if st := s.l.Stats(); st.Open != 4 {
		t.Fatalf("after closing one connection twice: %d open, want 4", st.Open)
	}
	if c, reason := s.dial(t, "127.0.0.1"); c == nil {
		t.Fatalf("after a slot was freed: refused (%s)", reason)
	}
	if c, reason := s.dial(t, "127.0.0.1"); reason != ReasonPerKey {
		t.Fatalf("fourth open connection of 127.0.0.1: %v %q, want refused %q", c, reason, ReasonPerKey)
	}
}

func TestTotalCap(t *testing.T) {
	for _, c := range []struct {
		total int
		share float64
		limit uint64
		want  int
	}{
		{0, 0, 1024, 0},           // no caps
		{100, 0, 1024, 100},       // no share
		{0, 0.25, 1024, 256},      // share only
		{100, 0.25, 1024, 100},    // total below the share
		{1000, 0.25, 1024, 256},   // share below the total
		{1000, 0.25, 0, 1000},     // limit unknown
		{0, 0.25, 2, 1},           // at least one
		{10, 5, 4, 4},             // a share above 1 counts as 1
		{0, 0.5, 1 << 40, 0},      // unrepresentable: no cap by the share
		{7, 0.5, 1 << 40, 7},      // ... but the total holds
		{2048, 0.25, 65536, 2048}, // the agent's defaults on a typical limit
	} {
		if got := TotalCap(c.total, c.share, c.limit); got != c.want {
			t.Errorf("TotalCap(%d, %v, %d) = %d, want %d", c.total, c.share, c.limit, got, c.want)
		}
	}
}

// TestFDShare: the total follows the process's real RLIMIT_NOFILE.
func TestFDShare(t *testing.T) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	share := 2.5 / float64(r.Cur) // two connections
	s := serve(t, "tcp", "127.0.0.1:0", Config{FDShare: share, Total: 100})
	if st := s.l.Stats(); st.Cap != 2 {
		t.Fatalf("cap %d with RLIMIT_NOFILE %d and share %v; want 2", st.Cap, r.Cur, share)
	}
	for i := range 2 {
		if c, reason := s.dial(t, ""); c == nil {
			t.Fatalf("connection %d refused (%s)", i, reason)
		}
	}
	if _, reason := s.dial(t, ""); reason != ReasonTotal {
		t.Fatalf("third connection: refused %q, want %q", reason, ReasonTotal)
	}
}

// TestUnixPeerCred: on a unix socket the key function and the server see
// the real connection: SO_PEERCRED names this process.
func TestUnixPeerCred(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	var keyPID int32
	s := serve(t, "unix", sock, Config{PerKey: 1, Key: func(c net.Conn) string {
		keyPID = peerPID(t, c)
		return "me"
	}})
	c, _ := s.dial(t, "")
	if c == nil {
		t.Fatal("refused")
	}
	if _, ok := c.(syscall.Conn); !ok {
		t.Fatalf("%T does not implement syscall.Conn", c)
	}
	if got := peerPID(t, c); got != int32(os.Getpid()) || keyPID != got {
		t.Fatalf("SO_PEERCRED pid %d (key function saw %d), want %d", got, keyPID, os.Getpid())
	}
	if _, reason := s.dial(t, ""); reason != ReasonPerKey {
		t.Fatalf("second connection of the same caller: %q, want %q", reason, ReasonPerKey)
	}
}

func peerPID(t *testing.T, c net.Conn) int32 {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var pid int32
	if err := raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err == nil {
			pid = cred.Pid
		}
	}); err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestSource(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.7:1234":             "192.0.2.7",
		"[::ffff:192.0.2.7]:1":       "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
	} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := Source(a); got != want {
			t.Errorf("Source(%s) = %s, want %s", addr, got, want)
		}
	}
}
