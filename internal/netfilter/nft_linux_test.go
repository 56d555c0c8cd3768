//go:build linux

package netfilter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ---- unit tests of the expression compiler (no root) ----

func TestMask(t *testing.T) {
	for _, tc := range []struct {
		bits, n int
		want    []byte
	}{
		{16, 4, []byte{0xff, 0xff, 0, 0}},
		{20, 4, []byte{0xff, 0xff, 0xf0, 0}},
		{1, 4, []byte{0x80, 0, 0, 0}},
		{31, 4, []byte{0xff, 0xff, 0xff, 0xfe}},
		{48, 16, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
	} {
		if got := mask(tc.bits, tc.n); !bytes.Equal(got, tc.want) {
			t.Errorf("mask(%d, %d) = %x, want %x", tc.bits, tc.n, got, tc.want)
		}
	}
}

func TestExprsOffsets(t *testing.T) {
	r := Rules{ClusterCIDRs: pfx("10.98.0.0/16", "fd98::/48"), LocalCIDRs: pfx("10.98.1.0/24"), Device: "cm0"}
	type load struct{ off, reg uint32 }
	loads := func(s ruleSpec) (ls []load, bitwise, lookups int) {
		for _, e := range s.exprs(nil) {
			switch e := e.(type) {
			case *expr.Payload:
				ls = append(ls, load{e.Offset, e.DestRegister})
			case *expr.Bitwise:
				bitwise++
			case *expr.Lookup:
				lookups++
			}
		}
		return ls, bitwise, lookups
	}
	for _, tc := range []struct {
		chain            string
		i                int
		loads            []load
		bitwise, lookups int
	}{
		{ChainOut, 0, []load{{16, 1}, {16, 2}}, 1, 1}, // ip daddr; oifname . ip daddr
		{ChainOut, 1, []load{{24, 1}, {24, 2}}, 1, 1}, // ip6 daddr; oifname . ip6 daddr
		{ChainIn, 0, []load{{12, 1}}, 1, 1},           // ip saddr, iifname != @pod_ifs
		{ChainIn, 1, []load{{16, 1}}, 1, 1},           // ip daddr, iifname != @pod_ifs
		{ChainIn, 2, []load{{8, 1}}, 1, 1},            // ip6 saddr
		{ChainIn, 3, []load{{24, 1}}, 1, 1},           // ip6 daddr
		{ChainIn, 4, []load{{12, 2}}, 0, 2},           // spoof v4: iifname . ip saddr
		{ChainIn, 5, []load{{8, 1}, {8, 2}}, 1, 2},    // spoof v6: link-local exemption, iifname . ip6 saddr
	} {
		ls, bw, lk := loads(r.specs(tc.chain)[tc.i])
		if !reflect.DeepEqual(ls, tc.loads) || bw != tc.bitwise || lk != tc.lookups {
			t.Errorf("%s rule %d: loads %v, %d bitwise, %d lookups; want %v, %d, %d", tc.chain, tc.i, ls, bw, lk, tc.loads, tc.bitwise, tc.lookups)
		}
	}
	if n := len(r.specs(ChainIn)); n != 6 {
		t.Errorf("in chain has %d rules, want 6", n)
	}
}

func TestPodKey(t *testing.T) {
	k := podKey(Pod{Interface: "cm1234abcd", Addr: netip.MustParseAddr("10.98.1.5")})
	if len(k) != 20 || string(k[:10]) != "cm1234abcd" || k[10] != 0 || !bytes.Equal(k[16:], []byte{10, 98, 1, 5}) {
		t.Errorf("podKey = %x", k)
	}
	if k6 := podKey(Pod{Interface: "x", Addr: netip.MustParseAddr("fd98::5")}); len(k6) != 32 {
		t.Errorf("IPv6 key is %d bytes, want 32", len(k6))
	}
}

// ---- root tests, each in fresh network namespaces ----

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces and nftables)")
	}
}

func mustPrefix(s string) *net.IPNet {
	p := netip.MustParsePrefix(s)
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func addAddr(link netlink.Link, cidr string) error {
	a := &netlink.Addr{IPNet: mustPrefix(cidr)}
	if netip.MustParsePrefix(cidr).Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		return fmt.Errorf("add %s to %s: %w", cidr, link.Attrs().Name, err)
	}
	return nil
}

func addRoute(dst, gw string) error {
	r := &netlink.Route{Dst: mustPrefix(dst), Gw: net.IP(netip.MustParseAddr(gw).AsSlice())}
	if err := netlink.RouteAdd(r); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	return nil
}

func addDevRoute(dst, dev string) error {
	l, err := netlink.LinkByName(dev)
	if err != nil {
		return err
	}
	if err := netlink.RouteAdd(&netlink.Route{Dst: mustPrefix(dst), LinkIndex: l.Attrs().Index}); err != nil {
		return fmt.Errorf("route %s dev %s: %w", dst, dev, err)
	}
	return nil
}

