package soak

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestResolveMode: auto picks the failover mode only when the API server
// tools are there and otherwise falls back, saying why and naming the
// command that builds them; kubernetes without them is an error; an unknown
// value is refused.
func TestResolveMode(t *testing.T) {
	missing := fmt.Errorf("etcd is %w (/cache/etcd missing): run `make k8s-tools` (k8s/tools/build.sh) first", errors.New("not built"))
	for _, c := range []struct {
		flag     string
		toolsErr error
		mode     string
		note     string // substring; "" means no note
		err      string // substring; "" means no error
	}{
		{ModeAuto, nil, ModeKubernetes, "", ""},
		{ModeAuto, missing, ModeStandalone, "make k8s-tools", ""},
		{"", missing, ModeStandalone, "one standalone control plane", ""},
		{ModeKubernetes, nil, ModeKubernetes, "", ""},
		{ModeKubernetes, missing, "", "", "--control-planes kubernetes needs etcd and kube-apiserver: etcd is not built"},
		{ModeStandalone, nil, ModeStandalone, "", ""},
		{ModeStandalone, missing, ModeStandalone, "", ""},
		{"bbolt", nil, "", "", `--control-planes "bbolt": want auto, kubernetes or standalone`},
	} {
		mode, note, err := ResolveMode(c.flag, c.toolsErr)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ResolveMode(%q, %v): error %v, want %q", c.flag, c.toolsErr, err, c.err)
			}
			if c.flag == ModeKubernetes && !strings.Contains(err.Error(), "make k8s-tools") {
				t.Errorf("ResolveMode(%q): error %v does not name make k8s-tools", c.flag, err)
			}
		case err != nil:
			t.Errorf("ResolveMode(%q, %v): %v", c.flag, c.toolsErr, err)
		case mode != c.mode:
			t.Errorf("ResolveMode(%q, %v) = %q, want %q", c.flag, c.toolsErr, mode, c.mode)
		case c.note == "" && note != "":
			t.Errorf("ResolveMode(%q, %v): unexpected note %q", c.flag, c.toolsErr, note)
		case !strings.Contains(note, c.note):
			t.Errorf("ResolveMode(%q, %v): note %q, want it to say %q", c.flag, c.toolsErr, note, c.note)
		}
	}
}

// TestCycleFor: the failover mode schedules failovers where the standalone
// mode schedules kills, and nothing else changes.
func TestCycleFor(t *testing.T) {
	std, err := CycleFor(ModeStandalone)
	if err != nil || !slices.Equal(std, Cycle) {
		t.Fatalf("standalone cycle %v (%v), want %v", std, err, Cycle)
	}
	kube, err := CycleFor(ModeKubernetes)
	if err != nil {
		t.Fatal(err)
	}
	want := []Kind{KindNodeJoin, KindPolicyReload, KindControlPlaneFailover, KindNodeLeave}
	if !slices.Equal(kube, want) {
		t.Fatalf("kubernetes cycle %v, want %v", kube, want)
	}
	if !slices.Contains(Cycle, KindControlPlane) {
		t.Fatal("CycleFor(kubernetes) changed Cycle itself")
	}
	if _, err := CycleFor(ModeAuto); err == nil {
		t.Error("CycleFor(auto) accepted: auto must be resolved first")
	}
	if ReplicasOf(ModeKubernetes) != 2 || ReplicasOf(ModeStandalone) != 1 {
		t.Errorf("replicas: kubernetes %d, standalone %d", ReplicasOf(ModeKubernetes), ReplicasOf(ModeStandalone))
	}
}

// TestFailoverVictim: the replica most stable agents use is killed (a tie
// goes to the earlier replica); agents on an unknown address do not count,
// and with none on a replica there is no victim.
func TestFailoverVictim(t *testing.T) {
	reps := []string{"198.18.0.2:7443", "198.18.0.3:7443"}
	for _, c := range []struct {
		uses map[string]string
		want int
	}{
		{map[string]string{"n1": reps[0], "n2": reps[0], "n3": reps[0]}, 0},
		{map[string]string{"n1": reps[1], "n2": reps[1], "n3": reps[0]}, 1},
		{map[string]string{"n1": reps[1], "n2": reps[0]}, 0},
		{map[string]string{"n1": "", "n2": "198.18.0.9:7443", "n3": reps[1]}, 1},
	} {
		got, err := FailoverVictim(reps, c.uses)
		if err != nil || got != c.want {
			t.Errorf("FailoverVictim(%v) = %d, %v; want %d", c.uses, got, err, c.want)
		}
	}
	if got, err := FailoverVictim(reps, map[string]string{"n1": "", "n2": "10.0.0.1:7443"}); err == nil {
		t.Errorf("no agent on a replica: victim %d", got)
	}
}
