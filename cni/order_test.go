package cni

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// orderAgent answers CheckCaller with checkErr, Ready with ready, NodeInfo
// with a usable node, and records every call; anything else fails the
// test (the embedded nil interface panics).
type orderAgent struct {
	AgentClient
	checkErr error
	ready    bool
	mu       sync.Mutex
	calls    []string
}

func (a *orderAgent) record(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls = append(a.calls, name)
}

func (a *orderAgent) CheckCaller(context.Context, *agentv1.CheckCallerRequest, ...grpc.CallOption) (*agentv1.CheckCallerResponse, error) {
	a.record("CheckCaller")
	return &agentv1.CheckCallerResponse{}, a.checkErr
}

func (a *orderAgent) Ready(context.Context, *agentv1.ReadyRequest, ...grpc.CallOption) (*agentv1.ReadyResponse, error) {
	a.record("Ready")
	return &agentv1.ReadyResponse{Ready: a.ready, Reason: "not attested yet"}, nil
}

func (a *orderAgent) NodeInfo(context.Context, *agentv1.NodeInfoRequest, ...grpc.CallOption) (*agentv1.NodeInfoResponse, error) {
	a.record("NodeInfo")
	return &agentv1.NodeInfoResponse{PodCidr: "10.250.0.0/24", Gateway: "10.250.0.1", Mtu: 1420}, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// TestAddJudgesCallerFirst: ADD sends CheckCaller together with the
// read-only Ready and NodeInfo, but judges CheckCaller's answer first: a
// caller the agent places in the wrong network namespace gets that refusal
// (code 101), not the node's readiness, and nothing that reserves or
// changes anything is called. A caller in the right namespace on a node
// that is not ready gets "try again later".
func TestAddJudgesCallerFirst(t *testing.T) {
	conf := []byte(`{"cniVersion": "1.1.0", "name": "confmesh", "type": "confmesh-cni", "agentSocket": "/nonexistent/agent.sock"}`)
	for _, tc := range []struct {
		name     string
		checkErr error
		wantCode uint
	}{
		{"wrong namespace", status.Error(codes.PermissionDenied, "caller runs in net:[1], not the node's net:[2]"), ErrWrongNetNS},
		{"agent without the check", status.Error(codes.Unimplemented, "unknown method CheckCaller"), ErrWrongNetNS},
		{"right namespace, node not ready", nil, types.ErrTryAgainLater},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &orderAgent{checkErr: tc.checkErr}
			p := &Plugin{Dial: func(string) (AgentClient, io.Closer, error) { return a, nopCloser{}, nil }}
			err := p.Add(&skel.CmdArgs{ContainerID: "c1", Netns: "/nonexistent/netns", IfName: "eth0", StdinData: conf})
			var ce *types.Error
			if !errors.As(err, &ce) || ce.Code != tc.wantCode {
				t.Fatalf("ADD: %v, want CNI error %d", err, tc.wantCode)
			}
			a.mu.Lock()
			defer a.mu.Unlock()
			if len(a.calls) != 3 {
				t.Fatalf("agent calls %v, want CheckCaller, Ready and NodeInfo only", a.calls)
			}
		})
	}
}