const testDevice = "cmtest0"

// testbed is node A (the node under test, running strict mode) and B (the
// underlay neighbour, also holding "remote pod" addresses), joined by a veth
// pair ula (in A) / ulb (in B).
//
//	A: ula 198.18.0.1/24 fd00:18::1/64; TUN cmtest0 10.98.1.1/32
//	   10.98.2.0/24 via 198.18.0.2, fd98:0:0:2::/64 via fd00:18::2 (the misrouting)
//	B: ulb 198.18.0.2/24 fd00:18::2/64 10.98.2.5/32 fd98:0:0:2::5/128
//	   10.98.1.0/24 via 198.18.0.1
type testbed struct {
	a, b ns.NetNS
	tun  *os.File // A's end of cmtest0
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	needRoot(t)
	tb := &testbed{a: testutil.NewNetNS(t), b: testutil.NewNetNS(t)}
	testutil.InNetNS(t, tb.a, func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "ula"},
			PeerName:      "ulb",
			PeerNamespace: netlink.NsFd(int(tb.b.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		// The stand-in WireGuard device is a TUN device (as with the
		// userspace datapath), not a dummy: this kernel has no dummy driver,
		// and the TUN fd lets the test see what entered the "tunnel".
		tun := &netlink.Tuntap{
			LinkAttrs:  netlink.LinkAttrs{Name: testDevice},
			Mode:       netlink.TUNTAP_MODE_TUN,
			Flags:      netlink.TUNTAP_NO_PI,
			Queues:     1,
			NonPersist: true,
		}
		if err := netlink.LinkAdd(tun); err != nil {
			return fmt.Errorf("add tun %s: %w", testDevice, err)
		}
		tb.tun = tun.Fds[0]
		t.Cleanup(func() { tb.tun.Close() })
		for dev, addrs := range map[string][]string{
			"ula":      {"198.18.0.1/24", "fd00:18::1/64"},
			testDevice: {"10.98.1.1/32"},
		} {
			l, err := netlink.LinkByName(dev)
			if err != nil {
				return err
			}
			for _, a := range addrs {
				if err := addAddr(l, a); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		if err := addRoute("10.98.2.0/24", "198.18.0.2"); err != nil {
			return err
		}
		return addRoute("fd98:0:0:2::/64", "fd00:18::2")
	})
	testutil.InNetNS(t, tb.b, func() error {
		l, err := netlink.LinkByName("ulb")
		if err != nil {
			return err
		}
		for _, a := range []string{"198.18.0.2/24", "fd00:18::2/64", "10.98.2.5/32", "fd98:0:0:2::5/128"} {
			if err := addAddr(l, a); err != nil {
				return err
			}
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return addRoute("10.98.1.0/24", "198.18.0.1")
	})
	tb.waitUnderlay(t)
	return tb
}

// waitUnderlay waits until A reaches B on the underlay in both families, so
// link bring-up and neighbour discovery do not eat into probeWait.
func (tb *testbed) waitUnderlay(t *testing.T) {
	t.Helper()
	waitReach(t, tb.a, "0.0.0.0", tb.b, "198.18.0.2")
	waitReach(t, tb.a, "::", tb.b, "fd00:18::2")
}

// waitReach retries a datagram from (from, src) to (to, dst) until one
// arrives, for at most 10 s.
func waitReach(t *testing.T, from ns.NetNS, src string, to ns.NetNS, dst string) {
	t.Helper()
	l := listen(t, to, dst)
	s := sender(t, from, src)
	defer l.conn.Close()
	defer s.Close()
	buf := make([]byte, 16)
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		s.WriteToUDPAddrPort([]byte("up?"), l.addr)
		l.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := l.conn.ReadFromUDPAddrPort(buf); err == nil {
			return
		}
	}
	t.Fatalf("%s -> %s: nothing arrived within 10s", src, dst)
}

var (
	v4Rules = Rules{
		ClusterCIDRs: pfx("10.98.0.0/16"),
		LocalCIDRs:   pfx("10.98.1.0/24"),
		Device:       testDevice,
	}
	dualRules = Rules{
		ClusterCIDRs: pfx("10.98.0.0/16", "fd98::/48"),
		LocalCIDRs:   pfx("10.98.1.0/24", "fd98:0:0:1::/64"),
		Device:       testDevice,
	}
)

func install(t *testing.T, n ns.NetNS, r Rules) {
	t.Helper()
	testutil.InNetNS(t, n, func() error { return Install(r) })
}

func remove(t *testing.T, n ns.NetNS, table string) {
	t.Helper()
	testutil.InNetNS(t, n, func() error { return Remove(table) })
}

func counters(t *testing.T, n ns.NetNS, table string) (out, inn uint64) {
	t.Helper()
	testutil.InNetNS(t, n, func() error {
		var err error
		out, inn, err = Counters(table)
		return err
	})
	return out, inn
}

// listener is a UDP socket bound inside some netns; it can be read from any
// goroutine afterwards (a socket keeps the namespace it was created in).
type listener struct {
	conn *net.UDPConn
	addr netip.AddrPort
}

func listen(t *testing.T, n ns.NetNS, addr string) *listener {
	t.Helper()
	var l listener
	testutil.InNetNS(t, n, func() error {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 0)))
		if err != nil {
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
		l.conn, l.addr = c, c.LocalAddr().(*net.UDPAddr).AddrPort()
		return nil
	})
	t.Cleanup(func() { l.conn.Close() })
	return &l
}

