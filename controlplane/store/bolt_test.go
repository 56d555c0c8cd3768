package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTest(t *testing.T) (*Bolt, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "confmesh.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("OpenBolt: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

func testNode(name string) *NodeRecord {
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return &NodeRecord{
		Name:         name,
		Endpoint:     "10.0.0.1:51820",
		WireGuardKey: []byte("wg-" + name),
		PodCIDR:      "10.244.1.0/24",
		ChipID:       []byte("chip-" + name),
		TEE:          "sev-snp",
		Measurement:  []byte{1, 2, 3},
		SVID:         [][]byte{[]byte("leaf-" + name), []byte("ca")},
		Evidence:     []byte("evidence"),
		AttestedAt:   at,
		ExpiresAt:    at.Add(time.Hour),
		State:        StateActive,
	}
}

func mustRev(t *testing.T, s Store) uint64 {
	t.Helper()
	r, err := s.Revision()
	if err != nil {
		t.Fatalf("Revision: %v", err)
	}
	return r
}

func nodesEqual(a, b *NodeRecord) bool {
	if !a.AttestedAt.Equal(b.AttestedAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
		return false
	}
	a2, b2 := *a, *b
	a2.AttestedAt, b2.AttestedAt, a2.ExpiresAt, b2.ExpiresAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(a2, b2)
}

func TestNodeCRUD(t *testing.T) {
	s, _ := openTest(t)
	if got := mustRev(t, s); got != 0 {
		t.Fatalf("new store revision = %d, want 0", got)
	}
	if _, err := s.GetNode("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetNode missing: err = %v, want ErrNotFound", err)
	}

	n := testNode("a")
	rev, err := s.PutNode(n)
	if err != nil {
		t.Fatalf("PutNode: %v", err)
	}
	if rev != 1 || n.Revision != 1 {
		t.Fatalf("PutNode rev = %d, n.Revision = %d, want 1, 1", rev, n.Revision)
	}
	got, err := s.GetNode("a")
	if err != nil {
		t.Fatalf("GetNode: %v", err)
	}
	if !nodesEqual(got, n) {
		t.Fatalf("GetNode = %+v, want %+v", got, n)
	}

	// Update.
	n.State, n.Reason = StateRejected, "low TCB"
	if rev, err = s.PutNode(n); err != nil || rev != 2 {
		t.Fatalf("PutNode update: rev %d err %v, want 2", rev, err)
	}
	got, _ = s.GetNode("a")
	if got.State != StateRejected || got.Reason != "low TCB" || got.Revision != 2 {
		t.Fatalf("updated node = %+v", got)
	}

	// Delete.
	if rev, err = s.DeleteNode("a"); err != nil || rev != 3 {
		t.Fatalf("DeleteNode: rev %d err %v, want 3", rev, err)
	}
	if _, err := s.GetNode("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetNode after delete: err = %v, want ErrNotFound", err)
	}
	if got := mustRev(t, s); got != 3 {
		t.Fatalf("revision = %d, want 3", got)
	}
}

func TestPutNodeValidation(t *testing.T) {
	s, _ := openTest(t)
	_, err := s.PutNode(&NodeRecord{})
	if err == nil || !strings.Contains(err.Error(), "Name") {
		t.Fatalf("PutNode empty name: err = %v, want error naming Name", err)
	}
	if _, err := s.PutNode(nil); err == nil {
		t.Fatal("PutNode(nil): no error")
	}
	if got := mustRev(t, s); got != 0 {
		t.Fatalf("revision after rejected puts = %d, want 0", got)
	}
}

func TestDeleteMissingNodeDoesNotBump(t *testing.T) {
	s, _ := openTest(t)
	if _, err := s.PutNode(testNode("a")); err != nil {
		t.Fatal(err)
	}
	rev, err := s.DeleteNode("missing")
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteNode missing: err = %v, want ErrNotFound", err)
	}
	if rev != 0 {
		t.Fatalf("DeleteNode missing returned rev %d", rev)
	}
	if got := mustRev(t, s); got != 1 {
		t.Fatalf("revision = %d, want 1 (no bump)", got)
	}
	if _, _, err := s.RevokeNode("missing", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("RevokeNode missing: err = %v, want ErrNotFound", err)
	}
	if got := mustRev(t, s); got != 1 {
		t.Fatalf("revision after failed revoke = %d, want 1", got)
	}
	if rs, _ := s.ListRevocations(); len(rs) != 0 {
		t.Fatalf("revocations after failed revoke: %d", len(rs))
	}
}

