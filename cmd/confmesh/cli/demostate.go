//go:build linux

package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// demoStateFile is the record each demo run keeps in its state directory:
// who started it, what it is called, and everything `demo exec` and
// `demo --cleanup` need to find and remove it.
const demoStateFile = "demo.json"

// demoState is a run's record. It is written when the run starts and
// rewritten as it grows, so a crashed run can be cleaned up too.
type demoState struct {
	Run       string    `json:"run"`       // run ID, e.g. "1a2b"
	RunPrefix string    `json:"runPrefix"` // "cmdemo-1a2b-"
	Prefix    string    `json:"prefix"`    // the cluster's name prefix, "cmdemo-1a2b-1"
	OwnerUID  int       `json:"ownerUID"`  // the user who started it (SUDO_UID under sudo)
	Owner     string    `json:"owner"`
	DemoPID   int       `json:"demoPID"` // the `confmesh demo` process
	Started   time.Time `json:"started"`
	Kept      bool      `json:"kept"` // --keep and every step held
	Dir       string    `json:"dir"`
	Bin       string    `json:"bin"`
	Underlay  string    `json:"underlay"`
	Bridge    string    `json:"bridge"`

	TrustDomain string      `json:"trustDomain,omitempty"`
	Nodes       []stateNode `json:"nodes"`
	Pods        []statePod  `json:"pods"`
	Namespaces  []string    `json:"namespaces"`
	Processes   []stateProc `json:"processes"`
	Admin       []string    `json:"admin"` // `confmesh nodes` flags that reach the control plane
}

type stateNode struct {
	Name           string `json:"name"`
	NS             string `json:"netns"`
	Device         string `json:"device"`
	IP             string `json:"ip"`
	StateDir       string `json:"stateDir"`
	Socket         string `json:"socket"`
	WorkloadSocket string `json:"workloadSocket"`
	Role           string `json:"role"` // "honest", "rogue (refused)", "revoked"
}

type statePod struct {
	Name           string `json:"name"` // node-1/frontend
	Node           string `json:"node"`
	NS             string `json:"netns"`
	Namespace      string `json:"namespace"`
	PodName        string `json:"podName"`
	ServiceAccount string `json:"serviceAccount"`
	IP             string `json:"ip"`
	SPIFFEID       string `json:"spiffeID,omitempty"`
	WorkloadSocket string `json:"workloadSocket"`
}

type stateProc struct {
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // field 22 of /proc/<pid>/stat: guards against PID reuse
	What  string `json:"what"`
}

// invokingUser is the user on whose behalf this process runs: the one who
// ran sudo, when root came from sudo.
func invokingUser() (int, string) {
	uid := os.Getuid()
	if uid == 0 {
		if s, err := strconv.Atoi(os.Getenv("SUDO_UID")); err == nil {
			uid = s
		}
	}
	name := strconv.Itoa(uid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	return uid, name
}

// procStart is the start time (clock ticks since boot) of pid, 0 if gone.
func procStart(pid int) uint64 {
	f := procStatFields(pid)
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// procParent is pid's parent, 0 if unknown.
func procParent(pid int) int {
	f := procStatFields(pid)
	if len(f) < 2 {
		return 0
	}
	v, _ := strconv.Atoi(f[1])
	return v
}

// procStatFields are the fields of /proc/PID/stat after the command name
// (which may hold spaces and parentheses): field 3 of proc(5) is [0].
func procStatFields(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

func (s *demoState) save() error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(s.Dir, "."+demoStateFile)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(s.Dir, demoStateFile))
}

// demoRunDirs lists the state directories of demo runs on this machine
// (the run's TempDir "state").
func demoRunDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), demoRuns.NamePrefix+"*-state-*"))
	sort.Strings(dirs)
	return dirs
}

// loadDemoState reads a run's record from its state directory.
func loadDemoState(dir string) (*demoState, error) {
	data, err := os.ReadFile(filepath.Join(dir, demoStateFile))
	if err != nil {
		return nil, err
	}
	var s demoState
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, demoStateFile), err)
	}
	if s.Run == "" || !strings.HasPrefix(s.Prefix, demoRuns.NamePrefix+s.Run+"-") || s.RunPrefix != demoRuns.NamePrefix+s.Run+"-" {
		return nil, fmt.Errorf("%s: not a demo record (run %q, prefix %q)", filepath.Join(dir, demoStateFile), s.Run, s.Prefix)
	}
	return &s, nil
}

// runView is what cleanup knows of one run on this machine.
type runView struct {
	dir     string
	state   *demoState // nil: no readable record
	loadErr error
	alive   bool     // its `confmesh demo` still holds the run lock
	foreign []string // live processes in its namespaces that are not the run's
}

// cleanupVerdict says what cleanup does with one run.
type cleanupVerdict struct {
	remove bool
	why    string // why it is left alone
}

// decideCleanup is the pure rule of `demo --cleanup`: remove a run only if
// its record says this user started it, the run's demo process has ended,
// and nothing alive in its namespaces is foreign to it. target is a run ID
// ("" with all: every run of ours).
func decideCleanup(v runView, me int, target string, all bool) cleanupVerdict {
	if v.state == nil {
		return cleanupVerdict{why: fmt.Sprintf("no readable record (%v): whose it is is unknown", v.loadErr)}
	}
	s := v.state
	if !all && target != s.Run {
		return cleanupVerdict{why: "not the run asked for"}
	}
	if s.OwnerUID != me {
		return cleanupVerdict{why: fmt.Sprintf("started by %s (uid %d), not by you", s.Owner, s.OwnerUID)}
	}
	if v.alive {
		return cleanupVerdict{why: fmt.Sprintf("still running (confmesh demo pid %d)", s.DemoPID)}
	}
	if len(v.foreign) > 0 {
		return cleanupVerdict{why: "processes that are not the demo's run in it: " + strings.Join(v.foreign, "; ") + " (end them first)"}
	}
	return cleanupVerdict{remove: true}
}

