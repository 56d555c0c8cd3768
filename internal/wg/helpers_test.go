package wg

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.RemoveConfmesh() // built for DatapathCommand
	os.Exit(code)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, TUN devices and datapath processes (CI runs this as root)")
	}
}

// userspaceConfig is a Config that starts the real datapath binary, with
// its PID file and log in a per-test directory.
func userspaceConfig(t *testing.T, name string) Config {
	t.Helper()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "datapath.pid")
	return Config{
		Name:            name,
		MTU:             1420,
		DatapathCommand: []string{testutil.BuildConfmesh(t), "datapath", "--iface", name, "--pid-file", pidFile},
		DatapathLog:     filepath.Join(dir, "datapath.log"),
		PIDFile:         pidFile,
		Logger:          slog.New(slog.NewTextHandler(t.Output(), nil)),
		ForceUserspace:  true,
	}
}

// ensureIn runs Ensure in n and registers cleanup that closes the device
// and stops the datapath it runs on (by PID), then removes a stale socket.
// Registered after testutil.NewNetNS, so it runs before the namespace goes.
func ensureIn(t *testing.T, n ns.NetNS, cfg Config) *Device {
	t.Helper()
	var d *Device
	testutil.InNetNS(t, n, func() (err error) {
		d, err = Ensure(context.Background(), cfg)
		return err
	})
	pid := d.PID()
	t.Cleanup(func() {
		d.Close()
		if pid != 0 {
			stopDatapath(t, pid, cfg.Name)
		}
		if t.Failed() && cfg.DatapathLog != "" {
			if b, err := os.ReadFile(cfg.DatapathLog); err == nil {
				t.Logf("datapath log %s:\n%s", cfg.DatapathLog, b)
			}
		}
	})
	return d
}

// checkDetached checks how a datapath this process started runs: in a
// process group of its own (a terminal's Ctrl-C for ours misses it), in our
// session (one autogroup with its workloads, see start), and deaf to
// SIGHUP, which it survives.
func checkDetached(t *testing.T, pid int) {
	t.Helper()
	if pgid, err := unix.Getpgid(pid); err != nil || pgid != pid {
		t.Errorf("datapath process group = %d, %v; want its own (%d)", pgid, err, pid)
	}
	ours, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != ours {
		t.Errorf("datapath session = %d, %v; want ours (%d), not a session of its own", sid, err, ours)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var ignored uint64
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "SigIgn:"); ok {
			if ignored, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64); err != nil {
				t.Fatalf("SigIgn %q: %v", v, err)
			}
		}
	}
	if ignored&(1<<(unix.SIGHUP-1)) == 0 {
		t.Errorf("datapath does not ignore SIGHUP (SigIgn %#x)", ignored)
	}
	// An ignored signal is discarded when sent, so the process must still
	// be there right after.
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if u := (&userspaceBackend{}); u.processGone(pid) {
		t.Error("datapath ended on SIGHUP")
	}
}

// stopDatapath SIGKILLs pid if it still is a datapath for name, waits until
// it is gone, and removes the socket it leaves.
func stopDatapath(t *testing.T, pid int, name string) {
	t.Helper()
	if isDatapathFor(pid, name) {
		_ = unix.Kill(pid, unix.SIGKILL)
	}
	u := &userspaceBackend{}
	if err := poll(context.Background(), 5*time.Second, func() (bool, error) { return u.processGone(pid), nil }); err != nil {
		t.Errorf("datapath pid %d still running after SIGKILL", pid)
	}
	if err := removeStaleSocket(socketPath(name)); err != nil {
		t.Errorf("remove socket: %v", err)
	}
}

func isDatapathFor(pid int, name string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 2 && args[1] == "datapath" && slices.Contains(args, name)
}

