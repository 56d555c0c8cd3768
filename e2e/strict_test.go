//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/confmesh/confmesh/netlab"
)

// spoofCount is how many copies of each forged datagram are sent.
const spoofCount = 5

// forgedSettle bounds the wait for node-1's strict counters to have counted
// every forged packet (a loaded 2-core machine can hold a packet that long).
const forgedSettle = 15 * time.Second

// TestStrictUnderlayInjection forges plaintext pod traffic with raw
// sockets, from the underlay (an attacker on the bridge routing forged
// packets to node-1's underlay address) and from a pod on node-1, and
// checks that none of it reaches a pod: not node-1's own pods, and not a
// pod on node-2 through node-1's WireGuard tunnel (where it would arrive
// authenticated as node-1's traffic). Node-1's strict drop counters must
// rise by at least the number of forged packets. Genuine traffic along the
// same paths must still arrive, so the test cannot pass by breaking
// everything.
func TestStrictUnderlayInjection(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a1, a2, a3 := c.AddPod(n1), c.AddPod(n1), c.AddPod(n1)
	b := c.AddPod(n2)
	// The tunnel is up (handshake done), so a forged packet that got into
	// it would be delivered.
	for _, p := range []*Pod{a1, a2, a3} {
		if err := netlab.SendUDP(p, b, netlab.RandomPayload("warm-up", 16), 10*time.Second); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}

	cluster := netip.MustParsePrefix(agent.DefaultClusterCIDR)
	unusedLocal := lastHost(n1.PodCIDR)        // in node-1's pod CIDR, never allocated to a pod
	unallocated := unallocatedAddr(t, cluster, // in the cluster CIDR, in no node's pod CIDR
		n1.PodCIDR, n2.PodCIDR)

	port := netlab.RandomPort()
	listen := func(p *Pod) *netlab.UDPReceiver {
		r, err := netlab.ListenUDP(p.NS, netip.AddrPortFrom(p.IP, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Close)
		return r
	}
	rx := map[*Pod]*netlab.UDPReceiver{a1: listen(a1), a3: listen(a3), b: listen(b)}
	at := func(p *Pod) netip.AddrPort { return netip.AddrPortFrom(p.IP, port) }
	from := func(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 40000) }

	type attack struct {
		name     string
		fromNS   string // where the raw socket is
		src      netip.Addr
		to       *Pod
		underlay bool // sent from the underlay, routed to node-1's underlay address
	}
	attacks := []attack{
		{"(a) underlay: node-1 pod source to node-2 pod, via node-1", c.Underlay, a1.IP, b, true},
		{"(b) underlay: other node-1 pod-range source to node-1 pod", c.Underlay, unusedLocal, a1, true},
		{"(b') underlay: node-1 pod source to another node-1 pod", c.Underlay, a3.IP, a1, true},
		{"(c) underlay: node-2 pod source to node-1 pod", c.Underlay, b.IP, a1, true},
		{"(d) underlay: unallocated cluster source to node-1 pod", c.Underlay, unallocated, a1, true},
		{"(d') underlay: underlay source to node-1 pod", c.Underlay, netlab.BridgeIP, a1, true},
		{"(e) pod 2 on node-1 claims pod 1's address, to node-2 pod", a2.NS, a1.IP, b, false},
		{"(e') pod 2 on node-1 claims pod 1's address, to pod 3 on node-1", a2.NS, a1.IP, a3, false},
		{"(e'') pod 2 on node-1 claims an unallocated node-1 address, to node-2 pod", a2.NS, unusedLocal, b, false},
	}

	dropsBefore := strictDrops(t, n1)
	sent := 0
	forged := make([][]byte, len(attacks))
	for i, at_ := range attacks {
		if at_.underlay {
			// The attacker's host routes the forged destination to node-1.
			if _, err := netlab.Exec("ip", "-n", c.Underlay, "route", "replace", at_.to.IP.String()+"/32", "via", n1.IP.String()); err != nil {
				t.Fatal(err)
			}
		}
		payload := netlab.RandomPayload("forged "+at_.name, 16)
		if err := netlab.SendSpoofedUDP(at_.fromNS, from(at_.src), at(at_.to), payload, spoofCount); err != nil {
			t.Fatalf("%s: %v", at_.name, err)
		}
		sent += spoofCount
		forged[i] = payload
	}
	// Genuine datagrams along the same paths, sent after the forged ones:
	// once they are in, the forged ones had every chance to arrive.
	for _, g := range []struct{ from, to *Pod }{{a2, b}, {a2, a3}, {a2, a1}} {
		payload := netlab.RandomPayload("genuine", 16)
		s, err := netlab.DialUDP(g.from.NS, at(g.to))
		if err != nil {
			t.Fatal(err)
		}
		err = netlab.Eventually(10*time.Second, 100*time.Millisecond, func() error {
			if rx[g.to].Has(payload) {
				return nil
			}
			_, _ = s.Write(payload)
			return netlab.ErrNotYet
		})
		s.Close()
		if err != nil {
			t.Errorf("genuine %s -> %s: %v", g.from.Name, g.to.Name, err)
		}
	}
	// Stragglers of the forged ones from the underlay (no genuine path to
	// compare with): each forged packet is done with once node-1's strict
	// counters have counted it, so wait for that count rather than a
	// fixed pause. Should it never come, the checks below say why.
	var dropsAfter netfilter.Drops
	_ = netlab.Eventually(forgedSettle, netlab.PollEvery, func() error {
		if dropsAfter = strictDrops(t, n1); total(dropsAfter)-total(dropsBefore) < uint64(sent) {
			return netlab.ErrNotYet
		}
		return nil
	})
	for i, at_ := range attacks {
		if rx[at_.to].Has(forged[i]) {
			t.Errorf("%s: DELIVERED to %s (%s)", at_.name, at_.to.Name, at_.to.IP)
		} else {
			t.Logf("%s: not delivered", at_.name)
		}
	}
	t.Logf("node-1 strict drops before %+v, after %+v; forged packets sent %d", dropsBefore, dropsAfter, sent)
	if got := total(dropsAfter) - total(dropsBefore); got < uint64(sent) {
		t.Errorf("node-1 strict drop counters rose by %d, want at least %d (every forged packet dropped and counted)", got, sent)
	}
	if got := dropsAfter.Spoof - dropsBefore.Spoof; got < 3*spoofCount {
		t.Errorf("node-1 spoof counter rose by %d, want at least %d (the forged packets of pod 2)", got, 3*spoofCount)
	}
}

