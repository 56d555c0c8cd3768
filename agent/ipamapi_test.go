package agent

import (
	"context"
	"net/netip"
	"testing"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestLocalAPIIPAM drives AllocateIP, ReleaseIP and ListAllocations of a
// real Agent through ServeLocal.
func TestLocalAPIIPAM(t *testing.T) {
	a := newTestAgent(t)
	c := localClient(t, a)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := &agentv1.AllocateIPRequest{ContainerId: "c0ffee", Interface: "eth0"}
	if _, err := c.AllocateIP(ctx, req); status.Code(err) != codes.Unavailable {
		t.Fatalf("AllocateIP before join: %v, want Unavailable", err)
	}
	for _, bad := range []*agentv1.AllocateIPRequest{{Interface: "eth0"}, {ContainerId: "../x", Interface: "eth0"}, {ContainerId: "c", Interface: ""}} {
		if _, err := c.AllocateIP(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("AllocateIP(%v): %v, want InvalidArgument", bad, err)
		}
	}

	// Joined: the pod CIDR is known (set directly; the join itself is
	// tested with a control plane elsewhere).
	a.mu.Lock()
	a.joined, a.podCIDR = true, netip.MustParsePrefix("10.244.5.0/24")
	a.mu.Unlock()
	r1, err := c.AllocateIP(ctx, req)
	if err != nil || r1.Ip != "10.244.5.2" || r1.PodCidr != "10.244.5.0/24" {
		t.Fatalf("AllocateIP = %v, %v (the gateway 10.244.5.1 is never handed out)", r1, err)
	}
	r2, err := c.AllocateIP(ctx, req)
	if err != nil || r2.Ip != r1.Ip {
		t.Fatalf("AllocateIP again = %v, %v: want the same address", r2, err)
	}
	r3, err := c.AllocateIP(ctx, &agentv1.AllocateIPRequest{ContainerId: "beef", Interface: "eth0"})
	if err != nil || r3.Ip == r1.Ip {
		t.Fatalf("second attachment = %v, %v", r3, err)
	}
	l, err := c.ListAllocations(ctx, &agentv1.ListAllocationsRequest{})
	if err != nil || len(l.Allocations) != 2 || l.Allocations[0].ContainerId != "c0ffee" || l.Allocations[0].Interface != "eth0" ||
		l.Allocations[0].Ip != r1.Ip || l.Allocations[0].Allocated == nil {
		t.Fatalf("ListAllocations = %v, %v", l, err)
	}

	// Persistent across an agent restart (a new IPAM on the same state dir).
	again, err := OpenIPAM(a.cfg.StateDir+"/ipam", nil)
	if err != nil || len(again.List()) != 2 {
		t.Fatalf("after restart: %v, %v", again.List(), err)
	}

	rel, err := c.ReleaseIP(ctx, &agentv1.ReleaseIPRequest{ContainerId: "c0ffee", Interface: "eth0"})
	if err != nil || rel.Ip != r1.Ip {
		t.Fatalf("ReleaseIP = %v, %v", rel, err)
	}
	rel, err = c.ReleaseIP(ctx, &agentv1.ReleaseIPRequest{ContainerId: "c0ffee", Interface: "eth0"})
	if err != nil || rel.Ip != "" {
		t.Fatalf("ReleaseIP again = %v, %v: want success, nothing released", rel, err)
	}
	if _, err := c.ReleaseIP(ctx, &agentv1.ReleaseIPRequest{ContainerId: "", Interface: "eth0"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ReleaseIP without container: %v", err)
	}
	l, _ = c.ListAllocations(ctx, &agentv1.ListAllocationsRequest{})
	if len(l.Allocations) != 1 || l.Allocations[0].ContainerId != "beef" {
		t.Fatalf("after release: %v", l)
	}

	// Exhaustion is ResourceExhausted.
	a.mu.Lock()
	a.podCIDR = netip.MustParsePrefix("10.244.6.0/30") // one pod address
	a.mu.Unlock()
	if _, err := c.AllocateIP(ctx, &agentv1.AllocateIPRequest{ContainerId: "x1", Interface: "eth0"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AllocateIP(ctx, &agentv1.AllocateIPRequest{ContainerId: "x2", Interface: "eth0"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("exhausted: %v, want ResourceExhausted", err)
	}
}