func TestListNodesSorted(t *testing.T) {
	s, _ := openTest(t)
	for _, name := range []string{"node-c", "node-a", "node-b", "alpha", "zulu"} {
		if _, err := s.PutNode(testNode(name)); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := s.ListNodes()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range ns {
		names = append(names, n.Name)
	}
	want := []string{"alpha", "node-a", "node-b", "node-c", "zulu"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("ListNodes = %v, want %v", names, want)
	}
	// Empty store lists as empty, not an error.
	s2, _ := openTest(t)
	if ns, err := s2.ListNodes(); err != nil || len(ns) != 0 {
		t.Fatalf("ListNodes empty: %v %v", ns, err)
	}
}

func TestRevisionPerMutation(t *testing.T) {
	s, _ := openTest(t)
	var want uint64
	check := func(what string, rev uint64) {
		t.Helper()
		want++
		if rev != want {
			t.Fatalf("%s returned rev %d, want %d", what, rev, want)
		}
		if got := mustRev(t, s); got != want {
			t.Fatalf("after %s Revision() = %d, want %d", what, got, want)
		}
	}
	for i := range 3 {
		rev, err := s.PutNode(testNode(fmt.Sprintf("n%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		check("PutNode", rev)
	}
	rev, err := s.DeleteNode("n0")
	if err != nil {
		t.Fatal(err)
	}
	check("DeleteNode", rev)
	_, rev, err = s.RevokeNode("n1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	check("RevokeNode", rev)

	// Pods and secrets do not touch the node-set revision.
	if err := s.PutPod(&PodRecord{UID: "u1", Node: "n2"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeletePod("u1"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret("ca.key", []byte("k")); err != nil {
		t.Fatal(err)
	}
	if got := mustRev(t, s); got != want {
		t.Fatalf("pod/secret mutations changed revision to %d, want %d", got, want)
	}
}

func TestRevokeNodeAtomic(t *testing.T) {
	s, _ := openTest(t)
	a, b := testNode("a"), testNode("b")
	for _, n := range []*NodeRecord{a, b} {
		if _, err := s.PutNode(n); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*PodRecord{
		{UID: "a1", Namespace: "default", Name: "web", ServiceAccount: "web", Node: "a"},
		{UID: "a2", Namespace: "default", Name: "db", ServiceAccount: "db", Node: "a"},
		{UID: "b1", Namespace: "default", Name: "api", ServiceAccount: "api", Node: "b"},
	} {
		if err := s.PutPod(p); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, err := s.Revoked(a.ChipID); err != nil || ok {
		t.Fatalf("Revoked before revoke: %v %v", ok, err)
	}

	at := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	r, rev, err := s.RevokeNode("a", at)
	if err != nil {
		t.Fatalf("RevokeNode: %v", err)
	}
	if rev != 3 {
		t.Fatalf("RevokeNode rev = %d, want 3", rev)
	}
	if r.Name != "a" || !bytes.Equal(r.ChipID, a.ChipID) || !bytes.Equal(r.WireGuardKey, a.WireGuardKey) || !r.RevokedAt.Equal(at) {
		t.Fatalf("revocation = %+v", r)
	}
	if _, err := s.GetNode("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoked node still present: %v", err)
	}
	if _, err := s.GetNode("b"); err != nil {
		t.Fatalf("other node gone: %v", err)
	}
	for _, uid := range []string{"a1", "a2"} {
		if _, err := s.GetPod(uid); !errors.Is(err, ErrNotFound) {
			t.Fatalf("pod %s of revoked node still present: %v", uid, err)
		}
	}
	if pods, _ := s.ListPods("a"); len(pods) != 0 {
		t.Fatalf("ListPods(a) = %d pods, want 0", len(pods))
	}
	if p, err := s.GetPod("b1"); err != nil || p.Node != "b" {
		t.Fatalf("pod of other node: %+v %v", p, err)
	}
	got, ok, err := s.Revoked(a.ChipID)
	if err != nil || !ok || got.Name != "a" {
		t.Fatalf("Revoked(chip) = %+v %v %v, want true", got, ok, err)
	}
	got, ok, err = s.RevokedKey(a.WireGuardKey)
	if err != nil || !ok || got.Name != "a" {
		t.Fatalf("RevokedKey(key) = %+v %v %v, want true", got, ok, err)
	}
	if _, ok, _ := s.Revoked(b.ChipID); ok {
		t.Fatal("Revoked(other chip) = true")
	}
	if _, ok, _ := s.RevokedKey(b.WireGuardKey); ok {
		t.Fatal("RevokedKey(other key) = true")
	}
	rs, err := s.ListRevocations()
	if err != nil || len(rs) != 1 || rs[0].Name != "a" {
		t.Fatalf("ListRevocations = %+v %v", rs, err)
	}
	// Revoking again: the node is gone.
	if _, _, err := s.RevokeNode("a", at); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second RevokeNode: err = %v, want ErrNotFound", err)
	}
}

func TestRevokedEmpty(t *testing.T) {
	s, _ := openTest(t)
	// A node without chip ID or WireGuard key, revoked: empty lookups must not match it.
	if _, err := s.PutNode(&NodeRecord{Name: "bare", State: StateActive}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.RevokeNode("bare", time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, id := range [][]byte{nil, {}} {
		if r, ok, err := s.Revoked(id); ok || r != nil || err != nil {
			t.Fatalf("Revoked(%v) = %v %v %v, want false", id, r, ok, err)
		}
		if r, ok, err := s.RevokedKey(id); ok || r != nil || err != nil {
			t.Fatalf("RevokedKey(%v) = %v %v %v, want false", id, r, ok, err)
		}
	}
}

func TestPodCRUD(t *testing.T) {
	s, _ := openTest(t)
	for _, name := range []string{"n1", "n2"} {
		if _, err := s.PutNode(testNode(name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.GetPod("x"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPod missing: %v", err)
	}
	pods := []*PodRecord{
		{UID: "c", Namespace: "ns", Name: "pc", ServiceAccount: "sa", Node: "n1"},
		{UID: "a", Namespace: "ns", Name: "pa", ServiceAccount: "sa", Node: "n1"},
		{UID: "b", Namespace: "ns", Name: "pb", ServiceAccount: "sa", Node: "n2"},
	}
	for _, p := range pods {
		if err := s.PutPod(p); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.GetPod("a")
	if err != nil || !reflect.DeepEqual(got, pods[1]) {
		t.Fatalf("GetPod = %+v %v", got, err)
	}
	l, err := s.ListPods("n1")
	if err != nil || len(l) != 2 || l[0].UID != "a" || l[1].UID != "c" {
		t.Fatalf("ListPods(n1) = %+v %v, want [a c]", l, err)
	}
	if l, _ := s.ListPods("n2"); len(l) != 1 || l[0].UID != "b" {
		t.Fatalf("ListPods(n2) = %+v", l)
	}
	if l, _ := s.ListPods("nobody"); l == nil || len(l) != 0 {
		t.Fatalf("ListPods(nobody) = %#v, want empty", l)
	}
	if l, _ := s.ListPods(""); len(l) != 3 {
		t.Fatalf("ListPods(\"\") = %d pods, want 3", len(l))
	}
	// Update in place (same node).
	upd := *pods[1]
	upd.ServiceAccount = "other"
	if err := s.PutPod(&upd); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetPod("a"); got.ServiceAccount != "other" {
		t.Fatalf("updated pod = %+v", got)
	}
	// Delete (idempotent).
	for range 2 {
		if err := s.DeletePod("a"); err != nil {
			t.Fatalf("DeletePod: %v", err)
		}
	}
	if _, err := s.GetPod("a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetPod after delete: %v", err)
	}
	// DeleteNode removes the node's pods only.
	if _, err := s.DeleteNode("n1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetPod("c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pod of deleted node: %v", err)
	}
	if _, err := s.GetPod("b"); err != nil {
		t.Fatalf("pod of other node: %v", err)
	}
}

func TestPutPodValidation(t *testing.T) {
	s, _ := openTest(t)
	if _, err := s.PutNode(testNode("n1")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutNode(testNode("n2")); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPod(&PodRecord{Node: "n1"}); err == nil || !strings.Contains(err.Error(), "UID") {
		t.Fatalf("PutPod empty UID: %v", err)
	}
	if err := s.PutPod(&PodRecord{UID: "u"}); err == nil || !strings.Contains(err.Error(), "Node") {
		t.Fatalf("PutPod empty Node: %v", err)
	}
	if err := s.PutPod(nil); err == nil {
		t.Fatal("PutPod(nil): no error")
	}
	if err := s.PutPod(&PodRecord{UID: "u", Node: "ghost"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("PutPod unknown node: %v, want ErrNotFound", err)
	}
	if err := s.PutPod(&PodRecord{UID: "u", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	// Another node cannot take over a registered UID.
	err := s.PutPod(&PodRecord{UID: "u", Node: "n2"})
	if err == nil || !strings.Contains(err.Error(), "n1") {
		t.Fatalf("PutPod takeover: %v, want error naming n1", err)
	}
	if p, _ := s.GetPod("u"); p.Node != "n1" {
		t.Fatalf("pod node changed to %q", p.Node)
	}
	if err := s.DeletePod(""); err == nil {
		t.Fatal("DeletePod(\"\"): no error")
	}
}

func TestSecrets(t *testing.T) {
	s, _ := openTest(t)
	if _, err := s.GetSecret("ca.key"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetSecret missing: %v", err)
	}
	val := []byte("secret-key-material")
	if err := s.PutSecret("ca.key", val); err != nil {
		t.Fatal(err)
	}
	val[0] = 'X' // caller's buffer is not aliased
	got, err := s.GetSecret("ca.key")
	if err != nil || string(got) != "secret-key-material" {
		t.Fatalf("GetSecret = %q %v", got, err)
	}
	got[0] = 'Y'
	if again, _ := s.GetSecret("ca.key"); string(again) != "secret-key-material" {
		t.Fatalf("returned secret aliases storage: %q", again)
	}
	if err := s.PutSecret("ca.key", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetSecret("ca.key"); string(got) != "v2" {
		t.Fatalf("overwritten secret = %q", got)
	}
	// An empty value exists and is distinct from absent.
	if err := s.PutSecret("empty", nil); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSecret("empty"); err != nil || len(got) != 0 {
		t.Fatalf("GetSecret(empty) = %q %v", got, err)
	}
	if err := s.PutSecret("", []byte("x")); err == nil {
		t.Fatal("PutSecret empty name: no error")
	}
}

func TestReturnedCopiesAreIndependent(t *testing.T) {
	s, _ := openTest(t)
	n := testNode("a")
	if _, err := s.PutNode(n); err != nil {
		t.Fatal(err)
	}
	// Mutating the input after PutNode does not change the store.
	n.Endpoint = "mutated"
	n.WireGuardKey[0] = 'X'
	n.SVID[0][0] = 'X'

	g1, _ := s.GetNode("a")
	if g1.Endpoint == "mutated" || g1.WireGuardKey[0] == 'X' || g1.SVID[0][0] == 'X' {
		t.Fatalf("store aliased the input: %+v", g1)
	}
	g1.Endpoint = "changed"
	g1.WireGuardKey[0] = 'Z'
	g1.ChipID[0] = 'Z'
	g1.SVID[0][0] = 'Z'
	g1.Measurement[0] = 99

	l, _ := s.ListNodes()
	l[0].Name = "renamed"
	l[0].Evidence[0] = 'Z'

	g2, _ := s.GetNode("a")
	want := testNode("a")
	want.Revision = 1
	if !nodesEqual(g2, want) {
		t.Fatalf("stored node changed through a returned copy: %+v", g2)
	}

	if err := s.PutPod(&PodRecord{UID: "u", Node: "a", ServiceAccount: "sa"}); err != nil {
		t.Fatal(err)
	}
	p, _ := s.GetPod("u")
	p.ServiceAccount = "root"
	ps, _ := s.ListPods("a")
	ps[0].Node = "b"
	if p2, _ := s.GetPod("u"); p2.ServiceAccount != "sa" || p2.Node != "a" {
		t.Fatalf("stored pod changed through a returned copy: %+v", p2)
	}

	r, _, err := s.RevokeNode("a", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r.ChipID[0] = 'Z'
	rs, _ := s.ListRevocations()
	rs[0].WireGuardKey[0] = 'Z'
	if _, ok, _ := s.Revoked([]byte("chip-a")); !ok {
		t.Fatal("revocation changed through returned copy (chip)")
	}
	if _, ok, _ := s.RevokedKey([]byte("wg-a")); !ok {
		t.Fatal("revocation changed through returned copy (key)")
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "confmesh.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "b", "c"} {
		if _, err := s.PutNode(testNode(name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPod(&PodRecord{UID: "pb", Namespace: "ns", Name: "p", ServiceAccount: "sa", Node: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPod(&PodRecord{UID: "pc", Namespace: "ns", Name: "p", ServiceAccount: "sa", Node: "c"}); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	if _, _, err := s.RevokeNode("a", at); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSecret("ca.crt", []byte("CERT")); err != nil {
		t.Fatal(err)
	}
	wantRev := mustRev(t, s) // 4
	nodesBefore, _ := s.ListNodes()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2, err := OpenBolt(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s2.Close()
	if got := mustRev(t, s2); got != wantRev || got != 4 {
		t.Fatalf("revision after restart = %d, want %d (4)", got, wantRev)
	}
	nodesAfter, err := s2.ListNodes()
	if err != nil || len(nodesAfter) != len(nodesBefore) {
		t.Fatalf("nodes after restart: %d %v, want %d", len(nodesAfter), err, len(nodesBefore))
	}
	for i := range nodesAfter {
		if !nodesEqual(nodesAfter[i], nodesBefore[i]) {
			t.Fatalf("node %d after restart = %+v, want %+v", i, nodesAfter[i], nodesBefore[i])
		}
	}
	if p, err := s2.GetPod("pb"); err != nil || p.Node != "b" {
		t.Fatalf("pod after restart: %+v %v", p, err)
	}
	if r, ok, err := s2.Revoked([]byte("chip-a")); err != nil || !ok || !r.RevokedAt.Equal(at) {
		t.Fatalf("revocation after restart: %+v %v %v", r, ok, err)
	}
	if _, ok, _ := s2.RevokedKey([]byte("wg-a")); !ok {
		t.Fatal("key revocation lost on restart")
	}
	if v, err := s2.GetSecret("ca.crt"); err != nil || string(v) != "CERT" {
		t.Fatalf("secret after restart: %q %v", v, err)
	}
	// The counter continues from where it was.
	if rev, err := s2.PutNode(testNode("d")); err != nil || rev != 5 {
		t.Fatalf("PutNode after restart: rev %d err %v, want 5", rev, err)
	}
}

func TestSecondOpenFailsWithTimeout(t *testing.T) {
	s, path := openTest(t)
	_ = s
	start := time.Now()
	s2, err := OpenBolt(path)
	elapsed := time.Since(start)
	if err == nil {
		s2.Close()
		t.Fatal("second OpenBolt on a held file succeeded")
	}
	if !strings.Contains(err.Error(), path) {
		t.Fatalf("error does not name the file %s: %v", path, err)
	}
	if elapsed > openTimeout+3*time.Second {
		t.Fatalf("second OpenBolt took %s, want about %s", elapsed, openTimeout)
	}
	t.Logf("second open failed after %s: %v", elapsed.Round(time.Millisecond), err)
}

func TestFileModes(t *testing.T) {
	_, path := openTest(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Fatalf("file mode = %o, want 600", m)
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if m := di.Mode().Perm(); m != 0o700 {
		t.Fatalf("directory mode = %o, want 700", m)
	}
}

func TestConcurrentPutNode(t *testing.T) {
	s, _ := openTest(t)
	const workers = 20
	revs := make([]uint64, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			revs[i], errs[i] = s.PutNode(testNode(fmt.Sprintf("n%02d", i)))
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range workers {
		if errs[i] != nil {
			t.Fatalf("worker %d: %v", i, errs[i])
		}
		if revs[i] < 1 || revs[i] > workers || seen[revs[i]] {
			t.Fatalf("worker %d: revision %d out of range or duplicate", i, revs[i])
		}
		seen[revs[i]] = true
	}
	if got := mustRev(t, s); got != workers {
		t.Fatalf("final Revision() = %d, want %d", got, workers)
	}
	ns, _ := s.ListNodes()
	if len(ns) != workers {
		t.Fatalf("ListNodes = %d nodes, want %d", len(ns), workers)
	}
	for _, n := range ns {
		var i int
		fmt.Sscanf(n.Name, "n%02d", &i)
		if n.Revision != revs[i] {
			t.Fatalf("node %s stored revision %d, PutNode returned %d", n.Name, n.Revision, revs[i])
		}
	}
}

func TestClosedStoreErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.db")
	s, err := OpenBolt(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutNode(testNode("a")); err == nil {
		t.Fatal("PutNode on closed store: no error")
	}
	if _, err := s.GetNode("a"); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("GetNode on closed store: %v", err)
	}
}

func TestCreateSecretsOnceAndAllOrNothing(t *testing.T) {
	s, err := OpenBolt(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	first := map[string][]byte{"a": []byte("1"), "b": []byte("2")}
	got, err := s.CreateSecrets(first)
	if err != nil || string(got["a"]) != "1" || string(got["b"]) != "2" {
		t.Fatalf("first create: %v %q", err, got)
	}
	got, err = s.CreateSecrets(map[string][]byte{"a": []byte("x"), "b": []byte("y")})
	if err != nil || string(got["a"]) != "1" || string(got["b"]) != "2" {
		t.Fatalf("second create must return the stored values: %v %q", err, got)
	}
	if _, err := s.CreateSecrets(map[string][]byte{"a": []byte("x"), "c": []byte("z")}); !errors.Is(err, ErrPartialSecrets) {
		t.Fatalf("partial: err %v, want ErrPartialSecrets", err)
	}
	if _, err := s.GetSecret("c"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused create wrote c: %v", err)
	}
}