func sender(t *testing.T, n ns.NetNS, src string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	testutil.InNetNS(t, n, func() error {
		var err error
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(src), 0)))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

var probeSeq atomic.Uint64

const (
	probeCount = 5
	probeWait  = 500 * time.Millisecond
)

// probe sends probeCount datagrams from netns n (source src, "::" or
// "0.0.0.0" for any) to l, and returns how many of them arrived within
// probeWait, and the first send error (a netfilter drop on the sending
// host's own output path surfaces as EPERM).
func probe(t *testing.T, n ns.NetNS, src string, l *listener) (arrived int, sendErr error) {
	t.Helper()
	s := sender(t, n, src)
	token := fmt.Appendf(nil, "probe-%d", probeSeq.Add(1))
	for range probeCount {
		if _, err := s.WriteToUDPAddrPort(token, l.addr); err != nil && sendErr == nil {
			sendErr = err
		}
	}
	buf := make([]byte, 64)
	l.conn.SetReadDeadline(time.Now().Add(probeWait))
	for arrived < probeCount {
		k, _, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if bytes.Equal(buf[:k], token) {
			arrived++
		}
	}
	return arrived, sendErr
}

func expectDropped(t *testing.T, what string, n ns.NetNS, src string, l *listener) {
	t.Helper()
	got, err := probe(t, n, src, l)
	if got != 0 {
		t.Errorf("%s: %d of %d datagrams arrived, want none", what, got, probeCount)
	}
	if err != nil {
		t.Logf("%s: send error (expected on the sending host): %v", what, err)
	}
}

func expectArrived(t *testing.T, what string, n ns.NetNS, src string, l *listener) {
	t.Helper()
	got, err := probe(t, n, src, l)
	if err != nil {
		t.Errorf("%s: send: %v", what, err)
	}
	if got == 0 {
		t.Errorf("%s: none of %d datagrams arrived within %v", what, probeCount, probeWait)
	}
}

// tunPackets counts the packets read from the TUN device within probeWait
// whose payload contains token.
func (tb *testbed) tunPackets(token []byte) int {
	n := 0
	buf := make([]byte, 2048)
	tb.tun.SetReadDeadline(time.Now().Add(probeWait))
	for n < probeCount {
		k, err := tb.tun.Read(buf)
		if err != nil {
			break
		}
		if bytes.Contains(buf[:k], token) {
			n++
		}
	}
	return n
}

// ---- read-back ----

type readBack struct {
	tables  []string
	chains  map[string]*nftables.Chain
	rules   map[string][]*nftables.Rule
	objects map[string]bool
}

func readTable(t *testing.T, n ns.NetNS, table string) readBack {
	t.Helper()
	rb := readBack{chains: map[string]*nftables.Chain{}, rules: map[string][]*nftables.Rule{}, objects: map[string]bool{}}
	testutil.InNetNS(t, n, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, tt := range tables {
			rb.tables = append(rb.tables, tt.Name)
		}
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		tab := tableOf(table)
		for _, ch := range chains {
			if ch.Table.Name != tab.Name {
				continue
			}
			rb.chains[ch.Name] = ch
			rules, err := c.GetRules(tab, ch)
			if err != nil {
				return fmt.Errorf("get rules of %s: %w", ch.Name, err)
			}
			rb.rules[ch.Name] = rules
		}
		objs, err := c.GetObjects(tab)
		if err != nil {
			return fmt.Errorf("get objects: %w", err)
		}
		for _, o := range objs {
			if co, ok := o.(*nftables.CounterObj); ok {
				rb.objects[co.Name] = true
			}
		}
		return nil
	})
	return rb
}

