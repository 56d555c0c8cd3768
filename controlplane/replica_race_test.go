package controlplane_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/controlplane/store/memstore"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestReplicasNameRace: two machines (other chips, other keys) join under
// one name at the same moment, each through another control-plane replica
// of one shared store. Both replicas find the name free in their caches;
// without a conditional write both would admit their machine and hand out
// two valid SVIDs for one node name. Exactly one may win; the other is
// refused (the name is taken, or its write lost the race).
func TestReplicasNameRace(t *testing.T) {
	b := memstore.New()
	opts := func() cptest.Options { return cptest.Options{Store: b.Open(), SourceRate: 1000, SourceBurst: 1000} }
	r1, r2 := cptest.Start(t, opts()), cptest.Start(t, opts())
	for i := range 8 {
		name := fmt.Sprintf("race-%d", i)
		x := cptest.NewAgent(t, name, cptest.SimNode(t, sim.NodeConfig{}), nil)
		y := cptest.NewAgent(t, name, cptest.SimNode(t, sim.NodeConfig{}), nil)
		var errs [2]error
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _, errs[0] = x.TryJoin(t, r1) }()
		go func() { defer wg.Done(); _, errs[1] = y.TryJoin(t, r2) }()
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch c := status.Code(err); {
			case err == nil:
				wins++
			case c != codes.AlreadyExists && c != codes.Aborted:
				t.Fatalf("%s: loser refused with %v, want AlreadyExists or Aborted", name, err)
			}
		}
		if wins != 1 {
			t.Fatalf("%s: %d machines admitted under one name through two replicas (%v)", name, wins, errs)
		}
	}
}

// TestReplicasPodCIDRRace: machines join under distinct names at the same
// moment through two replicas; each replica allocates the first CIDR free
// in its cache, so without the store's CIDR uniqueness two nodes would get
// one pod CIDR. Every join succeeds and every CIDR differs.
func TestReplicasPodCIDRRace(t *testing.T) {
	b := memstore.New()
	opts := func() cptest.Options { return cptest.Options{Store: b.Open(), SourceRate: 1000, SourceBurst: 1000} }
	replicas := []*cptest.ControlPlane{cptest.Start(t, opts()), cptest.Start(t, opts())}
	const n = 12
	cidrs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		a := cptest.NewAgent(t, fmt.Sprintf("cidr-%d", i), cptest.SimNode(t, sim.NodeConfig{}), nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := a.TryJoin(t, replicas[i%2])
			if errs[i] = err; err == nil {
				cidrs[i] = resp.PodCidr
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("cidr-%d: join: %v", i, errs[i])
		}
		if j, dup := seen[cidrs[i]]; dup {
			t.Fatalf("cidr-%d and cidr-%d both got pod CIDR %s", j, i, cidrs[i])
		}
		seen[cidrs[i]] = i
	}
}
