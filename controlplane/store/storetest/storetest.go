// Package storetest is the contract test suite of store.Store and
// store.Shared: every backend (bolt, the Kubernetes API store, the
// in-memory shared store) runs the same tests, so the server can rely on
// the interface alone.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

// Options says what a backend guarantees beyond the common contract.
type Options struct {
	// ExactRevision: the revision counts node changes only, one per
	// change, and nothing else moves it (bolt). Without it revisions only
	// increase (the Kubernetes API store's count every write in the
	// cluster).
	ExactRevision bool
	// UniquePodCIDR: PutNodeIf refuses another node's pod CIDR with
	// store.ErrPodCIDRTaken.
	UniquePodCIDR bool
}

// SweepClaims runs the store's pod CIDR claim sweep, if it has one, with
// the store's own node list as the view, as the leader's sweep does, and
// returns how many claims it released.
func SweepClaims(t *testing.T, s store.Store) int {
	t.Helper()
	cs, ok := s.(store.ClaimSweeper)
	if !ok {
		return 0
	}
	nodes, err := s.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]string{}
	for _, n := range nodes {
		held[n.Name] = n.PodCIDR
	}
	released, err := cs.ReleaseStaleClaims(held)
	if err != nil {
		t.Fatal(err)
	}
	return released
}

// Node is a complete record for tests, distinct per name.
func Node(name, cidr string) *store.NodeRecord {
	at := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)
	return &store.NodeRecord{
		Name: name, Endpoint: "198.18.0.1:51820", WireGuardKey: bytes.Repeat([]byte(name[:1]), 32),
		PodCIDR: cidr, ChipID: []byte("chip-" + name), TEE: "sev-snp", Measurement: bytes.Repeat([]byte{0xab}, 48),
		SVID: [][]byte{[]byte("leaf-" + name), []byte("ca")}, Evidence: []byte("evidence-" + name),
		AttestedAt: at, ExpiresAt: at.Add(time.Hour), State: store.StateActive,
	}
}

// Equal compares records, times by instant.
func Equal(a, b *store.NodeRecord) bool {
	if a == nil || b == nil {
		return a == b
	}
	if !a.AttestedAt.Equal(b.AttestedAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
		return false
	}
	a2, b2 := *a, *b
	a2.AttestedAt, b2.AttestedAt, a2.ExpiresAt, b2.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(a2, b2)
}

func rev(t *testing.T, s store.Store) uint64 {
	t.Helper()
	r, err := s.Revision()
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return r
}

func put(t *testing.T, s store.Store, n *store.NodeRecord) uint64 {
	t.Helper()
	r, err := s.PutNode(n)
	if err != nil {
		t.Fatalf("PutNode %s: %v", n.Name, err)
	}
	return r
}

func names(nodes []*store.NodeRecord) []string {
	out := []string{}
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}