func checkInstalled(t *testing.T, rb readBack, r Rules) {
	t.Helper()
	if len(rb.chains) != 2 {
		t.Errorf("table holds %d chains, want exactly out and in", len(rb.chains))
	}
	for _, want := range []struct {
		name string
		hook nftables.ChainHook
		prio nftables.ChainPriority
	}{
		{ChainOut, *nftables.ChainHookPostrouting, PriorityOut},
		{ChainIn, *nftables.ChainHookPrerouting, PriorityIn},
	} {
		ch := rb.chains[want.name]
		if ch == nil {
			t.Errorf("chain %s missing", want.name)
			continue
		}
		if ch.Type != nftables.ChainTypeFilter || ch.Hooknum == nil || *ch.Hooknum != want.hook ||
			ch.Priority == nil || *ch.Priority != want.prio || ch.Policy == nil || *ch.Policy != nftables.ChainPolicyAccept {
			t.Errorf("chain %s: type %q hook %v priority %v policy %v; want filter, hook %d, priority %d, accept",
				want.name, ch.Type, deref(ch.Hooknum), deref(ch.Priority), deref(ch.Policy), want.hook, want.prio)
		}
		// The kernel's rules are exactly what the compiler produced.
		specs := r.specs(want.name)
		if got := len(rb.rules[want.name]); got != len(specs) {
			t.Errorf("chain %s holds %d rules, want %d", want.name, got, len(specs))
			continue
		}
		for i, s := range specs {
			if got, w := normalize(rb.rules[want.name][i].Exprs), s.exprs(nil); !reflect.DeepEqual(got, w) {
				t.Errorf("chain %s rule %d: kernel has\n%s\nwant\n%s", want.name, i, dump(got), dump(w))
			}
		}
	}
	for _, c := range []string{CounterOut, CounterIn, CounterSpoof} {
		if !rb.objects[c] {
			t.Errorf("counter %s missing", c)
		}
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

func dump(es []expr.Any) string {
	var b bytes.Buffer
	for _, e := range es {
		fmt.Fprintf(&b, "  %T %+v\n", e, e)
	}
	return b.String()
}

func TestInstallReadBackIdempotent(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	r := dualRules
	r.Table = "cm-readback"

	testutil.InNetNS(t, n, func() error {
		ok, err := Installed(r.Table)
		if err != nil || ok {
			return fmt.Errorf("Installed before Install = %v, %v; want false, nil", ok, err)
		}
		return nil
	})
	install(t, n, r)
	first := readTable(t, n, r.Table)
	checkInstalled(t, first, r)

	install(t, n, r)
	second := readTable(t, n, r.Table)
	checkInstalled(t, second, r)
	for _, ch := range []string{ChainOut, ChainIn} {
		if a, b := len(first.rules[ch]), len(second.rules[ch]); a != b {
			t.Errorf("chain %s: %d rules after the first Install, %d after the second", ch, a, b)
		}
	}
	testutil.InNetNS(t, n, func() error {
		ok, err := Installed(r.Table)
		if err != nil || !ok {
			return fmt.Errorf("Installed after Install = %v, %v; want true, nil", ok, err)
		}
		return nil
	})
}

// A table left behind by an older version (wrong priority, an extra chain
// reached by a jump) is brought to the current shape by one Install.
func TestInstallRepairsStaleTable(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	testutil.InNetNS(t, n, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tab := c.AddTable(tableOf(""))
		junk := c.AddChain(&nftables.Chain{Name: "junk", Table: tab})
		old := c.AddChain(&nftables.Chain{
			Name: ChainOut, Table: tab, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityFilter,
		})
		c.AddRule(&nftables.Rule{Table: tab, Chain: old, Exprs: []expr.Any{
			&expr.Verdict{Kind: expr.VerdictJump, Chain: junk.Name},
		}})
		c.AddRule(&nftables.Rule{Table: tab, Chain: junk, Exprs: []expr.Any{
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
		return c.Flush()
	})
	install(t, n, v4Rules)
	checkInstalled(t, readTable(t, n, ""), v4Rules)
}

func TestRemove(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	// A neighbouring table that must survive.
	testutil.InNetNS(t, n, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet})
		return c.Flush()
	})
	install(t, n, v4Rules)
	remove(t, n, "")
	testutil.InNetNS(t, n, func() error {
		ok, err := Installed("")
		if err != nil || ok {
			return fmt.Errorf("Installed after Remove = %v, %v; want false, nil", ok, err)
		}
		if err := Remove(""); err != nil {
			return fmt.Errorf("Remove of an absent table: %w", err)
		}
		if _, _, err := Counters(""); err == nil {
			return errors.New("Counters after Remove: no error")
		}
		return nil
	})
	if rb := readTable(t, n, "other"); !reflect.DeepEqual(rb.tables, []string{"other"}) {
		t.Errorf("tables after Remove = %v, want [other]", rb.tables)
	}
}

func TestInstallRejectsInvalidRules(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	testutil.InNetNS(t, n, func() error {
		err := Install(Rules{ClusterCIDRs: pfx("10.98.0.0/16")})
		if !errors.Is(err, ErrInvalidRules) {
			return fmt.Errorf("Install without a device = %v, want ErrInvalidRules", err)
		}
		if ok, err := Installed(""); err != nil || ok {
			return fmt.Errorf("Installed after a refused Install = %v, %v; want false", ok, err)
		}
		return nil
	})
}

// ---- behaviour ----

func TestOutboundMisroutedTrafficIsDropped(t *testing.T) {
	for _, fam := range []struct {
		name, any, remote, underlay, viaDevNet, viaDevAddr string
	}{
		{"ipv4", "0.0.0.0", "10.98.2.5", "198.18.0.2", "10.98.3.0/24", "10.98.3.5"},
		{"ipv6", "::", "fd98:0:0:2::5", "fd00:18::2", "fd98:0:0:3::/64", "fd98:0:0:3::5"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			tb := newTestbed(t)
			remote := listen(t, tb.b, fam.remote)
			underlay := listen(t, tb.b, fam.underlay)

			// Without rules the misrouting leaks: proves the probe can fail.
			expectArrived(t, "no rules: A -> remote pod via underlay", tb.a, fam.any, remote)

			install(t, tb.a, dualRules)
			out0, _ := counters(t, tb.a, "")
			expectDropped(t, "strict: A -> remote pod via underlay", tb.a, fam.any, remote)
			out1, _ := counters(t, tb.a, "")
			if out1 < out0+probeCount {
				t.Errorf("out counter %d -> %d, want +%d", out0, out1, probeCount)
			}
			expectArrived(t, "strict: A -> underlay address (outside the cluster CIDR)", tb.a, fam.any, underlay)

			// Through the device: not dropped, it enters the tunnel.
			testutil.InNetNS(t, tb.a, func() error { return addDevRoute(fam.viaDevNet, testDevice) })
			s := sender(t, tb.a, fam.any)
			for range probeCount {
				if _, err := s.WriteToUDPAddrPort([]byte("via-device"), netip.MustParseAddrPort(net.JoinHostPort(fam.viaDevAddr, "9"))); err != nil {
					t.Errorf("send via %s: %v", testDevice, err)
				}
			}
			if got := tb.tunPackets([]byte("via-device")); got != probeCount {
				t.Errorf("%d of %d datagrams routed via %s entered it", got, probeCount, testDevice)
			}
			if out2, _ := counters(t, tb.a, ""); out2 != out1 {
				t.Errorf("out counter moved %d -> %d for traffic via the device", out1, out2)
			}

			// Re-install keeps the counter.
			install(t, tb.a, dualRules)
			if out3, _ := counters(t, tb.a, ""); out3 != out1 {
				t.Errorf("out counter %d after re-install, want %d", out3, out1)
			}

			remove(t, tb.a, "")
			expectArrived(t, "after Remove: A -> remote pod via underlay", tb.a, fam.any, remote)
		})
	}
}