// lastHost is the highest usable host address of p (IPv4).
func lastHost(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1<<host - 1) &^ 1 // all host bits but the last: not the broadcast
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// unallocatedAddr is an address of cluster outside every one of used.
func unallocatedAddr(t *testing.T, cluster netip.Prefix, used ...netip.Prefix) netip.Addr {
	t.Helper()
	for _, cand := range []string{"10.244.250.9", "10.244.200.9", "10.244.123.9"} {
		a := netip.MustParseAddr(cand)
		ok := cluster.Contains(a)
		for _, u := range used {
			ok = ok && !u.Contains(a)
		}
		if ok {
			return a
		}
	}
	t.Fatalf("no unallocated address in %s outside %v", cluster, used)
	return netip.Addr{}
}

// strictDrops reads node n's three strict drop counters.
func strictDrops(t *testing.T, n *Node) netfilter.Drops {
	t.Helper()
	var d netfilter.Drops
	err := netlab.InNS(n.NS, func() error {
		var err error
		d, err = netfilter.ReadDrops(agent.DefaultTable)
		return err
	})
	if err != nil {
		t.Fatalf("%s: strict counters: %v", n.Name, err)
	}
	return d
}

func total(d netfilter.Drops) uint64 { return d.Out + d.In + d.Spoof }

