package kubestore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/controlplane/store/kubestore"
	"github.com/confmesh/confmesh/controlplane/store/storetest"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// claimsOf lists the CIDRs node holds PodCIDRClaims on, sorted.
func (e *env) claimsOf(t *testing.T, node string) []string {
	t.Helper()
	l, err := e.dyn.Resource(kubestore.ClaimsGVR).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, c := range l.Items {
		n, _, _ := unstructured.NestedString(c.Object, "spec", "node")
		cidr, _, _ := unstructured.NestedString(c.Object, "spec", "cidr")
		if n == node {
			out = append(out, cidr)
		}
	}
	slices.Sort(out)
	return out
}

// backdate makes every claim of node look claimed an hour ago, as a claim
// left by a crash long before would.
func (e *env) backdate(t *testing.T, node string) {
	t.Helper()
	ctx := context.Background()
	l, err := e.dyn.Resource(kubestore.ClaimsGVR).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	for i := range l.Items {
		c := &l.Items[i]
		if n, _, _ := unstructured.NestedString(c.Object, "spec", "node"); n != node {
			continue
		}
		ann := c.GetAnnotations()
		if ann == nil {
			ann = map[string]string{}
		}
		ann[kubestore.ClaimedAtAnnotation] = old
		c.SetAnnotations(ann)
		if _, err := e.dyn.Resource(kubestore.ClaimsGVR).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// testClaimRaces: two replicas write the same node name with different
// pod CIDRs. A replica's claim sweep must never delete a claim
// another replica has made and not yet followed with its node write: that
// CIDR would end up held by a node without a claim, free for a third node.
func testClaimRaces(t *testing.T, e *env) {
	const x, y = "10.244.1.0/24", "10.244.2.0/24"
	t.Run("InFlightClaimSurvivesAnotherReplicasWrite", func(t *testing.T) {
		e.reset(t)
		a, b := e.open(t, "replica-a"), e.open(t, "replica-b")
		n := storetest.Node("race-1", x)
		rev, err := a.PutNodeIf(n, 0)
		if err != nil {
			t.Fatal(err)
		}
		// B moves race-1 to y: it has claimed y, its node write is in flight.
		if err := b.ClaimPodCIDR("race-1", y); err != nil {
			t.Fatal(err)
		}
		// Meanwhile A renews race-1 on x, and sweeps.
		if _, err := a.PutNodeIf(storetest.Node("race-1", x), rev); err != nil {
			t.Fatal(err)
		}
		storetest.SweepClaims(t, a)
		if got := e.claimsOf(t, "race-1"); !slices.Equal(got, []string{x, y}) {
			t.Fatalf("after A's write race-1 holds claims %v, want %v: A took the claim B's write is about to rely on", got, []string{x, y})
		}
		// B's write lands: y is race-1's, and nobody else gets it.
		cur, err := a.GetNode("race-1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.PutNodeIf(storetest.Node("race-1", y), cur.Revision); err != nil {
			t.Fatal(err)
		}
		if _, err := a.PutNodeIf(storetest.Node("race-2", y), 0); !errors.Is(err, store.ErrPodCIDRTaken) {
			t.Fatalf("another node on race-1's CIDR %s: err = %v, want ErrPodCIDRTaken", y, err)
		}
	})
	t.Run("InFlightClaimSurvivesAnotherReplicasDelete", func(t *testing.T) {
		e.reset(t)
		a, b := e.open(t, "replica-a"), e.open(t, "replica-b")
		if _, err := a.PutNodeIf(storetest.Node("race-1", x), 0); err != nil {
			t.Fatal(err)
		}
		// B admits a new machine under the name on y while A deletes the
		// name: B's claim is made, its create not yet.
		if err := b.ClaimPodCIDR("race-1", y); err != nil {
			t.Fatal(err)
		}
		if _, err := a.DeleteNode("race-1"); err != nil {
			t.Fatal(err)
		}
		storetest.SweepClaims(t, a)
		if got := e.claimsOf(t, "race-1"); !slices.Contains(got, y) {
			t.Fatalf("after A's delete race-1 holds claims %v: A took B's claim on %s", got, y)
		}
		if _, err := b.PutNodeIf(storetest.Node("race-1", y), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := a.PutNodeIf(storetest.Node("race-2", y), 0); !errors.Is(err, store.ErrPodCIDRTaken) {
			t.Fatalf("another node on race-1's CIDR %s: err = %v, want ErrPodCIDRTaken", y, err)
		}
	})
	t.Run("OldClaimReleasedBySweep", func(t *testing.T) {
		e.reset(t)
		a := e.open(t, "replica-a")
		rev, err := a.PutNodeIf(storetest.Node("race-1", x), 0)
		if err != nil {
			t.Fatal(err)
		}
		if rev, err = a.PutNodeIf(storetest.Node("race-1", y), rev); err != nil {
			t.Fatal(err)
		}
		// x's claim is young: it stays (it could be another replica's
		// in-flight claim) and costs one CIDR for a while.
		if got := e.claimsOf(t, "race-1"); !slices.Equal(got, []string{x, y}) {
			t.Fatalf("right after the move race-1 holds claims %v, want %v", got, []string{x, y})
		}
		if n := storetest.SweepClaims(t, a); n != 0 {
			t.Fatalf("the sweep released %d young claims", n)
		}
		e.backdate(t, "race-1")
		if n := storetest.SweepClaims(t, a); n != 1 {
			t.Fatalf("the sweep released %d claims, want 1 (x)", n)
		}
		if got := e.claimsOf(t, "race-1"); !slices.Equal(got, []string{y}) {
			t.Fatalf("after the claim aged and the sweep ran race-1 holds claims %v, want [%s]", got, y)
		}
		if _, err := a.PutNodeIf(storetest.Node("race-2", x), 0); err != nil {
			t.Fatalf("the released CIDR %s for another node: %v", x, err)
		}
	})
	t.Run("SweepReleasesOnlyOldUnheldClaims", func(t *testing.T) {
		e.reset(t)
		a := e.open(t, "replica-a")
		const w, v = "10.244.3.0/24", "10.244.4.0/24"
		rev, err := a.PutNodeIf(storetest.Node("moved", x), 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.PutNodeIf(storetest.Node("moved", w), rev); err != nil { // x's claim stays, young
			t.Fatal(err)
		}
		if _, err := a.PutNodeIf(storetest.Node("gone", y), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := a.DeleteNode("gone"); err != nil { // y's claim stays, young
			t.Fatal(err)
		}
		if err := a.ClaimPodCIDR("crashed", v); err != nil { // a join that never wrote its node
			t.Fatal(err)
		}
		if n, err := a.ReleaseStaleClaims(map[string]string{"moved": w}); err != nil || n != 0 {
			t.Fatalf("young claims released: %d, %v", n, err)
		}
		for _, name := range []string{"moved", "gone", "crashed"} {
			e.backdate(t, name)
		}
		// An outdated view (it believes moved still holds x, and does not
		// know about w) keeps x for now and must not cost moved its real
		// claim on w, which is checked against the API.
		n, err := a.ReleaseStaleClaims(map[string]string{"moved": x})
		if err != nil || n != 2 {
			t.Fatalf("ReleaseStaleClaims with an outdated view: %d released, %v; want 2 (y, v)", n, err)
		}
		if got := e.claimsOf(t, "moved"); !slices.Equal(got, []string{x, w}) {
			t.Fatalf("moved holds claims %v, want [%s %s]", got, x, w)
		}
		if got := append(e.claimsOf(t, "gone"), e.claimsOf(t, "crashed")...); len(got) != 0 {
			t.Fatalf("claims of a deleted node and of a crashed join left: %v", got)
		}
		if n, err := a.ReleaseStaleClaims(map[string]string{"moved": w}); err != nil || n != 1 {
			t.Fatalf("ReleaseStaleClaims with the current view: %d released, %v; want 1 (x)", n, err)
		}
		if got := e.claimsOf(t, "moved"); !slices.Equal(got, []string{w}) {
			t.Fatalf("moved holds claims %v, want [%s]", got, w)
		}
		for i, cidr := range []string{x, y, v} {
			if _, err := a.PutNodeIf(storetest.Node(fmt.Sprintf("new-%d", i), cidr), 0); err != nil {
				t.Fatalf("released CIDR %s for a new node: %v", cidr, err)
			}
		}
		if _, err := a.PutNodeIf(storetest.Node("other", w), 0); !errors.Is(err, store.ErrPodCIDRTaken) {
			t.Fatalf("moved's CIDR %s for another node: err = %v, want ErrPodCIDRTaken", w, err)
		}
	})
	t.Run("ReusedOldClaimIsRefreshed", func(t *testing.T) {
		e.reset(t)
		a, b := e.open(t, "replica-a"), e.open(t, "replica-b")
		rev, err := a.PutNodeIf(storetest.Node("race-1", x), 0)
		if err != nil {
			t.Fatal(err)
		}
		if rev, err = a.PutNodeIf(storetest.Node("race-1", y), rev); err != nil {
			t.Fatal(err)
		}
		e.backdate(t, "race-1")
		// B moves race-1 back to x, re-using the old claim; its write is
		// in flight while A writes race-1 on y and sweeps.
		if err := b.ClaimPodCIDR("race-1", x); err != nil {
			t.Fatal(err)
		}
		if _, err := a.PutNodeIf(storetest.Node("race-1", y), rev); err != nil {
			t.Fatal(err)
		}
		storetest.SweepClaims(t, a)
		if got := e.claimsOf(t, "race-1"); !slices.Contains(got, x) {
			t.Fatalf("race-1 holds claims %v: the claim B re-used on %s was taken as stale", got, x)
		}
	})
}
