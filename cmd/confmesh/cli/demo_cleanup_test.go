//go:build linux

package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

func TestDecideCleanup(t *testing.T) {
	const me = 1000
	run := func(id string, owner int) *demoState {
		return &demoState{Run: id, OwnerUID: owner, Owner: fmt.Sprint(owner), DemoPID: 42}
	}
	for _, tc := range []struct {
		name   string
		v      runView
		target string
		all    bool
		remove bool
		why    string
	}{
		{"mine, ended, named", runView{state: run("aaaa", me)}, "aaaa", false, true, ""},
		{"mine, ended, --all", runView{state: run("aaaa", me)}, "", true, true, ""},
		{"mine, another run named", runView{state: run("aaaa", me)}, "bbbb", false, false, "not the run asked for"},
		{"another user's, named", runView{state: run("aaaa", 1001)}, "aaaa", false, false, "not by you"},
		{"another user's, --all", runView{state: run("aaaa", 0)}, "", true, false, "started by 0 (uid 0), not by you"},
		{"mine, still running", runView{state: run("aaaa", me), alive: true}, "", true, false, "still running (confmesh demo pid 42)"},
		{"mine, a foreign process inside", runView{state: run("aaaa", me), foreign: []string{"pid 7 (bash) in cmdemo-aaaa-1-n1"}}, "aaaa", false, false, "pid 7 (bash)"},
		{"no record", runView{loadErr: os.ErrNotExist}, "", true, false, "whose it is is unknown"},
	} {
		v := decideCleanup(tc.v, me, tc.target, tc.all)
		if v.remove != tc.remove || !strings.Contains(v.why, tc.why) {
			t.Errorf("%s: remove=%v why=%q; want remove=%v why containing %q", tc.name, v.remove, v.why, tc.remove, tc.why)
		}
	}
}

// TestDemoCleanupOwnership: on a machine holding four demo runs (in a
// private TMPDIR), `confmesh demo --cleanup --all` removes only the ended
// run of this user, and leaves alone, naming each: another user's run, a
// run whose demo still runs, and a run of ours with a process inside that
// is not the demo's. `--cleanup RUN` of another user's run refuses (exit
// 1) and removes nothing.
func TestDemoCleanupOwnership(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the runs have network namespaces")
	}
	t.Setenv("TMPDIR", t.TempDir())
	t.Setenv("SUDO_UID", "")
	me, _ := invokingUser()

	// newRun records a run with one node namespace and returns it; the
	// lock is released unless keepLock (a demo still running).
	newRun := func(owner int, keepLock bool) *demoState {
		r, err := demoRuns.Start()
		if err != nil {
			t.Fatal(err)
		}
		if keepLock {
			t.Cleanup(r.Release)
		} else {
			r.Release()
		}
		dir, err := r.TempDir("state")
		if err != nil {
			t.Fatal(err)
		}
		s := &demoState{Run: r.ID, RunPrefix: r.Prefix, Prefix: r.Prefix + "1", OwnerUID: owner, Owner: fmt.Sprintf("user%d", owner),
			DemoPID: os.Getpid(), Started: time.Now(), Dir: dir, Bin: filepath.Join(dir, "no-such-confmesh")}
		ns := s.Prefix + "-n1"
		if err := netlab.AddNetns(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netlab.DelNetns(ns) })
		s.Namespaces = []string{ns}
		s.Nodes = []stateNode{{Name: "node-1", NS: ns, Device: s.Prefix + "n1", StateDir: filepath.Join(dir, "n1"), Role: "honest"}}
		if err := s.save(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	// startIn starts a long-lived process (cat on an open pipe) in netns,
	// stopped by PID at the end of the test.
	startIn := func(netns string) *exec.Cmd {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, "cat")
		if _, err := cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			cancel()
		})
		if err := netlab.Eventually(10*time.Second, 20*time.Millisecond, func() error {
			if len(netlab.NetnsPIDs(netns)) == 0 {
				return netlab.ErrNotYet
			}
			return nil
		}); err != nil {
			t.Fatalf("process in %s: %v", netns, err)
		}
		return cmd
	}

	other := newRun(me+4242, false)
	running := newRun(me, true)
	intruded := newRun(me, false)
	startIn(intruded.Namespaces[0]) // not recorded: not the demo's
	stale := newRun(me, false)
	agent := startIn(stale.Namespaces[0])
	stale.Processes = []stateProc{{PID: agent.Process.Pid, Start: procStart(agent.Process.Pid), What: "node-1 agent"}}
	if err := stale.save(); err != nil {
		t.Fatal(err)
	}

	exists := func(s *demoState) bool {
		_, err1 := os.Stat(s.Dir)
		_, err2 := os.Stat(filepath.Join(netlab.NetnsDir, s.Namespaces[0]))
		return err1 == nil && err2 == nil
	}

	// Another user's run, named: refused, untouched.
	var out, errb bytes.Buffer
	if code := demoCleanupExit(t, &out, &errb, other.Run); code != ExitRejected || !strings.Contains(out.String(), "not by you") || !exists(other) {
		t.Errorf("--cleanup %s (another user's): exit %d, out %q, err %q; want exit 1 naming the owner, run kept", other.Run, code, out.String(), errb.String())
	}

	out.Reset()
	errb.Reset()
	if code := demoCleanupExit(t, &out, &errb, "", "--all"); code != 0 {
		t.Fatalf("--cleanup --all: exit %d\n%s%s", code, out.String(), errb.String())
	}
	text := out.String()
	t.Logf("confmesh demo --cleanup --all:\n%s", text)
	for _, c := range []struct {
		s    *demoState
		want string
	}{
		{other, fmt.Sprintf("left alone: run %s (%s): started by user%d (uid %d), not by you", other.Run, other.Dir, me+4242, me+4242)},
		{running, fmt.Sprintf("left alone: run %s (%s): still running", running.Run, running.Dir)},
		{intruded, fmt.Sprintf("left alone: run %s (%s): processes that are not the demo's run in it: pid ", intruded.Run, intruded.Dir)},
	} {
		if !strings.Contains(text, c.want) {
			t.Errorf("--cleanup --all does not say %q", c.want)
		}
		if !exists(c.s) {
			t.Errorf("run %s was removed: %s", c.s.Run, c.want)
		}
	}
	if !strings.Contains(text, "removed run "+stale.Run) || exists(stale) {
		t.Errorf("the ended run %s of ours was not removed", stale.Run)
	}
	if err := netlab.Eventually(10*time.Second, 20*time.Millisecond, func() error {
		if netlab.PIDAlive(agent.Process.Pid) && procStart(agent.Process.Pid) == stale.Processes[0].Start {
			return netlab.ErrNotYet
		}
		return nil
	}); err != nil {
		t.Errorf("the removed run's process %d still runs", agent.Process.Pid)
	}
}

// demoCleanupExit runs `confmesh demo --cleanup ARGS` in this process.
func demoCleanupExit(t *testing.T, out, errb *bytes.Buffer, args ...string) int {
	t.Helper()
	a := []string{"demo", "--cleanup"}
	for _, x := range args {
		if x != "" {
			a = append(a, x)
		}
	}
	return Execute(a, out, errb)
}
