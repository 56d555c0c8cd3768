// Package cnitest runs what the confmesh CNI plugin needs around it in
// tests and benchmarks: a fake agent answering the real local API over a
// real unix socket (real gRPC, real IPAM store, readiness and node info
// set by the caller), without a control plane or attestation.
package cnitest

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/confmesh/confmesh/agent"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FakeAgent implements agentv1.AgentServer. Readiness is whatever SetReady
// said (not ready until then); IPAM is the agent's own IPAM store. Callers
// are admitted as the real agent admits them (agent.NodeNSGuard): only
// from the node's network namespace, NodeNetNS.
type FakeAgent struct {
	agentv1.UnimplementedAgentServer
	PodCIDR netip.Prefix
	MTU     int
	IPAM    *agent.IPAM
	// NodeNetNS is the path of the network namespace that plays the node's
	// (a netns bind mount); empty: this process's own, as for the agent.
	// Plugins exec'd elsewhere are refused. Set it before Start.
	NodeNetNS string

	mu     sync.Mutex
	ready  bool
	reason string
	pods   map[string]*agentv1.Pod
	srv    *grpc.Server
	guard  *agent.NodeNSGuard
	done   chan struct{}
}

// NewFakeAgent keeps its IPAM state under stateDir.
func NewFakeAgent(stateDir string, podCIDR netip.Prefix, mtu int) (*FakeAgent, error) {
	m, err := agent.OpenIPAM(filepath.Join(stateDir, "ipam"), nil)
	if err != nil {
		return nil, err
	}
	return &FakeAgent{PodCIDR: podCIDR.Masked(), MTU: mtu, IPAM: m, reason: "not attested yet", pods: map[string]*agentv1.Pod{}}, nil
}

// SetReady sets what Ready answers; not ready also makes NodeInfo and
// AllocateIP fail with Unavailable, as they do on an agent that has not
// joined.
func (f *FakeAgent) SetReady(ready bool, reason string) {
	f.mu.Lock()
	f.ready, f.reason = ready, reason
	f.mu.Unlock()
}

// Start listens on socket (0600) and serves until Stop.
func (f *FakeAgent) Start(socket string) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return err
	}
	_ = os.Remove(socket)
	lis, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	if err := os.Chmod(socket, 0o600); err != nil {
		lis.Close()
		return err
	}
	guard, err := agent.NewNodeNSGuard(f.NodeNetNS)
	if err != nil {
		lis.Close()
		return err
	}
	g := grpc.NewServer(guard.ServerOptions()...)
	agentv1.RegisterAgentServer(g, f)
	done := make(chan struct{})
	f.mu.Lock()
	f.srv, f.done, f.guard = g, done, guard
	f.mu.Unlock()
	go func() {
		defer close(done)
		_ = g.Serve(lis)
	}()
	return nil
}

// Stop stops serving (the socket file goes away with the listener); the
// state stays, so Start again is an agent restart.
func (f *FakeAgent) Stop() {
	f.mu.Lock()
	g, done := f.srv, f.done
	f.srv = nil
	f.mu.Unlock()
	if g != nil {
		g.Stop()
		<-done
	}
}

// Pods returns the registered pods by container ID.
func (f *FakeAgent) Pods() map[string]*agentv1.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]*agentv1.Pod, len(f.pods))
	for k, v := range f.pods {
		out[k] = v
	}
	return out
}

// Gateway is the pod CIDR's gateway as the agent computes it.
func (f *FakeAgent) Gateway() netip.Addr { return agent.Gateway(f.PodCIDR) }

func (f *FakeAgent) state() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.reason
}

// CheckCaller implements agentv1.AgentServer: the guard has refused
// callers outside the node's namespace before this runs.
func (f *FakeAgent) CheckCaller(context.Context, *agentv1.CheckCallerRequest) (*agentv1.CheckCallerResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &agentv1.CheckCallerResponse{NodeNetns: f.guard.Node().String()}, nil
}

// Ready implements agentv1.AgentServer.
func (f *FakeAgent) Ready(context.Context, *agentv1.ReadyRequest) (*agentv1.ReadyResponse, error) {
	ok, reason := f.state()
	if ok {
		reason = ""
	}
	return &agentv1.ReadyResponse{Ready: ok, Reason: reason}, nil
}

// NodeInfo implements agentv1.AgentServer.
func (f *FakeAgent) NodeInfo(context.Context, *agentv1.NodeInfoRequest) (*agentv1.NodeInfoResponse, error) {
	if ok, reason := f.state(); !ok {
		return nil, status.Error(codes.Unavailable, "node not attested yet: "+reason)
	}
	return &agentv1.NodeInfoResponse{
		NodeName: "fake", PodCidr: f.PodCIDR.String(), ClusterCidr: f.PodCIDR.String(), Mtu: uint32(f.MTU), Gateway: f.Gateway().String(),
	}, nil
}

// AllocateIP implements agentv1.AgentServer.
func (f *FakeAgent) AllocateIP(_ context.Context, req *agentv1.AllocateIPRequest) (*agentv1.AllocateIPResponse, error) {
	if ok, reason := f.state(); !ok {
		return nil, status.Error(codes.Unavailable, "node not attested yet: "+reason)
	}
	k := agent.Attachment{ContainerID: req.GetContainerId(), Interface: req.GetInterface()}
	if err := k.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ip, err := f.IPAM.Allocate(f.PodCIDR, k)
	if errors.Is(err, agent.ErrPoolExhausted) {
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &agentv1.AllocateIPResponse{Ip: ip.String(), PodCidr: f.PodCIDR.String()}, nil
}

// ReleaseIP implements agentv1.AgentServer.
func (f *FakeAgent) ReleaseIP(_ context.Context, req *agentv1.ReleaseIPRequest) (*agentv1.ReleaseIPResponse, error) {
	k := agent.Attachment{ContainerID: req.GetContainerId(), Interface: req.GetInterface()}
	if err := k.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ip, err := f.IPAM.Release(k)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	resp := &agentv1.ReleaseIPResponse{}
	if ip.IsValid() {
		resp.Ip = ip.String()
	}
	return resp, nil
}

// ListAllocations implements agentv1.AgentServer.
func (f *FakeAgent) ListAllocations(context.Context, *agentv1.ListAllocationsRequest) (*agentv1.ListAllocationsResponse, error) {
	return &agentv1.ListAllocationsResponse{Allocations: agent.AllocationsProto(f.IPAM.List())}, nil
}

// RegisterPod implements agentv1.AgentServer.
func (f *FakeAgent) RegisterPod(_ context.Context, req *agentv1.RegisterPodRequest) (*agentv1.RegisterPodResponse, error) {
	p := req.GetPod()
	if p.GetContainerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "pod container_id is required")
	}
	f.mu.Lock()
	f.pods[p.GetContainerId()] = p
	f.mu.Unlock()
	return &agentv1.RegisterPodResponse{}, nil
}

// UnregisterPod implements agentv1.AgentServer.
func (f *FakeAgent) UnregisterPod(_ context.Context, req *agentv1.UnregisterPodRequest) (*agentv1.UnregisterPodResponse, error) {
	f.mu.Lock()
	delete(f.pods, req.GetContainerId())
	f.mu.Unlock()
	return &agentv1.UnregisterPodResponse{}, nil
}

// Allocations lists the IPAM reservations as "containerID/ifname=ip", sorted.
func (f *FakeAgent) Allocations() []string {
	var out []string
	for _, a := range f.IPAM.List() {
		out = append(out, a.ContainerID+"/"+a.Interface+"="+a.IP.String())
	}
	sort.Strings(out)
	return out
}