func TestInboundPlaintextIsDropped(t *testing.T) {
	for _, fam := range []struct{ name, aUnderlay, bRemote, bUnderlay string }{
		{"ipv4", "198.18.0.1", "10.98.2.5", "198.18.0.2"},
		{"ipv6", "fd00:18::1", "fd98:0:0:2::5", "fd00:18::2"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			tb := newTestbed(t)
			l := listen(t, tb.a, fam.aUnderlay)

			expectArrived(t, "no rules: B(remote pod address) -> A", tb.b, fam.bRemote, l)

			install(t, tb.a, dualRules)
			_, in0 := counters(t, tb.a, "")
			expectDropped(t, "strict: B(remote pod address) -> A on the underlay", tb.b, fam.bRemote, l)
			_, in1 := counters(t, tb.a, "")
			if in1 < in0+probeCount {
				t.Errorf("in counter %d -> %d, want +%d", in0, in1, probeCount)
			}
			expectArrived(t, "strict: B(underlay address) -> A", tb.b, fam.bUnderlay, l)

			remove(t, tb.a, "")
			expectArrived(t, "after Remove: B(remote pod address) -> A", tb.b, fam.bRemote, l)
		})
	}
}

// Pod traffic is forwarded, not host-originated: a pod netns P behind A.
func TestForwardedPodTrafficIsDropped(t *testing.T) {
	tb := newTestbed(t)
	p := testutil.NewNetNS(t)
	testutil.InNetNS(t, tb.a, func() error {
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: "pod0"},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(p.Fd())),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		l, err := netlink.LinkByName("pod0")
		if err != nil {
			return err
		}
		if err := addAddr(l, "10.98.1.2/24"); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
	testutil.InNetNS(t, p, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := addAddr(l, "10.98.1.5/24"); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{Dst: mustPrefix("0.0.0.0/0"), Gw: net.ParseIP("10.98.1.2")})
	})
	waitReach(t, p, "10.98.1.5", tb.a, "10.98.1.2")
	remote := listen(t, tb.b, "10.98.2.5")
	pod := listen(t, p, "10.98.1.5")

	expectArrived(t, "no rules: pod -> remote pod, forwarded via underlay", p, "10.98.1.5", remote)
	expectArrived(t, "no rules: remote pod address -> pod, forwarded", tb.b, "10.98.2.5", pod)

	withPod := v4Rules
	withPod.Pods = []Pod{{Interface: "pod0", Addr: netip.MustParseAddr("10.98.1.5")}}
	install(t, tb.a, withPod)
	out0, in0 := counters(t, tb.a, "")
	expectDropped(t, "strict: pod -> remote pod, forwarded via underlay", p, "10.98.1.5", remote)
	expectDropped(t, "strict: remote pod address -> pod, forwarded", tb.b, "10.98.2.5", pod)
	out1, in1 := counters(t, tb.a, "")
	if out1 < out0+probeCount || in1 < in0+probeCount {
		t.Errorf("counters out %d -> %d, in %d -> %d; want +%d each", out0, out1, in0, in1, probeCount)
	}
	// Local pod <-> host traffic on the pod's own veth is allowed both ways.
	host := listen(t, tb.a, "10.98.1.2")
	expectArrived(t, "strict: pod -> host", p, "10.98.1.5", host)
	expectArrived(t, "strict: host -> pod", tb.a, "10.98.1.2", pod)

	// The underlay (B) claiming a local pod-range address, or its own, to
	// reach the pod: dropped before routing (in), counted.
	testutil.InNetNS(t, tb.b, func() error {
		l, err := netlink.LinkByName("ulb")
		if err != nil {
			return err
		}
		return addAddr(l, "10.98.1.9/32")
	})
	_, in2 := counters(t, tb.a, "")
	expectDropped(t, "strict: underlay with a local pod-range source -> pod", tb.b, "10.98.1.9", pod)
	expectDropped(t, "strict: underlay with its own address -> pod", tb.b, "198.18.0.2", pod)
	if _, in3 := counters(t, tb.a, ""); in3 < in2+2*probeCount {
		t.Errorf("in counter %d -> %d, want +%d", in2, in3, 2*probeCount)
	}

	// The pod claiming another address (here one it was not given):
	// dropped on its veth, counted as spoofing.
	testutil.InNetNS(t, p, func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return addAddr(l, "10.98.1.6/32")
	})
	var d0, d1 Drops
	testutil.InNetNS(t, tb.a, func() (err error) { d0, err = ReadDrops(""); return err })
	expectDropped(t, "strict: pod with another source -> host", p, "10.98.1.6", host)
	testutil.InNetNS(t, tb.a, func() (err error) { d1, err = ReadDrops(""); return err })
	if d1.Spoof < d0.Spoof+probeCount {
		t.Errorf("spoof counter %d -> %d, want +%d", d0.Spoof, d1.Spoof, probeCount)
	}

	// Without the pod in the sets, its veth is just another interface.
	install(t, tb.a, v4Rules)
	expectDropped(t, "strict, pod unknown: host -> pod", tb.a, "10.98.1.2", pod)
	expectDropped(t, "strict, pod unknown: pod -> host", p, "10.98.1.5", host)
}