// datapathPIDs lists the running (non-zombie) datapath processes for name.
func datapathPIDs(t *testing.T, name string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	u := &userspaceBackend{}
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || fmt.Sprint(pid) != e.Name() {
			continue
		}
		if isDatapathFor(pid, name) && !u.processGone(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// sameNetNS reports whether pid lives in the namespace n.
func sameNetNS(t *testing.T, pid int, n ns.NetNS) bool {
	t.Helper()
	var a, b syscall.Stat_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(n.Path(), &b); err != nil {
		t.Fatal(err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

// linkIn returns name's link in n, nil if absent.
func linkIn(t *testing.T, n ns.NetNS, name string) netlink.Link {
	t.Helper()
	var l netlink.Link
	testutil.InNetNS(t, n, func() error {
		var err error
		l, err = netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			l, err = nil, nil
		}
		return err
	})
	return l
}

func socketExists(name string) bool {
	_, err := os.Lstat(socketPath(name))
	return !errors.Is(err, fs.ErrNotExist)
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	if err := poll(context.Background(), timeout, func() (bool, error) { return cond(), nil }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func userspaceChild(t *testing.T, d *Device) *child {
	t.Helper()
	u, ok := d.b.(*userspaceBackend)
	if !ok {
		t.Fatalf("device %s is %s, not userspace", d.Name(), d.Kind())
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.child
}

// A node of the two-node tunnel tests.
type node struct {
	ns       ns.NetNS
	dev      *Device
	key      wgtypes.Key
	underlay netip.Addr
	gw       netip.Addr
	pods     netip.Prefix
}

const listenPort = 51820

// twoNodes builds two namespaces joined by a veth (198.18.0.1/24 and
// 198.18.0.2/24), a WireGuard device in each (names a, b) with pod gateway
// 10.99.{1,2}.1/32, keys, each other as peer and a route to the other's
// pod /24.
func twoNodes(t *testing.T, nameA, nameB string, force bool) (*node, *node) {
	t.Helper()
	a := &node{ns: testutil.NewNetNS(t), underlay: netip.MustParseAddr("198.18.0.1"), gw: netip.MustParseAddr("10.99.1.1"), pods: netip.MustParsePrefix("10.99.1.0/24")}
	b := &node{ns: testutil.NewNetNS(t), underlay: netip.MustParseAddr("198.18.0.2"), gw: netip.MustParseAddr("10.99.2.1"), pods: netip.MustParsePrefix("10.99.2.0/24")}

	testutil.InNetNS(t, a.ns, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ul0", MTU: 1500}, PeerName: "ul1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		peer, err := netlink.LinkByName("ul1")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(b.ns.Fd())); err != nil {
			return fmt.Errorf("move veth peer: %w", err)
		}
		return setupUnderlay("ul0", a.underlay)
	})
	testutil.InNetNS(t, b.ns, func() error { return setupUnderlay("ul1", b.underlay) })

	for _, n := range []*node{a, b} {
		name := nameA
		if n == b {
			name = nameB
		}
		cfg := userspaceConfig(t, name)
		cfg.ForceUserspace = force
		cfg.Addresses = []netip.Prefix{netip.PrefixFrom(n.gw, 32)}
		n.dev = ensureIn(t, n.ns, cfg)
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		n.key = k
		if err := n.dev.Configure(k, listenPort); err != nil {
			t.Fatal(err)
		}
	}
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		self, other := pair[0], pair[1]
		err := self.dev.ApplyPeers([]wgtypes.PeerConfig{{
			PublicKey:         other.key.PublicKey(),
			Endpoint:          net.UDPAddrFromAddrPort(netip.AddrPortFrom(other.underlay, listenPort)),
			AllowedIPs:        []net.IPNet{*ipNet(other.pods)},
			ReplaceAllowedIPs: true,
		}})
		if err != nil {
			t.Fatal(err)
		}
		if err := self.dev.SyncRoutes([]netip.Prefix{other.pods}, 1420); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

func setupUnderlay(name string, addr netip.Addr) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(addr, 24))}); err != nil {
		return fmt.Errorf("underlay address: %w", err)
	}
	return netlink.LinkSetUp(l)
}

// sendUDP sends payload from from's pod gateway to a listener on to's, until
// it arrives (bounded: every 200 ms for at most 10 s; the first packets wait
// for the handshake).
func sendUDP(t *testing.T, from, to *node, payload []byte) {
	t.Helper()
	var lc, sc *net.UDPConn
	testutil.InNetNS(t, to.ns, func() (err error) {
		lc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.gw, 9999)))
		return err
	})
	defer lc.Close()
	testutil.InNetNS(t, from.ns, func() (err error) {
		sc, err = net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from.gw, 0)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.gw, 9999)))
		return err
	})
	defer sc.Close()

	buf := make([]byte, 2048)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := sc.Write(payload); err != nil {
			t.Fatalf("send: %v", err)
		}
		_ = lc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, src, err := lc.ReadFromUDPAddrPort(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			continue
		}
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		if string(buf[:n]) != string(payload) {
			t.Fatalf("received %q, want %q", buf[:n], payload)
		}
		if src.Addr() != from.gw {
			t.Fatalf("payload came from %s, want %s", src.Addr(), from.gw)
		}
		return
	}
	t.Fatalf("no UDP payload from %s to %s within 10s", from.gw, to.gw)
}

func peerByKey(t *testing.T, d *Device, pub wgtypes.Key) (wgtypes.Peer, bool) {
	t.Helper()
	st, err := d.State()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.PublicKey == pub {
			return p, true
		}
	}
	return wgtypes.Peer{}, false
}
