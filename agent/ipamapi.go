package agent

import (
	"context"
	"errors"
	"net/netip"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// AllocateIP reserves (or returns the existing) pod address of an
// attachment from the node's pod CIDR. It needs the pod CIDR, so it fails
// until the node has joined.
func (a *Agent) AllocateIP(k Attachment) (netip.Addr, netip.Prefix, error) {
	a.mu.Lock()
	joined, pod, reason := a.joined, a.podCIDR, a.readyReason
	a.mu.Unlock()
	if !joined || !pod.IsValid() {
		return netip.Addr{}, netip.Prefix{}, status.Error(codes.Unavailable, "node not attested yet, so it has no pod CIDR: "+reason)
	}
	// From now on the pod may send from ip on its veth (strict mode's pod sets).
	var ip netip.Addr
	err := a.changePods(func() (err error) {
		ip, err = a.ipam.Allocate(pod, k)
		return err
	})
	return ip, pod, err
}

// ReleaseIP frees an attachment's pod address (none held is fine), and
// takes it out of strict mode's pod sets.
func (a *Agent) ReleaseIP(k Attachment) (netip.Addr, error) {
	var ip netip.Addr
	err := a.changePods(func() (err error) {
		ip, err = a.ipam.Release(k)
		return err
	})
	return ip, err
}

// Allocations lists the reserved pod addresses.
func (a *Agent) Allocations() []Allocation { return a.ipam.List() }

func (l *localAPI) AllocateIP(_ context.Context, req *agentv1.AllocateIPRequest) (*agentv1.AllocateIPResponse, error) {
	k := Attachment{ContainerID: req.GetContainerId(), Interface: req.GetInterface()}
	if err := k.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ip, pod, err := l.a.AllocateIP(k)
	switch {
	case errors.Is(err, ErrPoolExhausted):
		return nil, status.Error(codes.ResourceExhausted, err.Error())
	case status.Code(err) == codes.Unavailable:
		return nil, err
	case err != nil:
		return nil, status.Errorf(codes.Internal, "allocate IP: %v", err)
	}
	return &agentv1.AllocateIPResponse{Ip: ip.String(), PodCidr: pod.String()}, nil
}

func (l *localAPI) ReleaseIP(_ context.Context, req *agentv1.ReleaseIPRequest) (*agentv1.ReleaseIPResponse, error) {
	k := Attachment{ContainerID: req.GetContainerId(), Interface: req.GetInterface()}
	if err := k.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ip, err := l.a.ReleaseIP(k)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "release IP: %v", err)
	}
	resp := &agentv1.ReleaseIPResponse{}
	if ip.IsValid() {
		resp.Ip = ip.String()
	}
	return resp, nil
}

func (l *localAPI) ListAllocations(context.Context, *agentv1.ListAllocationsRequest) (*agentv1.ListAllocationsResponse, error) {
	return &agentv1.ListAllocationsResponse{Allocations: AllocationsProto(l.a.Allocations())}, nil
}

// AllocationsProto converts allocations for the local API.
func AllocationsProto(as []Allocation) []*agentv1.Allocation {
	out := make([]*agentv1.Allocation, 0, len(as))
	for _, a := range as {
		out = append(out, &agentv1.Allocation{
			ContainerId: a.ContainerID, Interface: a.Interface, Ip: a.IP.String(), Allocated: timestamppb.New(a.Allocated),
		})
	}
	return out
}
