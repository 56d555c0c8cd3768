package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestNextFree(t *testing.T) {
	mp, ma := netip.MustParsePrefix, netip.MustParseAddr
	none := func(netip.Addr) bool { return false }
	takenSet := func(as ...string) func(netip.Addr) bool {
		m := map[netip.Addr]bool{}
		for _, a := range as {
			m[ma(a)] = true
		}
		return func(a netip.Addr) bool { return m[a] }
	}
	for _, c := range []struct {
		name   string
		prefix string
		last   string
		taken  func(netip.Addr) bool
		want   string // "" = none free
	}{
		{"first skips network and gateway", "10.244.1.0/24", "", none, "10.244.1.2"},
		{"after the last one", "10.244.1.0/24", "10.244.1.7", none, "10.244.1.8"},
		{"skips taken", "10.244.1.0/24", "", takenSet("10.244.1.2", "10.244.1.3"), "10.244.1.4"},
		{"skips broadcast and wraps", "10.244.1.0/24", "10.244.1.254", none, "10.244.1.2"},
		{"last outside the prefix", "10.244.1.0/24", "10.9.9.9", none, "10.244.1.2"},
		{"host bits in prefix", "10.244.1.77/24", "", none, "10.244.1.2"},
		{"full /29", "10.0.0.0/29", "", takenSet("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"), ""},
		{"/30 has one", "10.0.0.0/30", "", none, "10.0.0.2"},
		{"/31 and /32 have none", "10.0.0.0/31", "", none, ""},
		{"IPv6 has no broadcast", "fd00::/126", "fd00::2", none, "fd00::3"},
	} {
		got, ok := NextFree(mp(c.prefix), func() netip.Addr {
			if c.last == "" {
				return netip.Addr{}
			}
			return ma(c.last)
		}(), c.taken, 0)
		if c.want == "" {
			if ok {
				t.Errorf("%s: got %s, want none", c.name, got)
			}
			continue
		}
		if !ok || got != ma(c.want) {
			t.Errorf("%s: got %s %v, want %s", c.name, got, ok, c.want)
		}
	}
	// A huge IPv6 prefix costs at most limit probes.
	probes := 0
	_, ok := NextFree(mp("fd00::/64"), netip.Addr{}, func(netip.Addr) bool { probes++; return true }, 1000)
	if ok || probes > 1000 {
		t.Fatalf("bounded scan: ok=%v after %d probes", ok, probes)
	}
}

func att(id string) Attachment { return Attachment{ContainerID: id, Interface: "eth0"} }

func TestIPAMAllocateReleasePersist(t *testing.T) {
	dir := t.TempDir()
	clock := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	m, err := OpenIPAM(dir, func() time.Time { return clock })
	if err != nil {
		t.Fatal(err)
	}
	pod := netip.MustParsePrefix("10.244.1.0/24")
	a, err := m.Allocate(pod, att("a"))
	if err != nil || a.String() != "10.244.1.2" {
		t.Fatalf("first = %v, %v", a, err)
	}
	again, err := m.Allocate(pod, att("a"))
	if err != nil || again != a {
		t.Fatalf("not idempotent: %v then %v (%v)", a, again, err)
	}
	b, _ := m.Allocate(pod, att("b"))
	c, _ := m.Allocate(pod, Attachment{ContainerID: "a", Interface: "net1"}) // second interface of a
	if b == a || c == a || c == b {
		t.Fatalf("duplicates: %v %v %v", a, b, c)
	}
	if got, err := m.Release(att("b")); err != nil || got != b {
		t.Fatalf("Release = %v, %v", got, err)
	}
	if got, err := m.Release(att("b")); err != nil || got.IsValid() {
		t.Fatalf("second Release = %v, %v (want nothing, no error)", got, err)
	}
	// Round robin: the released address is not handed out next.
	d, _ := m.Allocate(pod, att("d"))
	if d == b {
		t.Fatalf("just-released %v reused at once", b)
	}

	// A restart (a new IPAM on the same dir) sees the same reservations.
	m2, err := OpenIPAM(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	list := m2.List()
	if len(list) != 3 {
		t.Fatalf("after reopen: %v", list)
	}
	if list[0].Attachment != att("a") || list[0].IP != a || !list[0].Allocated.Equal(clock) {
		t.Fatalf("reopened reservation %+v", list[0])
	}
	if got, _ := m2.Allocate(pod, att("a")); got != a {
		t.Fatalf("after reopen a got %v, want %v", got, a)
	}
	if e, _ := m2.Allocate(pod, att("e")); e == a || e == c || e == d || !e.IsValid() {
		t.Fatalf("after reopen e got %v", e)
	}
	// The files are one per address, no temporary leftovers.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Fatalf("store files: %v", entries)
	}
}

