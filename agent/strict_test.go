package agent

import (
	"errors"
	"net/netip"
	"os"
	"testing"

	"github.com/confmesh/confmesh/internal/hostveth"
	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestPodsOf(t *testing.T) {
	pod := netip.MustParsePrefix("10.244.5.0/24")
	got := podsOf(pod, []Allocation{
		{Attachment: Attachment{ContainerID: "c1", Interface: "eth0"}, IP: netip.MustParseAddr("10.244.5.2")},
		{Attachment: Attachment{ContainerID: "c2", Interface: "eth1"}, IP: netip.MustParseAddr("10.244.7.2")}, // an earlier pod CIDR
		{Attachment: Attachment{ContainerID: "c3", Interface: "eth0"}, IP: netip.MustParseAddr("10.244.5.3")},
	})
	want := []netfilter.Pod{
		{Interface: hostveth.Name("c1", "eth0"), Addr: netip.MustParseAddr("10.244.5.2")},
		{Interface: hostveth.Name("c3", "eth0"), Addr: netip.MustParseAddr("10.244.5.3")},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("podsOf = %v, want %v", got, want)
	}
}

// newStrictAgent is a test agent in strict mode (its metrics registered),
// joined with the pod CIDR 10.244.5.0/24.
func newStrictAgent(t *testing.T) *Agent {
	t.Helper()
	a := newTestAgent(t)
	a.cfg.StrictMode = true
	a.metrics.registerStrict(a.Strict)
	a.mu.Lock()
	a.joined, a.podCIDR = true, netip.MustParsePrefix("10.244.5.0/24")
	a.mu.Unlock()
	return a
}

// TestStrictCheckRepairs runs the agent's strict-mode bookkeeping in a
// fresh network namespace: pods enter and leave the sets with their IPAM
// addresses; a removed or altered table makes the agent not ready and is
// re-installed by the next check (counted); deleted fail-closed and pod
// routes come back.
func TestStrictCheckRepairs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables, routes)")
	}
	a := newStrictAgent(t)
	cluster := netip.MustParsePrefix(DefaultClusterCIDR)
	k := Attachment{ContainerID: "c0ffee", Interface: "eth0"}
	veth := hostveth.Name(k.ContainerID, k.Interface)

	n := testutil.NewNetNS(t)
	testutil.InNetNS(t, n, func() error {
		if err := a.InstallStrictRules(); err != nil {
			return err
		}
		if ok, why := a.strictHealthy(); !ok {
			t.Errorf("after InstallStrictRules: not healthy: %s", why)
		}
		if !hasFailClosed(t, cluster) {
			t.Errorf("no fail-closed route for %s after InstallStrictRules", cluster)
		}

		// A pod: its address enters the sets (element by element).
		ip, _, err := a.AllocateIP(k)
		if err != nil {
			return err
		}
		r := a.strictRules()
		if len(r.Pods) != 1 || r.Pods[0] != (netfilter.Pod{Interface: veth, Addr: ip}) {
			t.Errorf("pods = %v, want %s on %s", r.Pods, ip, veth)
		}
		if err := netfilter.Verify(r); err != nil {
			t.Errorf("after AllocateIP: %v", err)
		}

		// The table removed: not ready, reported, then re-installed.
		if err := netfilter.Remove(a.cfg.Table); err != nil {
			return err
		}
		if ok, why := a.Ready(); ok || why != "strict rules are not installed" {
			t.Errorf("Ready with the table gone = %v %q", ok, why)
		}
		if si := a.Strict(); si.State != StrictMissing {
			t.Errorf("Strict().State with the table gone = %q, want %q", si.State, StrictMissing)
		}
		a.checkStrict()
		si := a.Strict()
		if si.State != StrictInstalled || si.Reinstalls != 1 || si.Pods != 1 {
			t.Errorf("after a check: %+v, want installed, 1 re-install, 1 pod", si)
		}
		if err := netfilter.Verify(a.strictRules()); err != nil {
			t.Errorf("after the re-install: %v", err)
		}

		// An accept rule slipped in front of the drops: altered, re-installed.
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tab := &nftables.Table{Name: a.cfg.Table, Family: nftables.TableFamilyINet}
		c.InsertRule(&nftables.Rule{Table: tab, Chain: &nftables.Chain{Name: netfilter.ChainIn, Table: tab},
			Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}})
		if err := c.Flush(); err != nil {
			return err
		}
		if err := netfilter.Verify(a.strictRules()); !errors.Is(err, netfilter.ErrTableAltered) {
			t.Errorf("Verify after the accept rule = %v, want altered", err)
		}
		a.checkStrict()
		if si := a.Strict(); si.State != StrictInstalled || si.Reinstalls != 2 {
			t.Errorf("after the second check: %+v, want installed, 2 re-installs", si)
		}
		if got := metricValue(t, a, "confmesh_agent_strict_reinstalls_total"); got != 2 {
			t.Errorf("confmesh_agent_strict_reinstalls_total = %v, want 2", got)
		}
		if got := metricValue(t, a, "confmesh_agent_strict_rules_installed"); got != 1 {
			t.Errorf("confmesh_agent_strict_rules_installed = %v, want 1", got)
		}
		if err := netfilter.Remove(a.cfg.Table); err != nil {
			return err
		}
		if got := metricValue(t, a, "confmesh_agent_strict_rules_installed"); got != 0 {
			t.Errorf("confmesh_agent_strict_rules_installed with the table gone = %v, want 0", got)
		}
		a.checkStrict()
		if si := a.Strict(); si.Reinstalls != 3 {
			t.Errorf("re-installs = %d, want 3", si.Reinstalls)
		}

		// The fail-closed route and a pod route deleted by hand: restored.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "peer0"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if err := netlink.RouteDel(failClosedRoute(cluster)); err != nil {
			return err
		}
		a.checkStrict()
		if !hasFailClosed(t, cluster) {
			t.Errorf("fail-closed route not restored")
		}
		routes, err := netlink.RouteList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		found := false
		for _, rt := range routes {
			if rt.Dst != nil && rt.Dst.IP.Equal(ip.AsSlice()) {
				found = true
			}
		}
		if !found {
			t.Errorf("pod route %s dev %s not restored: %v", ip, veth, routes)
		}
		if si := a.Strict(); si.RouteRepairs != 2 {
			t.Errorf("route repairs = %d, want 2 (fail-closed and pod)", si.RouteRepairs)
		}

		// The pod leaves: its elements go.
		if _, err := a.ReleaseIP(k); err != nil {
			return err
		}
		if r := a.strictRules(); len(r.Pods) != 0 {
			t.Errorf("pods after ReleaseIP = %v", r.Pods)
		} else if err := netfilter.Verify(r); err != nil {
			t.Errorf("after ReleaseIP: %v", err)
		}

		// A change of the wanted rules the agent has not applied yet (here an
		// IPAM reservation made behind changePods' back) is applied by the
		// next check, and not counted as drift.
		before := a.Strict().Reinstalls
		if _, err := a.ipam.Allocate(a.podCIDR, Attachment{ContainerID: "beef", Interface: "eth0"}); err != nil {
			return err
		}
		a.checkStrict()
		if si := a.Strict(); si.Reinstalls != before || si.State != StrictInstalled || si.Pods != 1 {
			t.Errorf("after a wanted change: %+v, want installed, %d re-installs, 1 pod", si, before)
		}
		if err := netfilter.Verify(a.strictRules()); err != nil {
			t.Errorf("after a wanted change and a check: %v", err)
		}

		if err := RemoveFailClosedRoutes(); err != nil {
			return err
		}
		if hasFailClosed(t, cluster) {
			t.Errorf("RemoveFailClosedRoutes left the route")
		}
		return nil
	})
}

func hasFailClosed(t *testing.T, p netip.Prefix) bool {
	t.Helper()
	rs, err := failClosedRoutes(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if d, ok := routeDst(r); ok && d == p && r.Type == unix.RTN_UNREACHABLE {
			return true
		}
	}
	return false
}

// metricValue reads a single-series counter or gauge from the agent's registry.
func metricValue(t *testing.T, a *Agent, name string) float64 {
	t.Helper()
	fams, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name || len(f.GetMetric()) != 1 {
			continue
		}
		m := f.GetMetric()[0]
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
		return m.GetGauge().GetValue()
	}
	t.Fatalf("metric %s not registered (or not a single series)", name)
	return 0
}
