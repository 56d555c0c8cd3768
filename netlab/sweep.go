//go:build linux

package netlab

import (
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// WireGuardSocketDir is where userspace WireGuard devices keep their UAPI
// sockets (one directory for every network namespace).
const WireGuardSocketDir = "/var/run/wireguard"

// runIDOf extracts the run ID from a name of this family
// ("cme2e-1a2b-..." -> "1a2b").
func (rs Runs) runIDOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, rs.NamePrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "-")
	if !ok || len(id) != 4 {
		return "", false
	}
	if _, err := hex.DecodeString(id); err != nil {
		return "", false
	}
	return id, true
}

// Alive reports whether the run with this ID still holds its lock (its
// process is running).
func (rs Runs) Alive(id string) bool { return rs.alive(id) }

// alive reports whether the run with this ID still holds its lock.
func (rs Runs) alive(id string) bool {
	f, err := os.OpenFile(filepath.Join(rs.LockDir, id+".lock"), os.O_RDWR, 0)
	if err != nil {
		return false // no lock file: the run is gone
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false
}

// Sweep removes what ended runs of this family left behind: processes
// whose command line names the family's prefix (agents, datapaths, control
// planes), processes inside its network namespaces, the namespaces,
// WireGuard UAPI sockets and temporary directories named with the prefix,
// and stale lock files. self, if not nil, is the caller's own live run. It
// returns what it removed.
func (rs Runs) Sweep(self *Run) (removed []string, errs []error) {
	dead := func(name string) bool {
		id, ok := rs.runIDOf(name)
		if !ok || (self != nil && id == self.ID) {
			return false
		}
		return !rs.alive(id)
	}
	kill := func(pid int, why string) {
		if pid == os.Getpid() || !PIDAlive(pid) {
			return
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err == nil {
			removed = append(removed, fmt.Sprintf("process %d (%s)", pid, why))
		}
	}
	// Processes that name a dead run's prefix in their arguments.
	procs, _ := os.ReadDir("/proc")
	for _, d := range procs {
		var pid int
		if _, err := fmt.Sscan(d.Name(), &pid); err != nil {
			continue
		}
		for _, a := range Cmdline(pid) {
			if i := strings.Index(a, rs.NamePrefix); i >= 0 && dead(a[i:]) {
				kill(pid, strings.Join(Cmdline(pid), " "))
				break
			}
		}
	}
	// Namespaces: what still runs inside, then the namespace.
	entries, _ := os.ReadDir(NetnsDir)
	for _, e := range entries {
		if !dead(e.Name()) {
			continue
		}
		for _, pid := range NetnsPIDs(e.Name()) {
			kill(pid, "in netns "+e.Name())
		}
		if err := DelNetns(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns "+e.Name())
	}
	// UAPI sockets of datapaths that are gone.
	socks, _ := os.ReadDir(WireGuardSocketDir)
	for _, s := range socks {
		if !strings.HasSuffix(s.Name(), ".sock") || !dead(s.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(WireGuardSocketDir, s.Name())); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "socket "+filepath.Join(WireGuardSocketDir, s.Name()))
	}
	// Temporary directories (binaries, state, logs: Run.TempDir).
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), rs.NamePrefix+"*"))
	for _, d := range dirs {
		if dead(filepath.Base(d)) {
			if err := os.RemoveAll(d); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, "directory "+d)
		}
	}
	// Lock files of ended runs.
	locks, _ := os.ReadDir(rs.LockDir)
	for _, l := range locks {
		id, ok := strings.CutSuffix(l.Name(), ".lock")
		if ok && len(id) == 4 && (self == nil || id != self.ID) && !rs.alive(id) {
			os.Remove(filepath.Join(rs.LockDir, l.Name()))
		}
	}
	return removed, errs
}
