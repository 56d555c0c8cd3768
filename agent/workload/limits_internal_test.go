package workload

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestCallerKey: the per-caller key comes from the kernel's peer
// credentials: the caller's network namespace, or in the host's namespace
// its uid; without a namespace, its uid.
func TestCallerKey(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "k.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := lis.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	self := int32(os.Getpid())
	uid := os.Getuid()
	pod, host := NetNSID{Dev: 4, Ino: 4026532001}, NetNSID{Dev: 4, Ino: 4026531992}
	p := &fakeProc{netns: map[int32]NetNSID{self: pod}}
	if got, want := CallerKey(p, host, sc), pod.String(); got != want {
		t.Errorf("caller in a pod namespace: key %q, want %q", got, want)
	}
	p.netns[self] = host
	if got, want := CallerKey(p, host, sc), "host uid:"+strconv.Itoa(uid); got != want {
		t.Errorf("caller in the host namespace: key %q, want %q", got, want)
	}
	delete(p.netns, self)
	if got, want := CallerKey(p, host, sc), "uid:"+strconv.Itoa(uid); got != want {
		t.Errorf("caller whose namespace is unreadable: key %q, want %q", got, want)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if got := CallerKey(p, host, a); got != "unidentified" {
		t.Errorf("not a unix socket: key %q", got)
	}
}

func TestLimitsDefaultsAndValidation(t *testing.T) {
	l := Limits{}.withDefaults()
	if l.MaxConnsPerCaller != DefaultMaxConnsPerCaller || l.MaxConns != DefaultMaxConns || l.FDShare != DefaultFDShare ||
		l.IdleTimeout != DefaultIdleTimeout || l.HandshakeTimeout != DefaultHandshakeTimeout || l.MaxStreamsPerConn != DefaultMaxStreamsPerConn {
		t.Fatalf("defaults %+v", l)
	}
	off := Limits{MaxConnsPerCaller: -1, MaxConns: -1, FDShare: -1, IdleTimeout: -1, HandshakeTimeout: -1, MaxStreamsPerConn: -1}.withDefaults()
	if off != (Limits{}) {
		t.Fatalf("negative values must switch every limit off: %+v", off)
	}
	if len(off.serverOptions()) != 0 {
		t.Fatal("limits off still set gRPC options")
	}
	if n := len(l.serverOptions()); n != 3 {
		t.Fatalf("default limits give %d gRPC options, want 3 (handshake, idle, streams)", n)
	}
	for _, bad := range []Limits{{FDShare: 1.5}, {MaxConnsPerCaller: 10, MaxConns: 5}} {
		if err := bad.withDefaults().Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if _, err := New(Config{Backend: &fakeBackend{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.test"), Limits: Limits{FDShare: 2}}); err == nil || !strings.Contains(err.Error(), "share") {
		t.Errorf("New with a file-descriptor share of 2: %v", err)
	}
}
