package datapath

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestConfigValidation(t *testing.T) {
	c, err := Config{Iface: "cm0"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.MTU != DefaultMTU || c.SocketDir != DefaultSocketDir || c.Logger == nil {
		t.Errorf("defaults: %+v", c)
	}
	if _, err := (Config{Iface: "cm0", SocketDir: "/var/run/wireguard/"}).withDefaults(); err != nil {
		t.Errorf("the default socket dir with a trailing slash: %v", err)
	}
	for _, bad := range []Config{
		{},
		{Iface: "abcdefghijklmnop"},
		{Iface: "a/b"},
		{Iface: "cm%d"},
		{Iface: ".."},
		{Iface: "cm0", MTU: 67},
		{Iface: "cm0", MTU: 65536},
		{Iface: "cm0", SocketDir: "/tmp/wg"},
	} {
		_, err := bad.withDefaults()
		if !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: err %v, want ErrInvalidConfig", bad, err)
		}
	}
	// Refused before anything is created.
	if err := Run(context.Background(), Config{Iface: "cm0", SocketDir: "/tmp/wg"}); !errors.Is(err, ErrInvalidConfig) ||
		!strings.Contains(err.Error(), "fixed") {
		t.Errorf("Run with a socket dir: %v", err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, TUN devices and sockets in " + DefaultSocketDir + " (CI runs this as root)")
	}
}

func newNS(t *testing.T) ns.NetNS { return testutil.NewNetNS(t) }

// link returns name's link in n, nil if absent.
func link(t *testing.T, n ns.NetNS, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			l, err = nil, nil
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running is a Run in progress inside a namespace.
type running struct {
	cancel   context.CancelFunc
	finished chan struct{} // closed when Run returned
	err      error         // Run's result, once finished
}

// wait returns Run's result, failing the test after 10s.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-r.finished:
		return r.err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s")
		return nil
	}
}

// start runs Run in n and stops it at cleanup. Its TUN is created in n and
// the test never brings the link up, so wireguard-go opens no UDP socket.
// (In-process, only the thread that calls Run is in n: wireguard-go's MTU
// lookups from its own goroutines run in the host namespace and log "failed
// to get MTU of TUN device". The real `confmesh datapath` process lives in
// its namespace entirely; internal/wg's tests run it that way.)
func start(t *testing.T, n ns.NetNS, cfg Config) *running {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	if cfg.Procs == 0 {
		cfg.Procs = -1 // Run in this process: keep the test binary's GOMAXPROCS
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, finished: make(chan struct{})}
	go func() {
		r.err = n.Do(func(ns.NetNS) error { return Run(ctx, cfg) })
		close(r.finished)
	}()
	t.Cleanup(func() {
		cancel()
		r.wait(t)
	})
	return r
}

// served reports whether something accepts on iface's UAPI socket and
// answers a wgctrl query for iface.
func served(iface string) bool {
	c, err := wgctrl.New()
	if err != nil {
		return false
	}
	defer c.Close()
	d, err := c.Device(iface)
	return err == nil && d.Type == wgtypes.Userspace
}

func TestRunLifecycle(t *testing.T) {
	requireRoot(t)
	n := newNS(t)
	pidFile := filepath.Join(t.TempDir(), "run", "datapath.pid")
	const iface = "cmdpl0"
	began := time.Now()
	r := start(t, n, Config{Iface: iface, MTU: 1380, PIDFile: pidFile})
	waitFor(t, "the UAPI socket to answer", func() bool { return served(iface) })
	t.Logf("datapath serving after %s", time.Since(began).Round(time.Millisecond))

	l := link(t, n, iface)
	if l == nil || l.Type() != "tuntap" || l.Attrs().MTU != 1380 {
		t.Fatalf("TUN link: %+v", l)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("PID file %q, %v; want %d", b, err, os.Getpid())
	}

	// A configuration round trip over UAPI.
	c, err := wgctrl.New()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, _ := wgtypes.GeneratePrivateKey()
	port := 51900
	if err := c.ConfigureDevice(iface, wgtypes.Config{PrivateKey: &k, ListenPort: &port}); err != nil {
		t.Fatal(err)
	}
	if d, err := c.Device(iface); err != nil || d.PublicKey != k.PublicKey() || d.ListenPort != port {
		t.Errorf("device after configuration: %+v, %v", d, err)
	}

	began = time.Now()
	r.cancel()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}
	t.Logf("shutdown took %s", time.Since(began).Round(time.Millisecond))
	if _, err := os.Lstat(SocketPath(iface)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there: %v", err)
	}
	if _, err := os.Stat(pidFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("PID file still there: %v", err)
	}
	waitFor(t, "the TUN link to go", func() bool { return link(t, n, iface) == nil })
}