// viewRun gathers what decideCleanup needs about the run in dir.
func viewRun(dir string) runView {
	v := runView{dir: dir}
	v.state, v.loadErr = loadDemoState(dir)
	if v.state == nil {
		return v
	}
	v.alive = demoRuns.Alive(v.state.Run)
	v.foreign = foreignProcesses(v.state)
	return v
}

// runNamespaces is every network namespace of the run: those recorded and
// any other named with its cluster prefix.
func runNamespaces(s *demoState) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range s.Namespaces {
		if strings.HasPrefix(n, s.Prefix) && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	entries, _ := os.ReadDir(netlab.NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), s.Prefix) && !seen[e.Name()] {
			seen[e.Name()] = true
			out = append(out, e.Name())
		}
	}
	return out
}

// ours reports whether pid is one of the run's processes: recorded (same
// start time), a descendant of one, or running the run's binary with the
// run's prefix in its arguments (a datapath whose agent is gone).
func (s *demoState) ours(pid int) bool {
	rec := map[int]uint64{}
	for _, p := range s.Processes {
		rec[p.PID] = p.Start
	}
	for p, depth := pid, 0; p > 1 && depth < 64; p, depth = procParent(p), depth+1 {
		if st, ok := rec[p]; ok && st == procStart(p) {
			return true
		}
	}
	args := netlab.Cmdline(pid)
	if len(args) > 0 {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		exe = strings.TrimSuffix(exe, " (deleted)")
		if exe == s.Bin {
			for _, a := range args[1:] {
				if strings.Contains(a, s.Prefix) {
					return true
				}
			}
		}
	}
	return false
}

// foreignProcesses names live processes in the run's namespaces that are
// not the run's.
func foreignProcesses(s *demoState) []string {
	var out []string
	for _, ns := range runNamespaces(s) {
		for _, pid := range netlab.NetnsPIDs(ns) {
			if !s.ours(pid) {
				out = append(out, fmt.Sprintf("pid %d (%s) in %s", pid, strings.Join(netlab.Cmdline(pid), " "), ns))
			}
		}
	}
	return out
}

// removeRun tears a stopped run down from its record: its processes (by
// PID, checked), `confmesh agent cleanup` on each node, its namespaces,
// UAPI sockets and state directory. It returns what it removed.
func removeRun(s *demoState) (removed []string, errs []error) {
	var pids []int
	for _, p := range s.Processes {
		if netlab.PIDAlive(p.PID) && procStart(p.PID) == p.Start {
			pids = append(pids, p.PID)
		}
	}
	namespaces := runNamespaces(s)
	for _, ns := range namespaces {
		for _, pid := range netlab.NetnsPIDs(ns) {
			if s.ours(pid) {
				pids = append(pids, pid)
			}
		}
	}
	pids = uniqueInts(pids)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for netlab.PIDAlive(pid) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if netlab.PIDAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		removed = append(removed, fmt.Sprintf("process %d", pid))
	}
	if _, err := os.Stat(s.Bin); err == nil {
		for _, n := range s.Nodes {
			if _, err := os.Stat(filepath.Join(netlab.NetnsDir, n.NS)); err != nil {
				continue
			}
			if _, err := netlab.Exec("ip", "netns", "exec", n.NS, s.Bin, "agent", "cleanup", "--device", n.Device, "--state-dir", n.StateDir); err != nil {
				errs = append(errs, fmt.Errorf("%s: confmesh agent cleanup: %v", n.Name, err))
			}
		}
	}
	for i := len(namespaces) - 1; i >= 0; i-- {
		for _, pid := range netlab.NetnsPIDs(namespaces[i]) {
			if s.ours(pid) { // a datapath cleanup left
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if err := netlab.DelNetns(namespaces[i]); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns "+namespaces[i])
	}
	for _, n := range s.Nodes {
		sock := filepath.Join(netlab.WireGuardSocketDir, n.Device+".sock")
		if err := os.Remove(sock); err == nil {
			removed = append(removed, "socket "+sock)
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		errs = append(errs, err)
	} else {
		removed = append(removed, "directory "+s.Dir)
	}
	return removed, errs
}

func uniqueInts(xs []int) []int {
	sort.Ints(xs)
	out := xs[:0]
	for i, x := range xs {
		if i == 0 || x != xs[i-1] {
			out = append(out, x)
		}
	}
	return out
}

// errNoRun is returned when no kept run of this user is found.
var errNoRun = errors.New("no demo run of yours is kept on this machine (start one with: confmesh demo --keep)")

// findKeptRun returns this user's kept run with ID id, or the only one
// when id is empty.
func findKeptRun(id string) (*demoState, error) {
	me, _ := invokingUser()
	var mine []*demoState
	for _, dir := range demoRunDirs() {
		s, err := loadDemoState(dir)
		if err != nil || s.OwnerUID != me || !s.Kept {
			continue
		}
		if id != "" && s.Run == id {
			return s, nil
		}
		mine = append(mine, s)
	}
	if id != "" {
		return nil, fmt.Errorf("no kept demo run %q of yours (confmesh demo --cleanup lists them)", id)
	}
	switch len(mine) {
	case 0:
		return nil, errNoRun
	case 1:
		return mine[0], nil
	}
	ids := make([]string, len(mine))
	for i, s := range mine {
		ids[i] = s.Run
	}
	return nil, fmt.Errorf("you keep %d demo runs (%s): name one with --run ID", len(mine), strings.Join(ids, ", "))
}
