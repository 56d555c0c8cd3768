//go:build linux

package netlab

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

func TestRanges(t *testing.T) {
	for _, c := range []struct {
		in   []int
		want string
	}{
		{nil, ""},
		{[]int{4}, "4"},
		{[]int{1, 2, 3, 7, 9, 10}, "1-3, 7, 9-10"},
	} {
		if got := Ranges(c.in); got != c.want {
			t.Errorf("Ranges(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestEventually(t *testing.T) {
	n := 0
	if err := Eventually(time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return ErrNotYet
		}
		return nil
	}); err != nil || n != 3 {
		t.Errorf("Eventually: err %v after %d calls, want nil after 3", err, n)
	}
	stop := errors.New("stop")
	n = 0
	err := Eventually(time.Second, time.Millisecond, func() error { n++; return Permanent(stop) })
	if !errors.Is(err, stop) || n != 1 {
		t.Errorf("Permanent: err %v after %d calls, want stop after 1", err, n)
	}
	err = Eventually(20*time.Millisecond, 5*time.Millisecond, func() error { return ErrNotYet })
	if !errors.Is(err, ErrNotYet) || !strings.Contains(err.Error(), "still failing after") {
		t.Errorf("timeout: %v", err)
	}
}

func TestRunNames(t *testing.T) {
	rs := Runs{NamePrefix: "cmtest-", LockDir: t.TempDir(), ClusterIDWidth: 1}
	r, err := rs.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Release()
	if len(r.ID) != 4 || r.Prefix != "cmtest-"+r.ID+"-" {
		t.Fatalf("run ID %q prefix %q", r.ID, r.Prefix)
	}
	if id, ok := rs.runIDOf(r.Prefix + "1-n3"); !ok || id != r.ID {
		t.Errorf("runIDOf(%q) = %q %v", r.Prefix+"1-n3", id, ok)
	}
	for _, bad := range []string{"cmtest-xyz1-1", "cme2e-" + r.ID + "-01", "cmtest-" + r.ID} {
		if _, ok := rs.runIDOf(bad); ok {
			t.Errorf("runIDOf(%q) accepted", bad)
		}
	}
	for i := 1; i <= 35; i++ {
		p, err := r.NextClusterPrefix()
		if err != nil || len(p) != len(r.Prefix)+1 {
			t.Fatalf("cluster %d: prefix %q err %v", i, p, err)
		}
	}
	if p, err := r.NextClusterPrefix(); err == nil {
		t.Errorf("a 36th one-digit cluster ID: %q", p)
	}
	if !rs.alive(r.ID) {
		t.Error("own run not alive while holding its lock")
	}
	// Device names must fit 15 bytes: a 13-byte cluster prefix leaves one digit.
	if got := NewCluster(Config{Prefix: r.Prefix + "1"}).MaxNodes(); got != 9 {
		t.Errorf("MaxNodes for %q = %d, want 9", r.Prefix+"1", got)
	}
	if got := NewCluster(Config{Prefix: "cm-1"}).MaxNodes(); got != 200 {
		t.Errorf("MaxNodes for a short prefix = %d, want the address bound 200", got)
	}
}

func TestPolicyLoads(t *testing.T) {
	dir := t.TempDir()
	root, err := SaveSimCA(filepath.Join(dir, "sim"))
	if err != nil {
		t.Fatal(err)
	}
	tdxRoot, err := SaveSimTDXCA(filepath.Join(dir, "sim-tdx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []Policy{{}, {AllowDebug: true, Measurements: []string{ZeroMeasurement, OtherMeasurement}}, {SimTDXRoot: tdxRoot}} {
		path := filepath.Join(dir, "policy.yaml")
		if err := WritePolicy(path, root, p); err != nil {
			t.Fatal(err)
		}
		pol, err := attest.LoadPolicy(path)
		if err != nil {
			t.Fatalf("%+v: %v\n%s", p, err, p.YAML(root))
		}
		if pol.TrustDomain != "confmesh.local" {
			t.Errorf("trust domain %q", pol.TrustDomain)
		}
		if (p.SimTDXRoot != "") != (pol.TDX != nil) {
			t.Errorf("%+v: tdx section %v", p, pol.TDX)
		}
		if _, err := attest.LoadTrustedRoots(pol); err != nil {
			t.Errorf("%+v: roots: %v", p, err)
		}
	}
}

// udpFrame builds an untagged Ethernet/IPv4/UDP frame.
func udpFrame(src, dst netip.Addr, sport, dport uint16, payload []byte) Frame {
	f := make([]byte, 14+20+8+len(payload))
	binary.BigEndian.PutUint16(f[12:], EtherIPv4)
	ipHdr := f[14:]
	ipHdr[0] = 0x45
	ipHdr[9] = ProtoUDP
	s, d := src.As4(), dst.As4()
	copy(ipHdr[12:], s[:])
	copy(ipHdr[16:], d[:])
	binary.BigEndian.PutUint16(ipHdr[20:], sport)
	binary.BigEndian.PutUint16(ipHdr[22:], dport)
	copy(ipHdr[28:], payload)
	return Frame{Data: f}
}

func TestParseAndSummarize(t *testing.T) {
	a, b := NodeIP(1), NodeIP(2)
	wg := udpFrame(a, b, WireGuardPort, WireGuardPort, []byte("opaque"))
	clear := udpFrame(a, b, 40000, 9999, []byte("secret payload"))
	arp := Frame{Data: append(make([]byte, 12), 0x08, 0x06, 0, 0)}
	if got := Parse(wg).String(); got != "udp 198.18.0.11:51820 > 198.18.0.12:51820" {
		t.Errorf("Parse: %s", got)
	}
	frames := []Frame{wg, wg, clear, arp}
	if n := FramesContaining(frames, []byte("secret")); n != 1 {
		t.Errorf("FramesContaining = %d, want 1", n)
	}
	want := "       2  udp 198.18.0.11:51820 > 198.18.0.12:51820\n       1  arp\n       1  udp 198.18.0.11:40000 > 198.18.0.12:9999\n"
	if got := Summarize(frames); got != want {
		t.Errorf("Summarize:\n%s\nwant:\n%s", got, want)
	}
}
