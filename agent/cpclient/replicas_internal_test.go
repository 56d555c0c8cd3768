package cpclient

import (
	"strings"
	"testing"
)

// TestReplicasOrder: dials start at the replica that worked last and wrap
// around; a failover is counted only when a replica other than the one
// that worked last starts working, never for the first that works.
func TestReplicasOrder(t *testing.T) {
	r, err := NewReplicas([]string{"a:1", "b:1", "c:1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Timeout != DefaultReplicaTimeout {
		t.Errorf("timeout with three replicas %v", r.Timeout)
	}
	var events []string
	r.OnFailover = func(from, to string) { events = append(events, from+">"+to) }
	check := func(wantOrder, wantCur string, wantFailovers uint64) {
		t.Helper()
		if o := strings.Join(r.Order(), ","); o != wantOrder {
			t.Errorf("order %s, want %s", o, wantOrder)
		}
		if r.Current() != wantCur || r.Failovers() != wantFailovers {
			t.Errorf("current %q failovers %d, want %q %d", r.Current(), r.Failovers(), wantCur, wantFailovers)
		}
	}
	check("a:1,b:1,c:1", "", 0)
	if r.worked("b:1") {
		t.Error("first replica to work counted as a failover")
	}
	check("b:1,c:1,a:1", "b:1", 0)
	r.worked("b:1")
	check("b:1,c:1,a:1", "b:1", 0)
	if !r.worked("a:1") {
		t.Error("moving from b to a is no failover")
	}
	check("a:1,b:1,c:1", "a:1", 1)
	r.worked("c:1")
	check("c:1,a:1,b:1", "c:1", 2)
	if r.worked("z:1") {
		t.Error("an unknown address counted")
	}
	check("c:1,a:1,b:1", "c:1", 2)
	if strings.Join(events, " ") != "b:1>a:1 a:1>c:1" {
		t.Errorf("failover callbacks %v", events)
	}
	one, _ := NewReplicas([]string{"a:1"})
	if one.Timeout != DefaultSingleTimeout {
		t.Errorf("timeout with one replica %v", one.Timeout)
	}
}