func TestIPAMRefusesBadKeysAndExhausts(t *testing.T) {
	m, err := OpenIPAM(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := netip.MustParsePrefix("10.0.0.0/29")
	for _, k := range []Attachment{{"", "eth0"}, {"../x", "eth0"}, {"a", ""}, {"a", "eth0/x"}, {"a", "a-very-long-interface"}} {
		if _, err := m.Allocate(pod, k); err == nil {
			t.Errorf("%+v accepted", k)
		}
	}
	for i := 0; i < 5; i++ {
		if _, err := m.Allocate(pod, att(fmt.Sprint("p", i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Allocate(pod, att("p5")); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("sixth in a /29: %v, want ErrPoolExhausted", err)
	}
	if _, err := m.Allocate(netip.Prefix{}, att("x")); err == nil {
		t.Fatal("allocation without a pod CIDR")
	}
}

func TestIPAMPodCIDRChange(t *testing.T) {
	m, _ := OpenIPAM(t.TempDir(), nil)
	old, _ := m.Allocate(netip.MustParsePrefix("10.244.1.0/24"), att("a"))
	now, err := m.Allocate(netip.MustParsePrefix("10.244.2.0/24"), att("a"))
	if err != nil || now.String() != "10.244.2.2" {
		t.Fatalf("after the pod CIDR changed: %v, %v", now, err)
	}
	if l := m.List(); len(l) != 1 || l[0].IP != now {
		t.Fatalf("old reservation %v kept: %v", old, l)
	}
}

func TestIPAMConcurrent(t *testing.T) {
	m, _ := OpenIPAM(t.TempDir(), nil)
	pod := netip.MustParsePrefix("10.244.1.0/24")
	const n = 200
	got := make([]netip.Addr, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a, err := m.Allocate(pod, att(fmt.Sprint("c", i%100))) // each key twice
			if err != nil {
				t.Error(err)
			}
			got[i] = a
		}(i)
	}
	wg.Wait()
	owner := map[netip.Addr]int{}
	for i, a := range got {
		if j, ok := owner[a]; ok && j%100 != i%100 {
			t.Fatalf("%v given to c%d and c%d", a, j%100, i%100)
		}
		owner[a] = i
		if got[i%100] != a {
			t.Fatalf("c%d got %v and %v", i%100, got[i%100], a)
		}
	}
	if len(m.List()) != 100 {
		t.Fatalf("%d reservations, want 100", len(m.List()))
	}
}

func TestIPAMLoadSkipsDebris(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("10.244.1.5", `{"containerID":"a","interface":"eth0","allocated":"2025-01-01T00:00:00Z"}`)
	write("10.244.1.9", `{"containerID":"a","interface":"eth0","allocated":"2025-01-01T00:00:00Z"}`) // duplicate: crash debris
	write("10.244.1.6", `{garbage`)
	write(".tmp-10.244.1.7-123", `{"containerID":"b","interface":"eth0"}`)
	write("not-an-address", `{}`)
	m, err := OpenIPAM(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	l := m.List()
	if len(l) != 1 || l[0].IP.String() != "10.244.1.5" {
		t.Fatalf("loaded %v", l)
	}
	for _, gone := range []string{"10.244.1.9", ".tmp-10.244.1.7-123"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not cleaned up", gone)
		}
	}
	// The unreadable record's address is free again and gets overwritten.
	pod := netip.MustParsePrefix("10.244.1.0/28")
	for i := 0; i < 10; i++ {
		if _, err := m.Allocate(pod, att(fmt.Sprint("n", i))); err != nil {
			t.Fatal(err)
		}
	}
	m2, _ := OpenIPAM(dir, nil)
	if len(m2.List()) != 11 {
		t.Fatalf("after reopen %d reservations, want 11", len(m2.List()))
	}
}
