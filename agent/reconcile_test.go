package agent

import (
	"net"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func key(b byte) wgtypes.Key {
	var k wgtypes.Key
	k[0] = b
	return k
}

func ipnet(s string) net.IPNet {
	p := netip.MustParsePrefix(s)
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func TestReconcile(t *testing.T) {
	ep := netip.MustParseAddrPort("198.18.0.2:51820")
	ep2 := netip.MustParseAddrPort("198.18.0.3:51820")
	a := DesiredPeer{Name: "a", PublicKey: key(1), Endpoint: ep, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	cur := func(k wgtypes.Key, e netip.AddrPort, cidrs ...string) wgtypes.Peer {
		p := wgtypes.Peer{PublicKey: k, Endpoint: net.UDPAddrFromAddrPort(e)}
		for _, c := range cidrs {
			p.AllowedIPs = append(p.AllowedIPs, ipnet(c))
		}
		return p
	}
	type change struct {
		key    byte
		remove bool
		update bool
	}
	for _, tc := range []struct {
		name    string
		desired []DesiredPeer
		current []wgtypes.Peer
		want    []change
		routes  int
	}{
		{"empty", nil, nil, nil, 0},
		{"add", []DesiredPeer{a}, nil, []change{{1, false, false}}, 1},
		{"in sync: nothing to do", []DesiredPeer{a}, []wgtypes.Peer{cur(key(1), ep, "10.244.1.0/24")}, nil, 1},
		{"remove unvouched", nil, []wgtypes.Peer{cur(key(9), ep, "10.244.9.0/24")}, []change{{9, true, false}}, 0},
		{"endpoint moved", []DesiredPeer{a}, []wgtypes.Peer{cur(key(1), ep2, "10.244.1.0/24")}, []change{{1, false, true}}, 1},
		{"allowed IPs changed", []DesiredPeer{a}, []wgtypes.Peer{cur(key(1), ep, "10.244.7.0/24")}, []change{{1, false, true}}, 1},
		{"key rotated: remove old first, add new", []DesiredPeer{{Name: "a", PublicKey: key(2), Endpoint: ep, AllowedIPs: a.AllowedIPs}},
			[]wgtypes.Peer{cur(key(1), ep, "10.244.1.0/24")}, []change{{1, true, false}, {2, false, false}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plan := Reconcile(tc.desired, tc.current)
			if len(plan.Changes) != len(tc.want) {
				t.Fatalf("changes %+v, want %+v", plan.Changes, tc.want)
			}
			for i, w := range tc.want {
				c := plan.Changes[i]
				if c.PublicKey != key(w.key) || c.Remove != w.remove || c.UpdateOnly != w.update {
					t.Errorf("change %d = key %x remove %v update %v; want %+v", i, c.PublicKey[0], c.Remove, c.UpdateOnly, w)
				}
				if !c.Remove && (!c.ReplaceAllowedIPs || c.Endpoint == nil || c.PersistentKeepaliveInterval == nil) {
					t.Errorf("change %d lacks allowed IPs/endpoint/keepalive: %+v", i, c)
				}
			}
			if len(plan.Routes) != tc.routes {
				t.Errorf("routes %v, want %d", plan.Routes, tc.routes)
			}
		})
	}
}