// Before join: no local CIDR, everything in the cluster CIDR must use the
// device (loopback aside).
func TestBootCaseDropsAllClusterTraffic(t *testing.T) {
	tb := newTestbed(t)
	testutil.InNetNS(t, tb.a, func() error { return addRoute("10.98.1.0/24", "198.18.0.2") })
	testutil.InNetNS(t, tb.b, func() error {
		l, err := netlink.LinkByName("ulb")
		if err != nil {
			return err
		}
		return addAddr(l, "10.98.1.7/32")
	})
	remote := listen(t, tb.b, "10.98.2.5")
	future := listen(t, tb.b, "10.98.1.7") // would be local after join
	underlay := listen(t, tb.b, "198.18.0.2")
	self := listen(t, tb.a, "10.98.1.1") // A's own device address, via lo

	expectArrived(t, "no rules: A -> 10.98.1.7 via underlay", tb.a, "0.0.0.0", future)

	boot := Rules{ClusterCIDRs: pfx("10.98.0.0/16"), Device: testDevice}
	if err := boot.Validate(); err != nil {
		t.Fatalf("boot rules: %v", err)
	}
	install(t, tb.a, boot)
	expectDropped(t, "boot: A -> remote pod via underlay", tb.a, "0.0.0.0", remote)
	expectDropped(t, "boot: A -> 10.98.1.7 via underlay", tb.a, "0.0.0.0", future)
	expectDropped(t, "boot: remote pod address -> A", tb.b, "10.98.2.5", listen(t, tb.a, "198.18.0.1"))
	if out, inn := counters(t, tb.a, ""); out < 2*probeCount || inn < probeCount {
		t.Errorf("counters out %d in %d, want >= %d and >= %d", out, inn, 2*probeCount, probeCount)
	}
	expectArrived(t, "boot: A -> underlay", tb.a, "0.0.0.0", underlay)
	expectArrived(t, "boot: A -> its own cluster address over loopback", tb.a, "0.0.0.0", self)
}

