//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Every name the harness creates (network namespaces, WireGuard devices and
// so their UAPI sockets, the control plane's --sim-name) starts with
// namePrefix + a run ID + "-". The run ID is 4 hex digits: a WireGuard
// device name is at most 15 bytes, and "cme2e-1a2b-" + cluster ID (2) +
// node number (1-2) fits.
//
// A run holds an exclusive flock on runDir/<run ID>.lock while it lives,
// so the sweep at the start of the next run removes exactly the leftovers
// of runs that have ended (crashed, killed, timed out) and never touches a
// run that is still going, nor anything without the prefix.
const (
	namePrefix = "cme2e-"
	runDir     = "/run/cme2e"
	wgSockDir  = "/var/run/wireguard"
)

var (
	runOnce   sync.Once
	runPrefix string // namePrefix + run ID + "-"
	runLock   *os.File
	runErr    error
)

// RunPrefix is this run's name prefix, e.g. "cme2e-1a2b-". The first call
// takes the run's lock.
func RunPrefix() (string, error) {
	runOnce.Do(func() {
		if runErr = os.MkdirAll(runDir, 0o700); runErr != nil {
			return
		}
		for range 100 {
			var b [2]byte
			if _, runErr = rand.Read(b[:]); runErr != nil {
				return
			}
			id := hex.EncodeToString(b[:])
			f, err := os.OpenFile(filepath.Join(runDir, id+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
			if err != nil {
				runErr = err
				return
			}
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
				f.Close() // a live run has this ID
				continue
			}
			runLock, runPrefix = f, namePrefix+id+"-"
			return
		}
		runErr = fmt.Errorf("no free run ID in %s after 100 tries", runDir)
	})
	return runPrefix, runErr
}

// releaseRun drops the run lock (TestMain, at exit).
func releaseRun() {
	if runLock != nil {
		os.Remove(runLock.Name())
		runLock.Close()
	}
}

// runIDOf extracts the run ID from a harness name ("cme2e-1a2b-..." -> "1a2b").
func runIDOf(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, namePrefix)
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

// runAlive reports whether the run with this ID still holds its lock.
func runAlive(id string) bool {
	if runPrefix == namePrefix+id+"-" {
		return true
	}
	f, err := os.OpenFile(filepath.Join(runDir, id+".lock"), os.O_RDWR, 0)
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

// Sweep removes what ended harness runs left behind: processes whose
// command line names a harness prefix (agents, datapaths, control planes),
// processes inside a harness network namespace, the namespaces, WireGuard
// UAPI sockets named with the prefix and the binary's build directory. It
// returns what it removed.
func Sweep() (removed []string, errs []error) {
	dead := func(name string) bool {
		id, ok := runIDOf(name)
		return ok && !runAlive(id)
	}
	kill := func(pid int, why string) {
		if pid == os.Getpid() || !pidAlive(pid) {
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
		for _, a := range cmdline(pid) {
			if i := strings.Index(a, namePrefix); i >= 0 && dead(a[i:]) {
				kill(pid, strings.Join(cmdline(pid), " "))
				break
			}
		}
	}
	// Namespaces: what still runs inside, then the namespace.
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if !dead(e.Name()) {
			continue
		}
		for _, pid := range netnsPIDs(e.Name()) {
			kill(pid, "in netns "+e.Name())
		}
		if err := delNetns(e.Name()); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "netns "+e.Name())
	}
	// UAPI sockets of datapaths that are gone.
	socks, _ := os.ReadDir(wgSockDir)
	for _, s := range socks {
		if !strings.HasSuffix(s.Name(), ".sock") || !dead(s.Name()) {
			continue
		}
		if err := os.Remove(filepath.Join(wgSockDir, s.Name())); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, "socket "+filepath.Join(wgSockDir, s.Name()))
	}
	// Binary directories of ended runs (Binary names them with the prefix).
	bins, _ := filepath.Glob(filepath.Join(os.TempDir(), namePrefix+"*-bin-*"))
	for _, b := range bins {
		if dead(filepath.Base(b)) {
			if err := os.RemoveAll(b); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, "directory "+b)
		}
	}
	// Lock files of ended runs.
	locks, _ := os.ReadDir(runDir)
	for _, l := range locks {
		id, ok := strings.CutSuffix(l.Name(), ".lock")
		if ok && len(id) == 4 && !runAlive(id) {
			os.Remove(filepath.Join(runDir, l.Name()))
		}
	}
	return removed, errs
}
