package workload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// fakeProc is a scripted process table: start times are returned in order
// (the last one repeats), namespaces by pid and by path.
type fakeProc struct {
	mu     sync.Mutex
	starts map[int32][]uint64
	calls  map[int32]int
	netns  map[int32]NetNSID
	paths  map[string]NetNSID
	// onNetNS runs when the namespace of a pid is read (between the two
	// start-time reads of identify).
	onNetNS func(pid int32)
}

func (f *fakeProc) StartTime(pid int32) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	seq, ok := f.starts[pid]
	if !ok || len(seq) == 0 {
		return 0, fmt.Errorf("process %d is gone", pid)
	}
	i := f.calls[pid]
	f.calls[pid]++
	if i >= len(seq) {
		i = len(seq) - 1
	}
	if seq[i] == 0 {
		return 0, fmt.Errorf("process %d is gone", pid)
	}
	return seq[i], nil
}

func (f *fakeProc) NetNS(pid int32) (NetNSID, error) {
	if f.onNetNS != nil {
		f.onNetNS(pid)
	}
	n, ok := f.netns[pid]
	if !ok {
		return NetNSID{}, errors.New("no such process")
	}
	return n, nil
}

func (f *fakeProc) NetNSOfPath(p string) (NetNSID, error) {
	n, ok := f.paths[p]
	if !ok {
		return NetNSID{}, &os.PathError{Op: "stat", Path: p, Err: os.ErrNotExist}
	}
	return n, nil
}

type fakeBackend struct {
	pods []Pod
	err  error
}

func (b *fakeBackend) Pods() ([]Pod, error) { return b.pods, b.err }
func (b *fakeBackend) SignX509(context.Context, Pod, []byte) ([][]byte, error) {
	return nil, errors.New("not in this test")
}
func (b *fakeBackend) SignJWT(context.Context, Pod, []string) (string, error) {
	return "", errors.New("not in this test")
}
func (b *fakeBackend) X509Bundle() *x509bundle.Bundle { return nil }
func (b *fakeBackend) JWTBundle() *jwtbundle.Bundle   { return nil }

var (
	hostNS = NetNSID{Dev: 4, Ino: 4026531840}
	podANS = NetNSID{Dev: 4, Ino: 4026532001}
	podBNS = NetNSID{Dev: 4, Ino: 4026532002}
	podA   = Pod{UID: "uid-a", Namespace: "shop", Name: "web-0", ServiceAccount: "web", Netns: "/var/run/netns/a"}
	podB   = Pod{UID: "uid-b", Namespace: "shop", Name: "db-0", ServiceAccount: "db", Netns: "/var/run/netns/b"}
	podH   = Pod{UID: "uid-h", Namespace: "kube-system", Name: "node-exporter", ServiceAccount: "exporter"}
)