// TestRunRefusesLiveSocket: while something serves the socket, Run fails
// without creating a TUN or touching the socket.
func TestRunRefusesLiveSocket(t *testing.T) {
	requireRoot(t)
	n := newNS(t)
	const iface = "cmdpx0"
	if err := os.MkdirAll(DefaultSocketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", SocketPath(iface))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // unlinks the socket file
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	err = n.Do(func(ns.NetNS) error { return Run(context.Background(), Config{Iface: iface}) })
	if !errors.Is(err, ErrSocketInUse) || !strings.Contains(err.Error(), "already owns") {
		t.Fatalf("Run with a live socket: %v, want ErrSocketInUse", err)
	}
	if l := link(t, n, iface); l != nil {
		t.Error("Run created a TUN before refusing")
	}
	c, err := net.Dial("unix", SocketPath(iface))
	if err != nil {
		t.Fatalf("the first owner's socket is broken: %v", err)
	}
	c.Close()
}

// TestRunReplacesStaleSocket: a socket file nobody accepts on (a datapath
// that was killed) is removed and served anew.
func TestRunReplacesStaleSocket(t *testing.T) {
	requireRoot(t)
	n := newNS(t)
	const iface = "cmdps0"
	if err := os.MkdirAll(DefaultSocketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: SocketPath(iface), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	t.Cleanup(func() { os.Remove(SocketPath(iface)) })
	if _, err := net.Dial("unix", SocketPath(iface)); err == nil {
		t.Fatal("setup: the stale socket answers")
	}

	start(t, n, Config{Iface: iface})
	waitFor(t, "the datapath to serve the replaced socket", func() bool { return served(iface) })
}

// TestRunRefusesNonSocket: a regular file where the socket belongs is not
// removed.
func TestRunRefusesNonSocket(t *testing.T) {
	requireRoot(t)
	n := newNS(t)
	const iface = "cmdpf0"
	if err := os.MkdirAll(DefaultSocketDir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := SocketPath(iface)
	if err := os.WriteFile(path, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(path) })
	err := n.Do(func(ns.NetNS) error { return Run(context.Background(), Config{Iface: iface}) })
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Run: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "not a socket" {
		t.Errorf("the file was touched: %q, %v", b, err)
	}
	if l := link(t, n, iface); l != nil {
		t.Error("Run created a TUN")
	}
}

// TestRunFailsWhenSocketDeleted: deleting the socket file out from under a
// running datapath ends it with an error (as wireguard-go does), and the TUN
// goes with it.
func TestRunFailsWhenSocketDeleted(t *testing.T) {
	requireRoot(t)
	n := newNS(t)
	const iface = "cmdpd0"
	r := start(t, n, Config{Iface: iface})
	waitFor(t, "the UAPI socket to answer", func() bool { return served(iface) })
	if err := os.Remove(SocketPath(iface)); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t); err == nil || !strings.Contains(err.Error(), "UAPI socket") {
		t.Errorf("Run after socket deletion: %v, want an error naming the UAPI socket", err)
	}
	waitFor(t, "the TUN link to go", func() bool { return link(t, n, iface) == nil })
}
