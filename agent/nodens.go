package agent

import (
	"context"
	"fmt"

	"github.com/confmesh/confmesh/agent/workload"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// NodeNSGuard admits local-API callers only from the node's network
// namespace. The socket is a file: a process in any network namespace that
// shares the node's file system can reach it, and a CNI plugin run there
// (by a misconfigured runtime, or by hand from the host) would network a
// "pod" and turn on forwarding in the wrong place. The caller is told by
// the kernel (SO_PEERCRED pid -> /proc/<pid>/ns/net, PID-reuse guarded),
// never by anything it says; when that cannot be read the call is refused.
type NodeNSGuard struct {
	proc workload.Proc
	node workload.NetNSID
	// open are the methods any caller may use: readiness and status, which
	// change nothing and which operators and probes ask from anywhere.
	open map[string]bool
}

// DefaultNodeNetNS is the node's network namespace as the agent sees it:
// its own.
const DefaultNodeNetNS = "/proc/self/ns/net"

// NewNodeNSGuard guards with the network namespace at nodeNetNS (a netns
// bind mount or a /proc/<pid>/ns/net link; DefaultNodeNetNS when empty),
// resolved now.
func NewNodeNSGuard(nodeNetNS string) (*NodeNSGuard, error) {
	if nodeNetNS == "" {
		nodeNetNS = DefaultNodeNetNS
	}
	proc := workload.HostProc{}
	id, err := proc.NetNSOfPath(nodeNetNS)
	if err != nil {
		return nil, fmt.Errorf("node network namespace: %w", err)
	}
	return &NodeNSGuard{proc: proc, node: id, open: map[string]bool{
		agentv1.Agent_Ready_FullMethodName:  true,
		agentv1.Agent_Status_FullMethodName: true,
	}}, nil
}

// Node is the node's network namespace.
func (g *NodeNSGuard) Node() workload.NetNSID { return g.node }

// ServerOptions make a gRPC server enforce the guard: peer credentials on
// every connection, and every unary method but Ready and Status refused to
// callers outside the node's namespace. Streaming methods are refused to
// all such callers too.
func (g *NodeNSGuard) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(workload.PeerCredentials(g.proc)),
		grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if !g.open[info.FullMethod] {
				if err := g.Check(ctx); err != nil {
					return nil, err
				}
			}
			return h(ctx, req)
		}),
		grpc.StreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := g.Check(ss.Context()); err != nil {
				return err
			}
			return h(srv, ss)
		}),
	}
}

// Check returns nil when the caller behind ctx runs in the node's network
// namespace, else PermissionDenied saying where it runs (or why that could
// not be told).
func (g *NodeNSGuard) Check(ctx context.Context) error {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return status.Error(codes.PermissionDenied, "cannot tell the caller's network namespace: no peer information")
	}
	cred, ok := p.AuthInfo.(workload.PeerCred)
	if !ok {
		return status.Error(codes.PermissionDenied, "cannot tell the caller's network namespace: no unix socket peer credentials")
	}
	ns, err := workload.CallerNetNS(g.proc, cred)
	if err != nil {
		return status.Errorf(codes.PermissionDenied, "cannot tell the caller's network namespace: %v", err)
	}
	if ns != g.node {
		return status.Errorf(codes.PermissionDenied, "caller pid %d runs in network namespace %s, not the node's %s: run the CNI plugin in the node's network namespace", cred.PID, ns, g.node)
	}
	return nil
}
