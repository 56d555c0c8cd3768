package agent

import (
	"net/netip"
	"os"
	"testing"

	"github.com/confmesh/confmesh/internal/netfilter"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// TestEnsurePodRoutesSkipsDownVeth: the strict-mode check runs while the
// CNI plugin creates and removes pods, so it sees host-side veths that are
// not up yet (ADD) or no longer (DEL). Such a veth cannot carry a route and
// the plugin adds it once the link is up: the check must leave it alone
// instead of failing ("network is down", logged as an agent error on every
// pass of a busy node, as the soak saw), and still restore the route of a
// pod whose veth is up.
func TestEnsurePodRoutesSkipsDownVeth(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and veth pairs")
	}
	node, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { node.Close(); testutils.UnmountNS(node) }()

	err = node.Do(func(ns.NetNS) error {
		for _, name := range []string{"cmprdown", "cmprup"} {
			veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
			if err := netlink.LinkAdd(veth); err != nil {
				t.Fatalf("add veth %s: %v", name, err)
			}
		}
		for _, name := range []string{"cmprup", "cmprupp"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if err := netlink.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		pods := []netfilter.Pod{
			{Interface: "cmprdown", Addr: netip.MustParseAddr("10.244.9.2")},
			{Interface: "cmprup", Addr: netip.MustParseAddr("10.244.9.3")},
		}
		n, err := ensurePodRoutes(pods)
		if err != nil {
			t.Errorf("ensurePodRoutes with a pod veth that is down: %v; want the down veth skipped", err)
		}
		if n != 1 {
			t.Errorf("restored %d routes, want 1 (the pod whose veth is up)", n)
		}
		up, _ := netlink.LinkByName("cmprup")
		rs, err := netlink.RouteList(up, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range rs {
			if r.Dst != nil && r.Dst.String() == "10.244.9.3/32" {
				found = true
			}
		}
		if !found {
			t.Errorf("no route to 10.244.9.3/32 on cmprup after the check: %v", rs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
