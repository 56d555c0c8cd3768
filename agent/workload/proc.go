package workload

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// NetNSID identifies a network namespace: the device and inode of its nsfs
// file (/proc/<pid>/ns/net, or a bind mount of it such as the one the
// container runtime hands the CNI plugin).
type NetNSID struct {
	Dev uint64
	Ino uint64
}

func (n NetNSID) String() string { return fmt.Sprintf("net:[%d] (dev %d)", n.Ino, n.Dev) }

// Proc reads what caller identification needs from the process table. The
// real one reads /proc; tests inject their own to exercise the PID-reuse
// guard.
type Proc interface {
	// StartTime returns the process's start time (field 22 of
	// /proc/<pid>/stat, clock ticks since boot). It fails once the process
	// is gone.
	StartTime(pid int32) (uint64, error)
	// NetNS returns the network namespace of the process.
	NetNS(pid int32) (NetNSID, error)
	// NetNSOfPath returns the network namespace a path (a netns bind mount
	// or a /proc/<pid>/ns/net link) refers to.
	NetNSOfPath(path string) (NetNSID, error)
}

// HostProc reads the real /proc.
type HostProc struct {
	// Root is the proc mount; "/proc" when empty.
	Root string
}

func (p HostProc) root() string {
	if p.Root == "" {
		return "/proc"
	}
	return p.Root
}

// StartTime implements Proc.
func (p HostProc) StartTime(pid int32) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("pid %d is not a process", pid)
	}
	data, err := os.ReadFile(filepath.Join(p.root(), strconv.Itoa(int(pid)), "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
			return 0, fmt.Errorf("process %d is gone", pid)
		}
		return 0, err
	}
	return parseStartTime(string(data))
}

// parseStartTime extracts field 22 (starttime) of a /proc/<pid>/stat line.
// Field 2 (comm) is in parentheses and may itself contain spaces and
// parentheses, so the fields are counted from the last ')'.
func parseStartTime(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat: no ')' after comm")
	}
	fields := strings.Fields(stat[i+1:])
	// fields[0] is field 3 (state), so field 22 is fields[19].
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("malformed /proc stat: %d fields after comm, want more than %d", len(fields), idx)
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("malformed /proc stat: start time %q: %w", fields[idx], err)
	}
	return v, nil
}

// NetNS implements Proc.
func (p HostProc) NetNS(pid int32) (NetNSID, error) {
	if pid <= 0 {
		return NetNSID{}, fmt.Errorf("pid %d is not a process", pid)
	}
	return p.NetNSOfPath(filepath.Join(p.root(), strconv.Itoa(int(pid)), "ns", "net"))
}

// NetNSOfPath implements Proc.
func (HostProc) NetNSOfPath(path string) (NetNSID, error) {
	if path == "" {
		return NetNSID{}, errors.New("no network namespace path")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return NetNSID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return NetNSID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}