// Run runs the Store contract. open returns an empty store, closed by the
// test's cleanup.
func Run(t *testing.T, open func(t *testing.T) store.Store, opt Options) {
	t.Run("NodeCRUD", func(t *testing.T) {
		s := open(t)
		if _, err := s.GetNode("a"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetNode of an absent node: %v, want ErrNotFound", err)
		}
		before := rev(t, s)
		n := Node("a", "10.244.1.0/24")
		r := put(t, s, n)
		if r <= before || n.Revision != r {
			t.Fatalf("PutNode: revision %d (record %d), before %d", r, n.Revision, before)
		}
		if opt.ExactRevision && r != before+1 {
			t.Fatalf("PutNode: revision %d, want %d", r, before+1)
		}
		if now := rev(t, s); now < r {
			t.Fatalf("Revision %d after a write at %d", now, r)
		}
		got, err := s.GetNode("a")
		if err != nil || !Equal(got, n) {
			t.Fatalf("GetNode: %+v, %v; want %+v", got, err, n)
		}
		n.State, n.Reason = store.StateRejected, "policy"
		r2 := put(t, s, n)
		if r2 <= r {
			t.Fatalf("second PutNode: revision %d after %d", r2, r)
		}
		if got, _ := s.GetNode("a"); !Equal(got, n) {
			t.Fatalf("GetNode after replace: %+v", got)
		}
		d, err := s.DeleteNode("a")
		if err != nil || d <= r2 {
			t.Fatalf("DeleteNode: %d, %v (after %d)", d, err, r2)
		}
		if _, err := s.GetNode("a"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetNode after delete: %v", err)
		}
		if _, err := s.DeleteNode("a"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("DeleteNode of an absent node: %v", err)
		}
		if opt.ExactRevision && rev(t, s) != d {
			t.Fatalf("a failed delete moved the revision")
		}
	})

	t.Run("PutNodeValidation", func(t *testing.T) {
		s := open(t)
		if _, err := s.PutNode(nil); err == nil {
			t.Error("PutNode(nil) succeeded")
		}
		if _, err := s.PutNode(&store.NodeRecord{}); err == nil {
			t.Error("PutNode with an empty name succeeded")
		}
		if _, err := s.PutNodeIf(&store.NodeRecord{}, 0); err == nil {
			t.Error("PutNodeIf with an empty name succeeded")
		}
		if l, err := s.ListNodes(); err != nil || len(l) != 0 {
			t.Fatalf("after refused writes: %v, %v", names(l), err)
		}
	})

	t.Run("ListNodesSorted", func(t *testing.T) {
		s := open(t)
		for i, n := range []string{"c", "a", "b"} {
			put(t, s, Node(n, fmt.Sprintf("10.244.%d.0/24", i)))
		}
		l, err := s.ListNodes()
		if err != nil || !slices.Equal(names(l), []string{"a", "b", "c"}) {
			t.Fatalf("ListNodes: %v, %v", names(l), err)
		}
	})

	t.Run("PutNodeIf", func(t *testing.T) {
		s := open(t)
		n := Node("a", "10.244.1.0/24")
		r1, err := s.PutNodeIf(n, 0)
		if err != nil || n.Revision != r1 {
			t.Fatalf("PutNodeIf(new, 0): %d, %v", r1, err)
		}
		m := Node("a", "10.244.1.0/24")
		m.Endpoint = "198.18.0.9:51820"
		if _, err := s.PutNodeIf(m, 0); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutNodeIf(existing, 0): %v, want ErrConflict", err)
		}
		if _, err := s.PutNodeIf(m, r1+1000); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutNodeIf(existing, wrong revision): %v, want ErrConflict", err)
		}
		if got, _ := s.GetNode("a"); !Equal(got, n) {
			t.Fatalf("a refused PutNodeIf changed the record: %+v", got)
		}
		r2, err := s.PutNodeIf(m, r1)
		if err != nil || r2 <= r1 {
			t.Fatalf("PutNodeIf(existing, its revision): %d, %v", r2, err)
		}
		if _, err := s.PutNodeIf(n, r1); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutNodeIf from a stale revision: %v, want ErrConflict", err)
		}
		if _, err := s.DeleteNode("a"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.PutNodeIf(n, r2); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutNodeIf of a deleted node from its last revision: %v, want ErrConflict", err)
		}
		if _, err := s.GetNode("a"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("refused PutNodeIf recreated the node: %v", err)
		}
	})

	t.Run("ConcurrentPutNodeIfOneWins", func(t *testing.T) {
		s := open(t)
		n := Node("a", "10.244.1.0/24")
		r := put(t, s, n)
		var wins, conflicts atomic.Int32
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := Node("a", "10.244.1.0/24")
				m.Endpoint = fmt.Sprintf("198.18.0.%d:51820", 10+i)
				_, err := s.PutNodeIf(m, r)
				switch {
				case err == nil:
					wins.Add(1)
				case errors.Is(err, store.ErrConflict):
					conflicts.Add(1)
				default:
					t.Errorf("PutNodeIf: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 || conflicts.Load() != 5 {
			t.Fatalf("%d writers won and %d conflicted; want 1 and 5", wins.Load(), conflicts.Load())
		}
	})

	t.Run("RevisionsIncrease", func(t *testing.T) {
		s := open(t)
		var revs []uint64
		revs = append(revs, put(t, s, Node("a", "10.244.1.0/24")))
		revs = append(revs, put(t, s, Node("b", "10.244.2.0/24")))
		d, err := s.DeleteNode("a")
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, d)
		_, rv, err := s.RevokeNode("b", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rv)
		for i := 1; i < len(revs); i++ {
			if revs[i] <= revs[i-1] || (opt.ExactRevision && revs[i] != revs[i-1]+1) {
				t.Fatalf("revisions %v do not increase (exact=%v)", revs, opt.ExactRevision)
			}
		}
		if now := rev(t, s); now < revs[len(revs)-1] {
			t.Fatalf("Revision %d below the last write's %d", now, revs[len(revs)-1])
		}
	})

	t.Run("RevokeNode", func(t *testing.T) {
		s := open(t)
		a, b := Node("a", "10.244.1.0/24"), Node("b", "10.244.2.0/24")
		put(t, s, a)
		put(t, s, b)
		for _, p := range []*store.PodRecord{{UID: "0a-1", Namespace: "ns", Name: "p1", ServiceAccount: "sa", Node: "a"}, {UID: "0b-1", Node: "b"}} {
			if err := s.PutPod(p); err != nil {
				t.Fatal(err)
			}
		}
		at := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
		r, _, err := s.RevokeNode("a", at)
		if err != nil {
			t.Fatal(err)
		}
		if r.Name != "a" || !bytes.Equal(r.ChipID, a.ChipID) || !bytes.Equal(r.WireGuardKey, a.WireGuardKey) || !r.RevokedAt.Equal(at) {
			t.Fatalf("revocation %+v", r)
		}
		if _, err := s.GetNode("a"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoked node still stored: %v", err)
		}
		if pods, _ := s.ListPods("a"); len(pods) != 0 {
			t.Fatalf("revoked node's pods remain: %v", pods)
		}
		if pods, _ := s.ListPods("b"); len(pods) != 1 {
			t.Fatalf("another node's pods went: %v", pods)
		}
		if got, ok, err := s.Revoked(a.ChipID); err != nil || !ok || got.Name != "a" {
			t.Fatalf("Revoked(chip): %+v %v %v", got, ok, err)
		}
		if got, ok, err := s.RevokedKey(a.WireGuardKey); err != nil || !ok || got.Name != "a" {
			t.Fatalf("RevokedKey: %+v %v %v", got, ok, err)
		}
		for _, probe := range [][]byte{nil, {}, b.ChipID, a.ChipID[:3]} {
			if _, ok, err := s.Revoked(probe); ok || err != nil {
				t.Fatalf("Revoked(%q) = %v, %v", probe, ok, err)
			}
		}
		if _, ok, err := s.RevokedKey(nil); ok || err != nil {
			t.Fatalf("RevokedKey(nil) = %v, %v", ok, err)
		}
		before := rev(t, s)
		if _, _, err := s.RevokeNode("a", at); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("RevokeNode of an absent node: %v", err)
		}
		if opt.ExactRevision && rev(t, s) != before {
			t.Fatal("a failed revoke moved the revision")
		}
		if _, _, err := s.RevokeNode("b", at.Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		l, err := s.ListRevocations()
		if err != nil || len(l) != 2 || l[0].Name != "a" || l[1].Name != "b" {
			t.Fatalf("ListRevocations (oldest first): %+v, %v", l, err)
		}
	})

	t.Run("Pods", func(t *testing.T) {
		s := open(t)
		if err := s.PutPod(&store.PodRecord{UID: "u-1", Node: "a"}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("PutPod for an absent node: %v, want ErrNotFound", err)
		}
		for _, bad := range []*store.PodRecord{nil, {Node: "a"}, {UID: "u-1"}} {
			if err := s.PutPod(bad); err == nil {
				t.Fatalf("PutPod(%+v) succeeded", bad)
			}
		}
		put(t, s, Node("a", "10.244.1.0/24"))
		put(t, s, Node("b", "10.244.2.0/24"))
		p1 := &store.PodRecord{UID: "u-2", Namespace: "ns", Name: "web", ServiceAccount: "sa", Node: "a"}
		p2 := &store.PodRecord{UID: "u-1", Namespace: "ns", Name: "db", ServiceAccount: "sa", Node: "a"}
		p3 := &store.PodRecord{UID: "u-3", Namespace: "ns", Name: "x", ServiceAccount: "sa", Node: "b"}
		for _, p := range []*store.PodRecord{p1, p2, p3} {
			if err := s.PutPod(p); err != nil {
				t.Fatal(err)
			}
		}
		if got, err := s.GetPod("u-2"); err != nil || *got != *p1 {
			t.Fatalf("GetPod: %+v, %v", got, err)
		}
		if err := s.PutPod(&store.PodRecord{UID: "u-2", Node: "b"}); err == nil {
			t.Fatal("another node re-registered a pod")
		}
		p1.Name = "web-2"
		if err := s.PutPod(p1); err != nil {
			t.Fatalf("re-register by its node: %v", err)
		}
		if got, _ := s.GetPod("u-2"); got == nil || got.Name != "web-2" {
			t.Fatalf("GetPod after re-register: %+v", got)
		}
		l, err := s.ListPods("a")
		if err != nil || len(l) != 2 || l[0].UID != "u-1" || l[1].UID != "u-2" {
			t.Fatalf("ListPods(a): %+v, %v", l, err)
		}
		if all, err := s.ListPods(""); err != nil || len(all) != 3 {
			t.Fatalf("ListPods(\"\"): %+v, %v", all, err)
		}
		if err := s.DeletePod("u-1"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeletePod("u-1"); err != nil {
			t.Fatalf("DeletePod of an absent pod: %v", err)
		}
		if _, err := s.GetPod("u-1"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetPod after delete: %v", err)
		}
		if _, err := s.DeleteNode("a"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetPod("u-2"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a deleted node's pod remains: %v", err)
		}
		if _, err := s.GetPod("u-3"); err != nil {
			t.Fatalf("another node's pod went: %v", err)
		}
	})

	t.Run("Secrets", func(t *testing.T) {
		s := open(t)
		if _, err := s.GetSecret("ca.key"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("GetSecret of an absent secret: %v", err)
		}
		if err := s.PutSecret("", []byte("x")); err == nil {
			t.Fatal("PutSecret with an empty name succeeded")
		}
		if err := s.PutSecret("admin.token", []byte("v1")); err != nil {
			t.Fatal(err)
		}
		if err := s.PutSecret("admin.token", []byte("v2")); err != nil {
			t.Fatal(err)
		}
		if v, err := s.GetSecret("admin.token"); err != nil || string(v) != "v2" {
			t.Fatalf("GetSecret: %q, %v", v, err)
		}
		want := map[string][]byte{"ca.key": []byte("key"), "ca.crt": []byte("cert")}
		got, err := s.CreateSecrets(want)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("CreateSecrets (new): %q, %v", got, err)
		}
		got, err = s.CreateSecrets(map[string][]byte{"ca.key": []byte("other"), "ca.crt": []byte("other")})
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("CreateSecrets (existing) returned %q, %v; want the stored %q", got, err, want)
		}
		if _, err := s.CreateSecrets(map[string][]byte{"ca.key": []byte("k"), "jwt.key": []byte("j")}); !errors.Is(err, store.ErrPartialSecrets) {
			t.Fatalf("CreateSecrets (some exist): %v, want ErrPartialSecrets", err)
		}
		if _, err := s.GetSecret("jwt.key"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a refused CreateSecrets stored a secret: %v", err)
		}
		if _, err := s.CreateSecrets(nil); err == nil {
			t.Fatal("CreateSecrets(nil) succeeded")
		}
	})

	t.Run("CopiesAreIndependent", func(t *testing.T) {
		s := open(t)
		n := Node("a", "10.244.1.0/24")
		put(t, s, n)
		n.WireGuardKey[0] ^= 0xff
		n.SVID[0][0] ^= 0xff
		got, _ := s.GetNode("a")
		if got.WireGuardKey[0] == n.WireGuardKey[0] || got.SVID[0][0] == n.SVID[0][0] {
			t.Fatal("the store shares the caller's byte slices")
		}
		got.ChipID[0] ^= 0xff
		if again, _ := s.GetNode("a"); again.ChipID[0] == got.ChipID[0] {
			t.Fatal("GetNode returned the stored slices")
		}
		v := []byte("secret")
		if err := s.PutSecret("s", v); err != nil {
			t.Fatal(err)
		}
		v[0] = 'X'
		if got, _ := s.GetSecret("s"); string(got) != "secret" {
			t.Fatalf("the store shares a secret's bytes: %q", got)
		}
	})

	if opt.UniquePodCIDR {
		t.Run("UniquePodCIDR", func(t *testing.T) {
			s := open(t)
			put(t, s, Node("a", "10.244.1.0/24"))
			b := Node("b", "10.244.1.0/24")
			if _, err := s.PutNodeIf(b, 0); !errors.Is(err, store.ErrPodCIDRTaken) || !errors.Is(err, store.ErrConflict) {
				t.Fatalf("PutNodeIf with another node's CIDR: %v, want ErrPodCIDRTaken", err)
			}
			if _, err := s.GetNode("b"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("refused node stored: %v", err)
			}
			// a moves to another CIDR: its old one is free (once the
			// claim sweep ran, for a store that has one).
			a := Node("a", "10.244.9.0/24")
			put(t, s, a)
			SweepClaims(t, s)
			if _, err := s.PutNodeIf(b, 0); err != nil {
				t.Fatalf("PutNodeIf with a released CIDR: %v", err)
			}
			// Deleting a node frees its CIDR.
			if _, err := s.DeleteNode("a"); err != nil {
				t.Fatal(err)
			}
			SweepClaims(t, s)
			if _, err := s.PutNodeIf(Node("c", "10.244.9.0/24"), 0); err != nil {
				t.Fatalf("PutNodeIf with a deleted node's CIDR: %v", err)
			}
			// The same node keeps its CIDR across writes.
			cur, _ := s.GetNode("c")
			if _, err := s.PutNodeIf(cur, cur.Revision); err != nil {
				t.Fatalf("rewriting a node with its own CIDR: %v", err)
			}
		})
	}
}
