package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// AgentClient is what the plugin asks of the node agent. The gRPC client
// of the agent's local API (agentv1.AgentClient) satisfies it.
type AgentClient interface {
	Ready(ctx context.Context, in *agentv1.ReadyRequest, opts ...grpc.CallOption) (*agentv1.ReadyResponse, error)
	NodeInfo(ctx context.Context, in *agentv1.NodeInfoRequest, opts ...grpc.CallOption) (*agentv1.NodeInfoResponse, error)
	AllocateIP(ctx context.Context, in *agentv1.AllocateIPRequest, opts ...grpc.CallOption) (*agentv1.AllocateIPResponse, error)
	ReleaseIP(ctx context.Context, in *agentv1.ReleaseIPRequest, opts ...grpc.CallOption) (*agentv1.ReleaseIPResponse, error)
	ListAllocations(ctx context.Context, in *agentv1.ListAllocationsRequest, opts ...grpc.CallOption) (*agentv1.ListAllocationsResponse, error)
	RegisterPod(ctx context.Context, in *agentv1.RegisterPodRequest, opts ...grpc.CallOption) (*agentv1.RegisterPodResponse, error)
	UnregisterPod(ctx context.Context, in *agentv1.UnregisterPodRequest, opts ...grpc.CallOption) (*agentv1.UnregisterPodResponse, error)
	CheckCaller(ctx context.Context, in *agentv1.CheckCallerRequest, opts ...grpc.CallOption) (*agentv1.CheckCallerResponse, error)
}

// Dialer connects to the agent listening on socket.
type Dialer func(socket string) (AgentClient, io.Closer, error)

// DialSocket is the Dialer the plugin uses: gRPC over the agent's unix
// socket. The connection is made lazily by the first call, which fails at
// once (codes.Unavailable) when nothing listens.
func DialSocket(socket string) (AgentClient, io.Closer, error) {
	if _, err := os.Stat(socket); err != nil {
		return nil, nil, fmt.Errorf("%w: socket %s: %v (is the confmesh agent running?)", errAgentDown, socket, err)
	}
	cc, err := grpc.NewClient("unix://"+socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDisableServiceConfig())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", errAgentDown, socket, err)
	}
	return agentv1.NewAgentClient(cc), cc, nil
}

// errAgentDown marks failures to reach the agent at all (as opposed to an
// answer from it).
var errAgentDown = errors.New("confmesh agent unreachable")

// unreachable says whether err means the agent could not be asked: no
// socket, nobody listening, or no answer in time.
func unreachable(err error) bool {
	if errors.Is(err, errAgentDown) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		// Unavailable is also what the agent answers before it has joined
		// (NodeInfo, AllocateIP): in both cases, later may work.
		return true
	}
	return false
}

// agentMessage is the agent's own words from a gRPC error.
func agentMessage(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}
