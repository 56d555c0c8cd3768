package wg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/datapath"
	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// kernelHasWireGuard probes for the kernel module in a scratch namespace.
func kernelHasWireGuard(t *testing.T) bool {
	t.Helper()
	n := testutil.NewNetNS(t)
	var ok bool
	testutil.InNetNS(t, n, func() error {
		ok = netlink.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "cmwgprobe0"}}) == nil
		return nil
	})
	return ok
}

// TestEnsure takes the default path (kernel first). On a kernel without
// WireGuard it must fall back to the datapath, started inside the caller's
// namespace, with MTU, address and link state applied.
func TestEnsure(t *testing.T) {
	requireRoot(t)
	kernelWG := kernelHasWireGuard(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwge0")
	cfg.ForceUserspace = false
	cfg.MTU = 1380
	cfg.Addresses = []netip.Prefix{netip.MustParsePrefix("10.99.7.1/32")}
	start := time.Now()
	d := ensureIn(t, n, cfg)
	t.Logf("Ensure (%s) took %s", d.Kind(), time.Since(start).Round(time.Millisecond))

	want := Userspace
	if kernelWG {
		want = Kernel
	}
	if d.Kind() != want {
		t.Fatalf("Kind() = %s, want %s (kernel WireGuard available: %v)", d.Kind(), want, kernelWG)
	}
	if d.Name() != "cmwge0" {
		t.Errorf("Name() = %q", d.Name())
	}
	if want == Userspace {
		if !strings.Contains(d.reason, "no WireGuard support") {
			t.Errorf("reason %q does not say the kernel lacks WireGuard", d.reason)
		}
		pid := d.PID()
		if pid <= 0 {
			t.Fatalf("PID() = %d", pid)
		}
		if !sameNetNS(t, pid, n) {
			t.Errorf("datapath pid %d is not in the test's network namespace", pid)
		}
		b, err := os.ReadFile(cfg.PIDFile)
		if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
			t.Errorf("PID file: %q, %v; want %d", b, err, pid)
		}
		checkDetached(t, pid)
		// The datapath's default GOMAXPROCS: half of Go's, unless the
		// environment (which it inherits) sets one.
		want := datapath.DefaultProcs(runtime.GOMAXPROCS(0))
		if os.Getenv("GOMAXPROCS") != "" {
			want = runtime.GOMAXPROCS(0)
		}
		logged := regexp.MustCompile(fmt.Sprintf(`msg=GOMAXPROCS .*procs=%d `, want))
		waitFor(t, "the datapath to log "+logged.String(), 5*time.Second, func() bool {
			b, _ := os.ReadFile(cfg.DatapathLog)
			return logged.Match(b)
		})
	}

	l := linkIn(t, n, "cmwge0")
	if l == nil {
		t.Fatal("no link cmwge0 in the namespace")
	}
	if l.Attrs().MTU != 1380 {
		t.Errorf("MTU = %d, want 1380", l.Attrs().MTU)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Error("link is not up")
	}
	testutil.InNetNS(t, n, func() error {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.7.1/32" {
			t.Errorf("addresses = %v, want [10.99.7.1/32]", addrs)
		}
		return nil
	})
	if l := linkIn(t, testutil.NewNetNS(t), "cmwge0"); l != nil {
		t.Error("the device leaked into another namespace")
	}

	st, err := d.State()
	if err != nil {
		t.Fatalf("State: %v", err)
	}
	wantType := wgtypes.Userspace
	if want == Kernel {
		wantType = wgtypes.LinuxKernel
	}
	if st.Name != "cmwge0" || st.Type != wantType {
		t.Errorf("wgctrl sees %s of type %s, want cmwge0 of type %s", st.Name, st.Type, wantType)
	}
	if err := d.Healthy(); err != nil {
		t.Errorf("Healthy: %v", err)
	}
}