// Install with other Pods replaces the pod sets; it does not add to them.
func TestInstallReplacesPods(t *testing.T) {
	tb := newTestbed(t)
	remote := listen(t, tb.b, "10.98.2.5")
	inbound := listen(t, tb.a, "198.18.0.1")

	r := v4Rules
	r.LocalCIDRs = pfx("10.98.2.0/24") // pretend 10.98.2.5 is a pod of this node, behind ula
	r.Pods = []Pod{{Interface: "ula", Addr: netip.MustParseAddr("10.98.2.5")}}
	install(t, tb.a, r)
	checkInstalled(t, readTable(t, tb.a, ""), r)
	expectArrived(t, "pod 10.98.2.5 on ula: A -> 10.98.2.5", tb.a, "0.0.0.0", remote)
	expectArrived(t, "pod 10.98.2.5 on ula: 10.98.2.5 -> A", tb.b, "10.98.2.5", inbound)

	install(t, tb.a, v4Rules) // no pods: 10.98.2.5 is remote again
	expectDropped(t, "no pods: A -> 10.98.2.5", tb.a, "0.0.0.0", remote)
	expectDropped(t, "no pods: 10.98.2.5 -> A", tb.b, "10.98.2.5", inbound)
	checkInstalled(t, readTable(t, tb.a, ""), v4Rules)
	testutil.InNetNS(t, tb.a, func() error { return Verify(v4Rules) })
}

// SyncPods changes only the pod sets, to exactly the wanted pods, and
// Verify agrees afterwards; with the table gone it fails and changes nothing.
func TestSyncPods(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	r := dualRules
	install(t, n, r)
	pod := func(ifn, a string) Pod { return Pod{Interface: ifn, Addr: netip.MustParseAddr(a)} }
	steps := [][]Pod{
		{pod("cmaaaa0001", "10.98.1.5")},
		{pod("cmaaaa0001", "10.98.1.5"), pod("cmaaaa0002", "10.98.1.6"), pod("cmaaaa0002", "fd98:0:0:1::6")},
		{pod("cmaaaa0002", "fd98:0:0:1::6")},
		nil,
	}
	for i, pods := range steps {
		r.Pods = pods
		testutil.InNetNS(t, n, func() error {
			if err := SyncPods(r); err != nil {
				return fmt.Errorf("step %d: SyncPods: %w", i, err)
			}
			if err := Verify(r); err != nil {
				return fmt.Errorf("step %d: Verify after SyncPods: %w", i, err)
			}
			return nil
		})
		checkInstalled(t, readTable(t, n, ""), r)
	}
	remove(t, n, "")
	testutil.InNetNS(t, n, func() error {
		if err := SyncPods(r); err == nil {
			return errors.New("SyncPods without the table: no error")
		}
		if ok, _ := Installed(""); ok {
			return errors.New("SyncPods created the table")
		}
		return nil
	})
}

// Verify tells a missing table from an altered one, and names what changed.
func TestVerifyDetectsDrift(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	r := v4Rules
	r.Pods = []Pod{{Interface: "cmaaaa0001", Addr: netip.MustParseAddr("10.98.1.5")}}
	tab := tableOf("")
	for _, tc := range []struct {
		name   string
		change func(c *nftables.Conn) error
		want   error
		says   string
	}{
		{"flush ruleset", func(c *nftables.Conn) error { c.FlushRuleset(); return nil }, ErrTableMissing, "does not exist"},
		{"accept rule on top of in", func(c *nftables.Conn) error {
			c.InsertRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Name: ChainIn, Table: tab},
				Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
			return nil
		}, ErrTableAltered, "chain in holds 4 rules, want 3"},
		{"rules flushed", func(c *nftables.Conn) error { c.FlushTable(tab); return nil }, ErrTableAltered, "chain out holds 0 rules"},
		{"pod element deleted", func(c *nftables.Conn) error {
			return c.SetDeleteElements(&nftables.Set{Table: tab, Name: SetPodAddrs4, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)},
				[]nftables.SetElement{{Key: podKey(r.Pods[0])}})
		}, ErrTableAltered, "set pod_addrs4 holds 0 elements, want 1"},
		{"foreign element added", func(c *nftables.Conn) error {
			return c.SetAddElements(&nftables.Set{Table: tab, Name: SetPodInterfaces, KeyType: nftables.TypeIFName},
				[]nftables.SetElement{{Key: ifname("eth0")}})
		}, ErrTableAltered, "set pod_ifs holds 2 elements, want 1"},
	} {
		install(t, n, r)
		testutil.InNetNS(t, n, func() error {
			if err := Verify(r); err != nil {
				return fmt.Errorf("%s: Verify right after Install: %w", tc.name, err)
			}
			c, err := nftables.New()
			if err != nil {
				return err
			}
			if err := tc.change(c); err != nil {
				return err
			}
			if err := c.Flush(); err != nil {
				return fmt.Errorf("%s: %w", tc.name, err)
			}
			err = Verify(r)
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.says) {
				return fmt.Errorf("%s: Verify = %v, want %v saying %q", tc.name, err, tc.want, tc.says)
			}
			return nil
		})
	}
	install(t, n, r)
	testutil.InNetNS(t, n, func() error { return Verify(r) })
}

