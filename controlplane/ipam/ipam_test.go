package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func TestAllocateLowestFree(t *testing.T) {
	a, err := New("10.244.0.0/16", 24)
	if err != nil {
		t.Fatal(err)
	}
	mp := netip.MustParsePrefix
	for _, c := range []struct {
		used []netip.Prefix
		want string
	}{
		{nil, "10.244.0.0/24"},
		{[]netip.Prefix{mp("10.244.0.0/24")}, "10.244.1.0/24"},
		{[]netip.Prefix{mp("10.244.0.0/24"), mp("10.244.2.0/24")}, "10.244.1.0/24"},
		{[]netip.Prefix{mp("10.244.1.0/24"), mp("192.168.0.0/24")}, "10.244.0.0/24"},
	} {
		got, err := a.Allocate(c.used)
		if err != nil || got.String() != c.want {
			t.Errorf("Allocate(%v) = %v, %v; want %s", c.used, got, err, c.want)
		}
	}
}

func TestAllocateIPv6AndExhaustion(t *testing.T) {
	a, err := New("fd00:10::/120", 122)
	if err != nil {
		t.Fatal(err)
	}
	var used []netip.Prefix
	for i := 0; i < 4; i++ {
		p, err := a.Allocate(used)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Contains(p) {
			t.Fatalf("allocated %v outside the cluster", p)
		}
		used = append(used, p)
	}
	if used[3].String() != "fd00:10::c0/122" {
		t.Errorf("fourth prefix %v", used[3])
	}
	if _, err := a.Allocate(used); !errors.Is(err, ErrExhausted) {
		t.Fatalf("err = %v, want ErrExhausted", err)
	}
}

func TestNewErrors(t *testing.T) {
	for _, c := range []struct {
		cidr string
		bits int
	}{{"10.244.0.0/16", 16}, {"10.244.0.0/16", 8}, {"10.244.1.0/16", 24}, {"nope", 24}, {"10.0.0.0/8", 31}, {"10.0.0.0/8", 33}} {
		if _, err := New(c.cidr, c.bits); err == nil {
			t.Errorf("New(%q, %d) accepted", c.cidr, c.bits)
		}
	}
}
