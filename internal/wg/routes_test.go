package wg

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/confmesh/confmesh/internal/testutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestSyncRoutes(t *testing.T) {
	requireRoot(t)
	n := testutil.NewNetNS(t)
	cfg := userspaceConfig(t, "cmwgrt0")
	cfg.Addresses = []netip.Prefix{netip.MustParsePrefix("10.99.1.1/32")}
	d := ensureIn(t, n, cfg)

	// A route through another link, which SyncRoutes must never touch.
	other := netip.MustParsePrefix("10.50.0.0/24")
	testutil.InNetNS(t, n, func() error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other1"}); err != nil {
			return err
		}
		l, err := netlink.LinkByName("other0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(other), Scope: netlink.SCOPE_LINK})
	})

	// routes returns the main-table routes as prefix -> (dev, mtu).
	type rt struct {
		dev   string
		mtu   int
		scope netlink.Scope
	}
	routes := func() map[netip.Prefix]rt {
		t.Helper()
		out := map[netip.Prefix]rt{}
		testutil.InNetNS(t, n, func() error {
			all, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			for _, r := range all {
				l, err := netlink.LinkByIndex(r.LinkIndex)
				if err != nil {
					return err
				}
				out[routePrefix(r)] = rt{l.Attrs().Name, r.MTU, r.Scope}
			}
			return nil
		})
		return out
	}
	p := netip.MustParsePrefix
	check := func(step string, want []netip.Prefix, mtu int) {
		t.Helper()
		got, err := d.Routes()
		if err != nil {
			t.Fatalf("%s: Routes: %v", step, err)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: Routes() = %v, want %v", step, got, want)
		}
		all := routes()
		for _, w := range want {
			if r := all[w]; r.dev != "cmwgrt0" || r.mtu != mtu || r.scope != netlink.SCOPE_LINK {
				t.Errorf("%s: route %s = %+v, want dev cmwgrt0 mtu %d scope link", step, w, r, mtu)
			}
		}
		if r := all[other]; r.dev != "other0" {
			t.Errorf("%s: the other0 route is gone or changed: %+v", step, r)
		}
	}

	if err := d.SyncRoutes([]netip.Prefix{p("10.99.3.0/24"), p("10.99.2.0/24")}, 1420); err != nil {
		t.Fatal(err)
	}
	check("add", []netip.Prefix{p("10.99.2.0/24"), p("10.99.3.0/24")}, 1420)
	if err := d.SyncRoutes([]netip.Prefix{p("10.99.3.0/24"), p("10.99.2.0/24")}, 1420); err != nil {
		t.Fatal(err)
	}
	check("idempotent", []netip.Prefix{p("10.99.2.0/24"), p("10.99.3.0/24")}, 1420)

	// Someone else's route through the device, and one at another metric.
	testutil.InNetNS(t, n, func() error {
		l, err := netlink.LinkByName("cmwgrt0")
		if err != nil {
			return err
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p("10.99.9.0/24")), Scope: netlink.SCOPE_LINK}); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(p("10.99.2.0/24")), Scope: netlink.SCOPE_LINK, Priority: 100})
	})
	if got, _ := d.Routes(); len(got) != 3 {
		t.Fatalf("setup: Routes() = %v", got)
	}

	// Host bits in a prefix are ignored (the route is the masked prefix).
	if err := d.SyncRoutes([]netip.Prefix{p("10.99.2.7/24")}, 1380); err != nil {
		t.Fatal(err)
	}
	check("replace MTU, delete extras", []netip.Prefix{p("10.99.2.0/24")}, 1380)
	var n2 int
	testutil.InNetNS(t, n, func() error {
		all, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: ipNet(p("10.99.2.0/24"))}, netlink.RT_FILTER_DST)
		n2 = len(all)
		return err
	})
	if n2 != 1 {
		t.Errorf("%d routes for 10.99.2.0/24, want 1", n2)
	}

	if err := d.SyncRoutes(nil, 0); err != nil {
		t.Fatal(err)
	}
	check("delete all", []netip.Prefix{}, 0)
	if _, ok := routes()[p("10.99.1.1/32")]; ok {
		t.Error("a route for the device address appeared in the main table")
	}

	if err := d.SyncRoutes([]netip.Prefix{{}}, 1420); err == nil {
		t.Error("SyncRoutes accepted an invalid prefix")
	}
}