// TestTunnel: two namespaces, a device each, UDP between pod gateways
// through the tunnel.
func TestTunnel(t *testing.T) {
	requireRoot(t)
	start := time.Now()
	a, b := twoNodes(t, "cmwga0", "cmwgb0", false)
	t.Logf("two nodes (%s) up in %s", a.dev.Kind(), time.Since(start).Round(time.Millisecond))

	start = time.Now()
	sendUDP(t, a, b, []byte("hello through the tunnel"))
	t.Logf("first payload (handshake included) after %s", time.Since(start).Round(time.Millisecond))

	// wireguard-go counts a packet's bytes just after sending it, so the
	// responder's tx counter may trail the payload's arrival by a moment.
	for _, pair := range [][2]*node{{a, b}, {b, a}} {
		self, other := pair[0], pair[1]
		var p wgtypes.Peer
		err := poll(context.Background(), 5*time.Second, func() (bool, error) {
			var ok bool
			if p, ok = peerByKey(t, self.dev, other.key.PublicKey()); !ok {
				return false, fmt.Errorf("%s has no peer %s", self.dev.Name(), other.dev.Name())
			}
			return !p.LastHandshakeTime.IsZero() && p.ReceiveBytes > 0 && p.TransmitBytes > 0, nil
		})
		if err != nil {
			t.Errorf("%s: handshake %v, rx %d tx %d bytes; want a handshake and both > 0: %v",
				self.dev.Name(), p.LastHandshakeTime, p.ReceiveBytes, p.TransmitBytes, err)
		}
	}
	// And back.
	sendUDP(t, b, a, []byte("and back"))
}