// Watch signals every committed change, by anyone, promptly.
func TestWatchSignalsChanges(t *testing.T) {
	needRoot(t)
	n := testutil.NewNetNS(t)
	install(t, n, v4Rules)
	ctx, cancel := context.WithCancel(context.Background())
	var ch <-chan struct{}
	testutil.InNetNS(t, n, func() (err error) { ch, err = Watch(ctx); return err })
	for i, change := range []func(c *nftables.Conn){
		func(c *nftables.Conn) { c.FlushRuleset() },
		func(c *nftables.Conn) { c.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet}) },
	} {
		start := time.Now()
		testutil.InNetNS(t, n, func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			change(c)
			return c.Flush()
		})
		select {
		case <-ch:
			t.Logf("change %d signalled after %s", i, time.Since(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d: no signal within 10s", i)
		}
	}
	cancel()
	for deadline := time.After(10 * time.Second); ; {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("Watch's channel not closed 10s after its context ended")
		}
	}
}

// Re-installing, also with changing rules, while remote traffic is being
// sent never lets a packet through.
func TestReinstallNeverOpensWindow(t *testing.T) {
	tb := newTestbed(t)
	remote := listen(t, tb.b, "10.98.2.5")
	install(t, tb.a, v4Rules)

	s := sender(t, tb.a, "0.0.0.0")
	stop := make(chan struct{})
	var sent atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s.WriteToUDPAddrPort([]byte("window"), remote.addr) // EPERM while dropped
			sent.Add(1)
		}
	}()
	alt := v4Rules
	alt.LocalCIDRs = pfx("10.98.3.0/24")
	for i := range 100 {
		r := v4Rules
		if i%2 == 1 {
			r = alt
		}
		install(t, tb.a, r)
	}
	close(stop)
	wg.Wait()

	remote.conn.SetReadDeadline(time.Now().Add(probeWait))
	buf := make([]byte, 64)
	if k, _, err := remote.conn.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("a datagram (%q) got through during re-installs", buf[:k])
	}
	out, _ := counters(t, tb.a, "")
	t.Logf("sent %d datagrams during 100 re-installs; out counter %d", sent.Load(), out)
	if out < sent.Load() {
		t.Errorf("out counter %d < %d datagrams sent", out, sent.Load())
	}
}

// TestListedTableLoadsAgain: what `nft list` shows of the table is what
// an operator saves and loads back (`nft list ruleset > f; nft -f f`): the
// pod interface names must print as themselves, and the listing must load.
func TestListedTableLoadsAgain(t *testing.T) {
	needRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatalf("nft(8) is needed (the Makefile installs nftables): %v", err)
	}
	n := testutil.NewNetNS(t)
	r := dualRules
	r.Table = "cm-listed"
	r.Pods = []Pod{
		{Interface: "cm1111aaaa", Addr: netip.MustParseAddr("10.98.1.5")},
		{Interface: "cm2222bbbb", Addr: netip.MustParseAddr("fd98:0:0:1::6")},
	}
	install(t, n, r)
	nft := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "nft"}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("nft %s: %v\n%s\ninput:\n%s", strings.Join(args, " "), err, out, stdin)
		}
		return string(out)
	}
	listed := nft("", "list", "table", "inet", r.Table)
	_, ifs, _ := strings.Cut(listed, "set "+SetPodInterfaces+" {")
	ifs, _, _ = strings.Cut(ifs, "}")
	for _, want := range []string{`"cm1111aaaa"`, `"cm2222bbbb"`} {
		if !strings.Contains(ifs, want) {
			t.Errorf("nft list does not show %s in set %s:%s", want, SetPodInterfaces, ifs)
		}
	}
	for _, want := range []string{`"cm1111aaaa" . 10.98.1.5`, `"cm2222bbbb" . fd98:0:0:1::6`} {
		if !strings.Contains(listed, want) {
			t.Errorf("nft list does not show %s:\n%s", want, listed)
		}
	}
	remove(t, n, r.Table)
	nft(listed, "-f", "-")
	if again := nft("", "list", "table", "inet", r.Table); again != listed {
		t.Fatalf("the table loaded from its listing lists differently:\n%s\nwant:\n%s", again, listed)
	}
}