// TestStrictSelfHeals: while pods on node-1 and node-2 stream datagrams to
// each other, the ruleset of node-1 is flushed (`nft flush ruleset`) and
// the routes that keep pod traffic in the tunnel are deleted (node-2's pod
// CIDR via the WireGuard device, node-1's pod /32 via its veth), in one
// shell command. Phase 1, agent running: the table must be back within 1 s
// (measured), the routes restored, the status must count the re-install
// and report strict mode on, and traffic must flow again. Phase 2, agent
// stopped (nothing heals): the same again; the fail-closed routes must hold
// on their own. Through both phases no pod packet may cross the underlay in
// clear.
func TestStrictSelfHeals(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)
	for _, p := range [][2]*Pod{{a, b}, {b, a}} {
		if err := netlab.SendUDP(p[0], p[1], netlab.RandomPayload("warm-up", 16), 10*time.Second); err != nil {
			t.Fatalf("warm-up: %v", err)
		}
	}
	cluster := netip.MustParsePrefix(agent.DefaultClusterCIDR)
	before, err := n1.Status()
	if err != nil {
		t.Fatal(err)
	}

	capt := c.StartCapture(120 * time.Second)
	const count, interval = 6000, 10 * time.Millisecond
	ab, err := netlab.StartUDPStream(a, b, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	ba, err := netlab.StartUDPStream(b, a, count, interval)
	if err != nil {
		t.Fatal(err)
	}
	waitSent := func(n int) {
		t.Helper()
		if err := netlab.Eventually(20*time.Second, 10*time.Millisecond, func() error {
			if ab.Sent() < n {
				return netlab.ErrNotYet
			}
			return nil
		}); err != nil {
			t.Fatalf("stream: %v", err)
		}
	}
	// A route already gone (not restored) is no reason to stop.
	sabotage := fmt.Sprintf("nft flush ruleset; ip route del %s dev %s 2>/dev/null; ip route del %s/32 dev %s 2>/dev/null; true",
		n2.PodCIDR, n1.Device, a.IP, a.HostIf)
	routesBack := func() error {
		out, err := netlab.Exec("ip", "-n", n1.NS, "route", "show")
		if err != nil {
			return err
		}
		for _, want := range []string{n2.PodCIDR.String() + " dev " + n1.Device, a.IP.String() + " dev " + a.HostIf} {
			if !strings.Contains(out, want) {
				return fmt.Errorf("no route %q in:\n%s", want, out)
			}
		}
		return nil
	}

	// Phase 1: the agent heals.
	waitSent(150)
	t0 := time.Now()
	if _, err := netlab.Exec("ip", "netns", "exec", n1.NS, "sh", "-c", sabotage); err != nil {
		t.Fatal(err)
	}
	sabotaged := time.Since(t0)
	var back time.Duration
	if err := netlab.Eventually(5*time.Second, 2*time.Millisecond, func() error {
		ok, err := tableInstalled(n1)
		if err != nil || !ok {
			return fmt.Errorf("table present=%v: %v", ok, err)
		}
		back = time.Since(t0)
		return nil
	}); err != nil {
		t.Errorf("strict table not back: %v", err)
	} else {
		t.Logf("phase 1: sabotage command took %s; strict table back %s after it started", sabotaged.Round(time.Millisecond), back.Round(time.Millisecond))
		if back > time.Second {
			t.Errorf("strict table back after %s, want within 1s", back.Round(time.Millisecond))
		}
	}
	if err := netlab.Eventually(10*time.Second, 20*time.Millisecond, routesBack); err != nil {
		t.Errorf("phase 1: routes not restored: %v", err)
	} else {
		t.Logf("phase 1: routes restored %s after the sabotage started", time.Since(t0).Round(time.Millisecond))
	}
	var after *Status
	if err := netlab.Eventually(10*time.Second, 100*time.Millisecond, func() error {
		st, err := n1.Status()
		if err != nil {
			return err
		}
		after = st
		if !st.Ready || !st.StrictMode || st.Strict.State != "installed" || st.Strict.Reinstalls <= before.Strict.Reinstalls {
			return fmt.Errorf("ready=%v strictMode=%v strict=%+v (reinstalls before: %d)", st.Ready, st.StrictMode, st.Strict, before.Strict.Reinstalls)
		}
		return nil
	}); err != nil {
		t.Errorf("phase 1: status: %v", err)
	} else {
		t.Logf("phase 1: status strict=%+v", after.Strict)
	}
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("after phase 1", 16), 10*time.Second); err != nil {
		t.Errorf("phase 1: traffic after healing: %v", err)
	}

	// Phase 2: nothing heals; the routes alone must hold.
	if err := n1.StopAgent(); err != nil {
		t.Fatalf("stop agent: %v", err)
	}
	sent := ab.Sent()
	if _, err := netlab.Exec("ip", "netns", "exec", n1.NS, "sh", "-c", sabotage); err != nil {
		t.Fatal(err)
	}
	waitSent(sent + 100) // a second of traffic with neither rules nor pod routes
	ab.Stop()
	ba.Stop()
	t2 := time.Now()
	n1.StartAgent()
	n1.WaitReady()
	if ok, err := tableInstalled(n1); err != nil || !ok {
		t.Errorf("phase 2: strict table after the agent restart: present=%v err=%v", ok, err)
	}
	if err := netlab.Eventually(10*time.Second, 20*time.Millisecond, routesBack); err != nil {
		t.Errorf("phase 2: routes not restored: %v", err)
	} else {
		t.Logf("phase 2: agent ready and routes restored %s after its start", time.Since(t2).Round(time.Millisecond))
	}
	if err := netlab.SendUDP(a, b, netlab.RandomPayload("after phase 2", 16), 10*time.Second); err != nil {
		t.Errorf("phase 2: traffic after restart: %v", err)
	}

	missAB, err1 := ab.Finish(count*interval + 10*time.Second)
	missBA, err2 := ba.Finish(count*interval + 10*time.Second)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	frames, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("streams: %s -> %s lost %d of %d, %s -> %s lost %d of %d", a.Name, b.Name, len(missAB), ab.Sent(), b.Name, a.Name, len(missBA), ba.Sent())
	clear := 0
	for _, f := range frames {
		p := netlab.Parse(f)
		if p.EtherType == netlab.EtherIPv4 && (cluster.Contains(p.Src) || cluster.Contains(p.Dst)) {
			clear++
		}
	}
	t.Logf("underlay frames during both phases:\n%s", netlab.Summarize(frames))
	if clear > 0 {
		t.Errorf("%d frames with a pod address crossed the underlay in clear", clear)
	}
	if bad := c.UnderlayViolations(frames); len(bad) > 0 {
		t.Errorf("frames the underlay must not carry:\n%v", strings.Join(bad, "\n"))
	}
}

// tableInstalled reports whether node n's strict table exists.
func tableInstalled(n *Node) (bool, error) {
	var ok bool
	err := netlab.InNS(n.NS, func() error {
		var err error
		ok, err = netfilter.Installed(agent.DefaultTable)
		return err
	})
	return ok, err
}