// TestApplyPeersIncremental: adding, changing and removing one peer leaves
// another peer's session alone.
func TestApplyPeersIncremental(t *testing.T) {
	requireRoot(t)
	a, b := twoNodes(t, "cmwgia0", "cmwgib0", true)
	sendUDP(t, a, b, []byte("establish a session"))
	before, ok := peerByKey(t, a.dev, b.key.PublicKey())
	if !ok || before.LastHandshakeTime.IsZero() {
		t.Fatalf("no session with b before the changes: %+v", before)
	}
	untouched := func(step string) {
		t.Helper()
		p, ok := peerByKey(t, a.dev, b.key.PublicKey())
		if !ok {
			t.Fatalf("%s: peer b is gone", step)
		}
		if !p.LastHandshakeTime.Equal(before.LastHandshakeTime) || p.PresharedKey != before.PresharedKey ||
			p.Endpoint.String() != before.Endpoint.String() || fmt.Sprint(p.AllowedIPs) != fmt.Sprint(before.AllowedIPs) {
			t.Errorf("%s: peer b changed:\nbefore %+v\nafter  %+v", step, before, p)
		}
	}
	allowed := func(step string, pub wgtypes.Key, want ...string) {
		t.Helper()
		p, ok := peerByKey(t, a.dev, pub)
		if !ok {
			t.Fatalf("%s: peer missing", step)
		}
		var got []string
		for _, n := range p.AllowedIPs {
			got = append(got, n.String())
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("%s: allowed IPs %v, want %v", step, got, want)
		}
	}
	cidr := func(s string) net.IPNet { return *ipNet(netip.MustParsePrefix(s)) }
	ck, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	c := ck.PublicKey()

	if err := a.dev.ApplyPeers([]wgtypes.PeerConfig{{PublicKey: c, AllowedIPs: []net.IPNet{cidr("10.99.3.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	if st, _ := a.dev.State(); len(st.Peers) != 2 {
		t.Fatalf("after add: %d peers, want 2", len(st.Peers))
	}
	allowed("add", c, "10.99.3.0/24")
	untouched("add")

	if err := a.dev.ApplyPeers([]wgtypes.PeerConfig{{PublicKey: c, UpdateOnly: true, ReplaceAllowedIPs: true,
		AllowedIPs: []net.IPNet{cidr("10.99.4.0/24"), cidr("10.99.5.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	allowed("replace allowed IPs", c, "10.99.4.0/24", "10.99.5.0/24")
	untouched("replace allowed IPs")

	if err := a.dev.ApplyPeers([]wgtypes.PeerConfig{{PublicKey: c, UpdateOnly: true,
		AllowedIPs: []net.IPNet{cidr("10.99.6.0/24")}}}); err != nil {
		t.Fatal(err)
	}
	allowed("append allowed IPs", c, "10.99.4.0/24", "10.99.5.0/24", "10.99.6.0/24")

	if err := a.dev.ApplyPeers([]wgtypes.PeerConfig{{PublicKey: c, Remove: true}}); err != nil {
		t.Fatal(err)
	}
	st, err := a.dev.State()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Peers) != 1 || st.Peers[0].PublicKey != b.key.PublicKey() {
		t.Fatalf("after remove: peers %v, want only b", st.Peers)
	}
	untouched("remove")
	if err := a.dev.ApplyPeers(nil); err != nil {
		t.Errorf("ApplyPeers(nil): %v", err)
	}
	// The session survived: traffic flows without a new handshake.
	sendUDP(t, a, b, []byte("still flowing"))
	untouched("traffic after the changes")
}

// TestAdopt: a second Ensure (an agent restart) adopts the running datapath.
func TestAdopt(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgad0")
	d1 := ensureIn(t, n, cfg)
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Configure(k, 51821); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	d2 := ensureIn(t, n, cfg)
	t.Logf("adoption took %s", time.Since(start).Round(time.Millisecond))
	if d2.PID() != d1.PID() {
		t.Errorf("second Ensure: PID %d, want the running %d", d2.PID(), d1.PID())
	}
	if userspaceChild(t, d2) != nil {
		t.Error("second Ensure started a datapath process")
	}
	if pids := datapathPIDs(t, "cmwgad0"); len(pids) != 1 || pids[0] != d1.PID() {
		t.Errorf("datapath processes for cmwgad0: %v, want [%d]", pids, d1.PID())
	}
	if !strings.Contains(d2.reason, "adopted") {
		t.Errorf("reason %q", d2.reason)
	}
	st, err := d2.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.PrivateKey != k || st.ListenPort != 51821 {
		t.Errorf("adopted device lost its configuration: port %d", st.ListenPort)
	}
}

// TestConfigureUnchangedKeepsSocket: an agent restart adopts the running
// datapath and configures it again with the same key and port. That must
// change nothing on the device: wireguard-go re-binds its UDP socket on
// every listen-port write (packets in flight are lost, and a handshake
// message among them costs REKEY_TIMEOUT), so the socket the datapath
// listens on must be the very same one afterwards. A real change of port
// or key still takes effect.
func TestConfigureUnchangedKeepsSocket(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgcu0")
	d1 := ensureIn(t, n, cfg)
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Configure(k, 51823); err != nil {
		t.Fatal(err)
	}
	var before []uint64
	waitFor(t, "the datapath's UDP socket on port 51823", 10*time.Second, func() bool {
		before = udpSocketInodes(t, d1.PID(), 51823)
		return len(before) > 0
	})
	d2 := ensureIn(t, n, cfg) // the restarted agent
	for range 2 {             // Run and then the join configure the device
		if err := d2.Configure(k, 51823); err != nil {
			t.Fatal(err)
		}
	}
	if after := udpSocketInodes(t, d2.PID(), 51823); !slices.Equal(after, before) {
		t.Errorf("configuring the same key and port replaced the datapath's UDP socket (inodes %v, were %v): a re-bind, and traffic lost", after, before)
	}
	st, err := d2.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.PrivateKey != k || st.ListenPort != 51823 {
		t.Errorf("device after the no-op configure: port %d, key kept %v", st.ListenPort, st.PrivateKey == k)
	}
	k2, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Configure(k2, 51824); err != nil {
		t.Fatal(err)
	}
	if st, err := d2.State(); err != nil || st.PrivateKey != k2 || st.ListenPort != 51824 {
		t.Errorf("a changed key and port were not applied: %+v %v", st, err)
	}
	waitFor(t, "the datapath's UDP socket on the new port 51824", 10*time.Second, func() bool {
		return len(udpSocketInodes(t, d2.PID(), 51824)) > 0
	})
}

// udpSocketInodes are the inodes of the UDP sockets (IPv4 and IPv6) bound
// to port in the network namespace of process pid, sorted.
func udpSocketInodes(t *testing.T, pid, port int) []uint64 {
	t.Helper()
	var out []uint64
	for _, f := range []string{"udp", "udp6"} {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 10 {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseUint(hexPort, 16, 16); !ok || err != nil || int(p) != port {
				continue
			}
			inode, err := strconv.ParseUint(fields[9], 10, 64)
			if err != nil {
				t.Fatalf("%s: inode %q: %v", f, fields[9], err)
			}
			out = append(out, inode)
		}
	}
	slices.Sort(out)
	return out
}

// TestDatapathRestart: a killed datapath makes Healthy fail; Ensure brings
// up a new one, and the agent re-applies its configuration.
func TestDatapathRestart(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgr0")
	cfg.Addresses = []netip.Prefix{netip.MustParsePrefix("10.99.8.1/32")}
	d1 := ensureIn(t, n, cfg)
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := d1.Configure(k, 51822); err != nil {
		t.Fatal(err)
	}
	old := d1.PID()
	c := userspaceChild(t, d1)
	if err := unix.Kill(old, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, "killed datapath to exit", 5*time.Second, func() bool { return !c.running() })
	waitFor(t, "Healthy to fail", 5*time.Second, func() bool { return d1.Healthy() != nil })
	t.Logf("Healthy after kill: %v", d1.Healthy())
	d1.Close()

	d2 := ensureIn(t, n, cfg)
	t.Logf("restart (kill to new device) took %s", time.Since(killed).Round(time.Millisecond))
	if d2.PID() == old || d2.PID() == 0 {
		t.Errorf("new datapath PID %d (old %d)", d2.PID(), old)
	}
	if !sameNetNS(t, d2.PID(), n) {
		t.Error("restarted datapath is not in the namespace")
	}
	if err := d2.Healthy(); err != nil {
		t.Fatalf("Healthy after restart: %v", err)
	}
	st, err := d2.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.PrivateKey != (wgtypes.Key{}) {
		t.Error("a fresh datapath already has a private key")
	}
	if err := d2.Configure(k, 51822); err != nil {
		t.Fatal(err)
	}
	if st, _ := d2.State(); st.PrivateKey != k || st.ListenPort != 51822 {
		t.Errorf("re-applied configuration not visible")
	}
	l := linkIn(t, n, "cmwgr0")
	if l == nil || l.Attrs().MTU != 1420 {
		t.Fatalf("link after restart: %v", l)
	}
}

// TestDelete: the datapath exits cleanly on SIGTERM, taking its link,
// socket and PID file with it.
func TestDelete(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgd0")
	d := ensureIn(t, n, cfg)
	c := userspaceChild(t, d)
	if !socketExists("cmwgd0") {
		t.Fatal("no socket before Delete")
	}
	start := time.Now()
	if err := d.Delete(); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	t.Logf("Delete took %s", time.Since(start).Round(time.Millisecond))
	if c.running() {
		t.Fatal("datapath still running after Delete")
	}
	if c.err != nil {
		t.Errorf("datapath exit: %v, want status 0", c.err)
	}
	if l := linkIn(t, n, "cmwgd0"); l != nil {
		t.Error("TUN link still there")
	}
	if socketExists("cmwgd0") {
		t.Error("UAPI socket still there")
	}
	if _, err := os.Stat(cfg.PIDFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("PID file still there: %v", err)
	}
	if err := d.Healthy(); err == nil {
		t.Error("Healthy after Delete = nil")
	}
	// Deleting what is gone is not an error.
	if err := d.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	d.Close()
	if _, err := d.State(); !errors.Is(err, ErrClosed) {
		t.Errorf("State after Close: %v, want ErrClosed", err)
	}
}

// TestDatapathRefusesSecondInstance: a second `confmesh datapath` for a name
// that is served exits 1 without disturbing the first, from the same
// namespace or another one (the sockets share one directory).
func TestDatapathRefusesSecondInstance(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgx0")
	d := ensureIn(t, n, cfg)
	pid := d.PID()
	for _, where := range []struct {
		name string
		in   func(t *testing.T) ns.NetNS
	}{
		{"same namespace", func(*testing.T) ns.NetNS { return n }},
		{"other namespace", func(t *testing.T) ns.NetNS { return testutil.NewNetNS(t) }},
	} {
		t.Run(where.name, func(t *testing.T) {
			var stderr bytes.Buffer
			var code int
			start := time.Now()
			testutil.InNetNS(t, where.in(t), func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, testutil.BuildConfmesh(t), "datapath", "--iface", "cmwgx0")
				cmd.Stderr = &stderr
				err := cmd.Run()
				var ee *exec.ExitError
				if !errors.As(err, &ee) {
					return fmt.Errorf("second datapath: %v (want exit status 1)", err)
				}
				code = ee.ExitCode()
				return nil
			})
			t.Logf("refused in %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(stderr.String()))
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			if !strings.Contains(stderr.String(), "already owns") {
				t.Errorf("stderr does not explain the refusal: %s", stderr.String())
			}
			if err := d.Healthy(); err != nil {
				t.Errorf("first datapath unhealthy after the attempt: %v", err)
			}
			if d.PID() != pid {
				t.Errorf("socket now served by pid %d, want %d", d.PID(), pid)
			}
		})
	}
}

// TestEnsureRefusesForeignLink: a non-WireGuard link with the device's name
// is left alone.
func TestEnsureRefusesForeignLink(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	testutil.InNetNS(t, n, func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cmwgf0"}, PeerName: "cmwgf1"})
	})
	testutil.InNetNS(t, n, func() error {
		d, err := Ensure(context.Background(), Config{Name: "cmwgf0", ForceUserspace: true})
		if err == nil {
			d.Close()
			return errors.New("Ensure adopted or replaced a veth link")
		}
		if !strings.Contains(err.Error(), "veth link of that name exists") {
			return fmt.Errorf("unexpected error: %v", err)
		}
		return nil
	})
	if l := linkIn(t, n, "cmwgf0"); l == nil || l.Type() != "veth" {
		t.Error("the veth link was touched")
	}
}
