package agent

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/agent/workload"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TestNodeNSGuardFailsClosed: a caller the guard cannot place is refused,
// and so is one whose pid no longer matches the process that connected;
// the test process itself (in the node's namespace here) is admitted.
func TestNodeNSGuardFailsClosed(t *testing.T) {
	g, err := NewNodeNSGuard("")
	if err != nil {
		t.Fatal(err)
	}
	self := workload.PeerCred{PID: int32(os.Getpid())}
	self.StartTime, self.StartErr = workload.HostProc{}.StartTime(self.PID)
	withCred := func(c any) context.Context {
		p := &peer.Peer{Addr: &net.UnixAddr{Name: "@", Net: "unix"}}
		if ai, ok := c.(workload.PeerCred); ok {
			p.AuthInfo = ai
		}
		return peer.NewContext(context.Background(), p)
	}
	if err := g.Check(withCred(self)); err != nil {
		t.Fatalf("the agent's own process: %v", err)
	}
	reused := self
	reused.StartTime++
	for name, c := range map[string]struct {
		ctx  context.Context
		word string
	}{
		"no peer":            {context.Background(), "no peer information"},
		"no peer credential": {withCred(nil), "no unix socket peer credentials"},
		"pid not visible":    {withCred(workload.PeerCred{PID: 0}), "not visible"},
		"pid reused":         {withCred(reused), "reused"},
	} {
		err := g.Check(c.ctx)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), c.word) {
			t.Errorf("%s: %v, want PermissionDenied mentioning %q", name, err, c.word)
		}
	}
}