func newFakeServer(t *testing.T, proc *fakeProc, pods []Pod, hostUIDs map[uint32]string) *Server {
	t.Helper()
	if proc.paths == nil {
		proc.paths = map[string]NetNSID{}
	}
	proc.paths["/host"] = hostNS
	proc.paths[podA.Netns] = podANS
	proc.paths[podB.Netns] = podBNS
	proc.calls = map[int32]int{}
	s, err := New(Config{
		Backend: &fakeBackend{pods: pods}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.test"),
		Proc: proc, HostNetNS: "/host", HostUIDs: hostUIDs,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestIdentify(t *testing.T) {
	pods := []Pod{podA, podB, podH, {UID: "uid-nons", Namespace: "x", Name: "y", ServiceAccount: "z"}}
	tests := []struct {
		name     string
		cred     PeerCred
		starts   []uint64
		netns    NetNSID
		hostUIDs map[uint32]string
		pods     []Pod
		want     string // pod UID, or "" for denied
		msg      string
	}{
		{"pod A", PeerCred{PID: 100, StartTime: 7}, []uint64{7}, podANS, nil, pods, "uid-a", ""},
		{"pod B", PeerCred{PID: 100, StartTime: 7}, []uint64{7}, podBNS, nil, pods, "uid-b", ""},
		{"host process", PeerCred{PID: 100, UID: 1000, StartTime: 7}, []uint64{7}, hostNS, nil, pods, "", "host network namespace"},
		{"host process of another uid than mapped", PeerCred{PID: 100, UID: 1000, StartTime: 7}, []uint64{7}, hostNS, map[uint32]string{0: "uid-h"}, pods, "", "host network namespace"},
		{"host process mapped by uid", PeerCred{PID: 100, UID: 0, StartTime: 7}, []uint64{7}, hostNS, map[uint32]string{0: "uid-h"}, pods, "uid-h", ""},
		{"host uid mapped to a pod that is gone", PeerCred{PID: 100, UID: 0, StartTime: 7}, []uint64{7}, hostNS, map[uint32]string{0: "uid-gone"}, pods, "", "not registered on this node"},
		{"unknown namespace", PeerCred{PID: 100, StartTime: 7}, []uint64{7}, NetNSID{Dev: 4, Ino: 99}, nil, pods, "", "which no pod registered on this node uses"},
		{"two pods claim the namespace", PeerCred{PID: 100, StartTime: 7}, []uint64{7}, podANS, nil, []Pod{podA, {UID: "uid-a2", Namespace: "shop", Name: "web-1", ServiceAccount: "web", Netns: podA.Netns}}, "", "refusing to guess"},
		{"pod registered with the host namespace is still the host", PeerCred{PID: 100, StartTime: 7}, []uint64{7}, hostNS, nil, []Pod{{UID: "uid-x", Namespace: "a", Name: "b", ServiceAccount: "c", Netns: "/host"}}, "", "host network namespace"},
		{"pid not visible", PeerCred{PID: 0}, nil, podANS, nil, pods, "", "host PID namespace"},
		{"gone before the handshake read", PeerCred{PID: 100, StartErr: errors.New("process 100 is gone")}, []uint64{7}, podANS, nil, pods, "", "could not be examined"},
		{"gone before the lookup", PeerCred{PID: 100, StartTime: 7}, []uint64{0}, podANS, nil, pods, "", "is gone"},
		// PID reuse: the pid now belongs to a process that started later.
		{"reused since connect", PeerCred{PID: 100, StartTime: 7}, []uint64{9}, podANS, nil, pods, "", "reused by another process since it connected"},
		{"reused during the lookup", PeerCred{PID: 100, StartTime: 7}, []uint64{7, 9}, podANS, nil, pods, "", "reused by another process during identification"},
		{"exited during the lookup", PeerCred{PID: 100, StartTime: 7}, []uint64{7, 0}, podANS, nil, pods, "", "exited during identification"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			proc := &fakeProc{starts: map[int32][]uint64{100: tt.starts}, netns: map[int32]NetNSID{100: tt.netns}}
			s := newFakeServer(t, proc, tt.pods, tt.hostUIDs)
			got, err := s.identify(tt.cred)
			if tt.want != "" {
				if err != nil || got.UID != tt.want {
					t.Fatalf("identify = %v, %v; want pod %s", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("identify = %v, want denial containing %q", got, tt.msg)
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("err = %v, want PermissionDenied containing %q", err, tt.msg)
			}
		})
	}
}

// TestIdentifyPIDReuseSwapsNamespace: the pid is recycled by a process of
// another pod right while its namespace is read; the start time moves and
// the caller is denied instead of getting the other pod's identity.
func TestIdentifyPIDReuseSwapsNamespace(t *testing.T) {
	proc := &fakeProc{starts: map[int32][]uint64{100: {7}}, netns: map[int32]NetNSID{100: podANS}}
	proc.onNetNS = func(pid int32) {
		proc.mu.Lock()
		proc.starts[pid] = []uint64{12}
		proc.calls[pid] = 0
		proc.mu.Unlock()
		proc.netns[pid] = podBNS
	}
	s := newFakeServer(t, proc, []Pod{podA, podB}, nil)
	pod, err := s.identify(PeerCred{PID: 100, StartTime: 7})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "reused") {
		t.Fatalf("identify = %v, %v; want a PID-reuse denial", pod, err)
	}
}

func TestIdentifyBackendError(t *testing.T) {
	proc := &fakeProc{starts: map[int32][]uint64{100: {7}}, netns: map[int32]NetNSID{100: podANS}}
	s := newFakeServer(t, proc, nil, nil)
	s.cfg.Backend = &fakeBackend{err: errors.New("disk on fire")}
	if _, err := s.identify(PeerCred{PID: 100, StartTime: 7}); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseStartTime(t *testing.T) {
	// Field 22 is 9876543; comm holds spaces and parentheses.
	line := "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 9876543 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0\n"
	got, err := parseStartTime(line)
	if err != nil || got != 9876543 {
		t.Fatalf("parseStartTime = %d, %v", got, err)
	}
	for _, bad := range []string{"", "4242 (x S 1", "4242 (x) S 1 2 3", "4242 (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 notanumber 1"} {
		if _, err := parseStartTime(bad); err == nil {
			t.Errorf("parseStartTime(%q) succeeded", bad)
		}
	}
}

// TestHostProc reads the real /proc: the start time of a live process is
// stable, a process that exited is gone, and a process and /proc/<pid>/ns/net
// agree on the namespace.
func TestHostProc(t *testing.T) {
	var p HostProc
	self := int32(os.Getpid())
	a, err := p.StartTime(self)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := p.StartTime(self); a != b || a == 0 {
		t.Fatalf("start time %d then %d", a, b)
	}
	ns, err := p.NetNS(self)
	if err != nil {
		t.Fatal(err)
	}
	if viaPath, err := p.NetNSOfPath("/proc/self/ns/net"); err != nil || viaPath != ns {
		t.Fatalf("NetNSOfPath(/proc/self/ns/net) = %v, %v; NetNS(self) = %v", viaPath, err, ns)
	}
	// A child that lives until killed: this test binary, blocked on stdin
	// in TestHelperBlock.
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperBlock$")
	cmd.Env = append(os.Environ(), "CONFMESH_TEST_BLOCK=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child: %v", err)
	}
	pid := int32(cmd.Process.Pid)
	st, err := p.StartTime(pid)
	if err != nil || st < a {
		t.Fatalf("child start time %d (%v), ours %d", st, err, a)
	}
	cmd.Process.Kill()
	cmd.Wait()
	if _, err := p.StartTime(pid); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("start time of an exited process: err = %v", err)
	}
	// The guard on the real table: a caller whose recorded start time
	// differs from the process now holding the pid is denied.
	s, err := New(Config{Backend: &fakeBackend{}, TrustDomain: spiffeid.RequireTrustDomainFromString("cluster.test")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.identify(PeerCred{PID: self, StartTime: a - 1}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "reused") {
		t.Fatalf("stale start time: err = %v", err)
	}
	if _, err := s.identify(PeerCred{PID: pid, StartTime: st}); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("exited caller: err = %v", err)
	}
}

func TestCheckHeader(t *testing.T) {
	for _, tc := range []struct {
		md   metadata.MD
		okay bool
	}{
		{nil, false},
		{metadata.Pairs("workload.spiffe.io", "false"), false},
		{metadata.Pairs("other", "true"), false},
		{metadata.Pairs("workload.spiffe.io", "true"), true},
		{metadata.Pairs("Workload.Spiffe.IO", "true"), true}, // keys are case-insensitive
	} {
		ctx := context.Background()
		if tc.md != nil {
			ctx = metadata.NewIncomingContext(ctx, tc.md)
		}
		err := checkHeader(ctx)
		if (err == nil) != tc.okay {
			t.Errorf("%v: err = %v", tc.md, err)
		}
		if err != nil && (status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "security header")) {
			t.Errorf("%v: err = %v", tc.md, err)
		}
	}
}

// TestHelperBlock is not a test: with CONFMESH_TEST_BLOCK set it blocks on
// stdin, giving other tests a child process that lives until killed.
func TestHelperBlock(t *testing.T) {
	if os.Getenv("CONFMESH_TEST_BLOCK") == "" {
		return
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
}
