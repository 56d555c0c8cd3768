package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestValidate(t *testing.T) {
	ok := Rules{ClusterCIDRs: pfx("10.98.0.0/16"), LocalCIDRs: pfx("10.98.1.0/24"), Device: "cm0"}
	with := func(f func(*Rules)) Rules {
		r := ok
		r.ClusterCIDRs = append([]netip.Prefix(nil), ok.ClusterCIDRs...)
		r.LocalCIDRs = append([]netip.Prefix(nil), ok.LocalCIDRs...)
		f(&r)
		return r
	}
	cases := []struct {
		name    string
		rules   Rules
		wantErr string // "" means valid
	}{
		{"v4", ok, ""},
		{"boot: no local CIDR yet", with(func(r *Rules) { r.LocalCIDRs = nil }), ""},
		{"dual stack", Rules{
			Table:        "cm-test",
			ClusterCIDRs: pfx("10.98.0.0/16", "fd98::/48"),
			LocalCIDRs:   pfx("10.98.1.0/24", "fd98:0:0:1::/64"),
			Device:       "cm0",
		}, ""},
		{"local inside the second cluster CIDR", with(func(r *Rules) {
			r.ClusterCIDRs = pfx("10.96.0.0/16", "10.98.0.0/16")
		}), ""},
		{"local equals cluster (single node)", with(func(r *Rules) { r.LocalCIDRs = pfx("10.98.0.0/16") }), ""},
		{"device of 15 bytes", with(func(r *Rules) { r.Device = "abcdefghijklmno" }), ""},

		{"no cluster CIDR", with(func(r *Rules) { r.ClusterCIDRs = nil }), "no cluster CIDR"},
		{"empty device", with(func(r *Rules) { r.Device = "" }), "empty device name"},
		{"device too long", with(func(r *Rules) { r.Device = "abcdefghijklmnop" }), "limit is 15"},
		{"device with slash", with(func(r *Rules) { r.Device = "cm/0" }), "character interface names cannot have"},
		{"device with space", with(func(r *Rules) { r.Device = "cm 0" }), "character interface names cannot have"},
		{"device dot", with(func(r *Rules) { r.Device = "." }), "not a valid interface name"},
		{"local outside cluster", with(func(r *Rules) { r.LocalCIDRs = pfx("10.99.1.0/24") }),
			"local CIDR 10.99.1.0/24 is not inside any cluster CIDR (10.98.0.0/16)"},
		{"local wider than cluster", with(func(r *Rules) { r.LocalCIDRs = pfx("10.0.0.0/8") }),
			"local CIDR 10.0.0.0/8 is not inside any cluster CIDR"},
		{"local of the other family", with(func(r *Rules) { r.LocalCIDRs = pfx("fd98:0:0:1::/64") }),
			"local CIDR fd98:0:0:1::/64 is not inside any cluster CIDR"},
		{"invalid cluster prefix", with(func(r *Rules) { r.ClusterCIDRs = []netip.Prefix{{}} }),
			"cluster CIDR #0 is not a valid prefix"},
		{"invalid local prefix", with(func(r *Rules) { r.LocalCIDRs = []netip.Prefix{{}} }),
			"local CIDR #0 is not a valid prefix"},
		{"bad prefix length", with(func(r *Rules) {
			r.ClusterCIDRs = []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("10.98.0.0"), 33)}
		}), "cluster CIDR #0 is not a valid prefix"},
		{"host bits in cluster", with(func(r *Rules) { r.ClusterCIDRs = pfx("10.98.1.1/16") }),
			"cluster CIDR 10.98.1.1/16 has host bits set; did you mean 10.98.0.0/16?"},
		{"host bits in local", with(func(r *Rules) { r.LocalCIDRs = pfx("10.98.1.7/24") }),
			"local CIDR 10.98.1.7/24 has host bits set"},
		{"whole address family", with(func(r *Rules) { r.ClusterCIDRs = pfx("0.0.0.0/0"); r.LocalCIDRs = nil }),
			"covers the whole address family"},
		{"IPv4-mapped", with(func(r *Rules) { r.ClusterCIDRs = pfx("::ffff:10.98.0.0/112"); r.LocalCIDRs = nil }),
			"IPv4-mapped"},
		{"table with NUL", with(func(r *Rules) { r.Table = "a\x00b" }), "NUL"},
		{"table too long", with(func(r *Rules) { r.Table = strings.Repeat("t", 256) }), "the limit is 255"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.rules.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want error containing %q", tc.wantErr)
			}
			if !errors.Is(err, ErrInvalidRules) {
				t.Errorf("Validate() error %v does not wrap ErrInvalidRules", err)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Validate() = %q, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestDescribeDualStack(t *testing.T) {
	got := Describe(Rules{
		ClusterCIDRs: pfx("10.98.0.0/16", "fd98::/48"),
		LocalCIDRs:   pfx("10.98.1.0/24", "fd98:0:0:1::/64"),
		Pods: []Pod{
			{Interface: "cm2222bbbb", Addr: netip.MustParseAddr("10.98.1.6")},
			{Interface: "cm1111aaaa", Addr: netip.MustParseAddr("fd98:0:0:1::5")},
			{Interface: "cm1111aaaa", Addr: netip.MustParseAddr("10.98.1.5")},
		},
		Device: "cm0",
	})
	want := []string{
		`table inet confmesh`,
		`counter inet confmesh strict_out_drop`,
		`counter inet confmesh strict_in_drop`,
		`counter inet confmesh strict_spoof_drop`,
		`set inet confmesh pod_ifs { type ifname; }`,
		`set inet confmesh pod_addrs4 { type ifname . ipv4_addr; }`,
		`set inet confmesh pod_addrs6 { type ifname . ipv6_addr; }`,
		`element inet confmesh pod_ifs { "cm1111aaaa", "cm2222bbbb" }`,
		`element inet confmesh pod_addrs4 { "cm1111aaaa" . 10.98.1.5, "cm2222bbbb" . 10.98.1.6 }`,
		`element inet confmesh pod_addrs6 { "cm1111aaaa" . fd98:0:0:1::5 }`,
		`chain inet confmesh out { type filter hook postrouting priority 200; policy accept; }`,
		`rule inet confmesh out ip daddr 10.98.0.0/16 oifname != "cm0" meta oiftype != loopback oifname . ip daddr != @pod_addrs4 counter name "strict_out_drop" drop`,
		`rule inet confmesh out ip6 daddr fd98::/48 oifname != "cm0" meta oiftype != loopback oifname . ip6 daddr != @pod_addrs6 counter name "strict_out_drop" drop`,
		`chain inet confmesh in { type filter hook prerouting priority -300; policy accept; }`,
		`rule inet confmesh in ip saddr 10.98.0.0/16 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop`,
		`rule inet confmesh in ip daddr 10.98.0.0/16 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop`,
		`rule inet confmesh in ip6 saddr fd98::/48 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop`,
		`rule inet confmesh in ip6 daddr fd98::/48 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop`,
		`rule inet confmesh in iifname @pod_ifs iifname . ip saddr != @pod_addrs4 counter name "strict_spoof_drop" drop`,
		`rule inet confmesh in iifname @pod_ifs ip6 saddr != fe80::/10 iifname . ip6 saddr != @pod_addrs6 counter name "strict_spoof_drop" drop`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Describe() =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDescribeBootHasNoPods(t *testing.T) {
	// Before join: no pods, no elements; the spoof rule exists for IPv4 only.
	boot := Describe(Rules{Table: "t1", ClusterCIDRs: pfx("10.98.0.0/16"), Device: "cm0"})
	for _, l := range boot {
		if strings.HasPrefix(l, "element ") {
			t.Errorf("boot rules hold elements: %q", l)
		}
		if strings.Contains(l, "ip6") {
			t.Errorf("IPv4-only cluster has an IPv6 rule: %q", l)
		}
	}
	if want := `rule inet t1 out ip daddr 10.98.0.0/16 oifname != "cm0" meta oiftype != loopback oifname . ip daddr != @pod_addrs4 counter name "strict_out_drop" drop`; boot[8] != want {
		t.Errorf("boot out rule = %q, want %q", boot[8], want)
	}
}

func TestValidatePods(t *testing.T) {
	base := Rules{ClusterCIDRs: pfx("10.98.0.0/16"), LocalCIDRs: pfx("10.98.1.0/24"), Device: "cm0"}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name string
		pods []Pod
		want string
	}{
		{"ok", []Pod{{"cm1", a("10.98.1.5")}, {"cm2", a("10.98.1.6")}}, ""},
		{"outside local", []Pod{{"cm1", a("10.98.2.5")}}, "pod #0 (cm1): address 10.98.2.5 is not inside a local CIDR (10.98.1.0/24)"},
		{"no address", []Pod{{"cm1", netip.Addr{}}}, "pod #0 (cm1): no address"},
		{"mapped", []Pod{{"cm1", a("::ffff:10.98.1.5")}}, "IPv4-mapped"},
		{"bad interface", []Pod{{"cm 1", a("10.98.1.5")}}, "pod #0: interface: device name \"cm 1\""},
		{"the device", []Pod{{"cm0", a("10.98.1.5")}}, "is the WireGuard device"},
		{"shared address", []Pod{{"cm1", a("10.98.1.5")}, {"cm2", a("10.98.1.5")}}, "pod address 10.98.1.5 is on two interfaces, cm1 and cm2"},
	} {
		r := base
		r.Pods = tc.pods
		err := r.Validate()
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: Validate() = %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalidRules) || !strings.Contains(fmt.Sprint(err), tc.want) {
			t.Errorf("%s: Validate() = %v, want ErrInvalidRules containing %q", tc.name, err, tc.want)
		}
	}
}
