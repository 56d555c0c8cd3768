package agent

import (
	"net/netip"
	"testing"
)

func TestOverheadByUnderlayFamily(t *testing.T) {
	for ep, want := range map[string]int{
		"198.18.0.11:51820":        60,
		"[2001:db8::1]:51820":      80,
		"[::ffff:198.18.0.1]:5182": 80, // may leave as IPv6: worst case
	} {
		if got := Overhead(netip.MustParseAddrPort(ep)); got != want {
			t.Errorf("Overhead(%s) = %d, want %d", ep, got, want)
		}
	}
	if got := Overhead(netip.AddrPort{}); got != WireGuardOverhead {
		t.Errorf("Overhead(invalid) = %d, want the worst case %d", got, WireGuardOverhead)
	}
}
