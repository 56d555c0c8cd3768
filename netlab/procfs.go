//go:build linux

package netlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// Tail returns the last n lines of the file at path.
func Tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	data = bytes.TrimRight(data, "\n")
	lines := bytes.Split(data, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// PIDAlive reports whether a process with this PID exists (and is not a zombie).
func PIDAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	if i := bytes.LastIndexByte(data, ')'); i >= 0 && i+2 < len(data) {
		return data[i+2] != 'Z'
	}
	return true
}

// Cmdline returns a process's arguments.
func Cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// ReadPIDFile reads a PID file.
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var pid int
	if _, err := fmt.Sscan(strings.TrimSpace(string(data)), &pid); err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: no PID in %q", path, data)
	}
	return pid, nil
}

// KillDatapath SIGKILLs pid if it is alive and is the datapath of device
// (its command line says so): a PID from a file is checked before use.
func KillDatapath(pid int, device string) error {
	if !PIDAlive(pid) || !IsDatapathOf(pid, device) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for PIDAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if PIDAlive(pid) {
		return fmt.Errorf("datapath pid %d survived SIGKILL", pid)
	}
	return nil
}

// IsDatapathOf reports whether pid runs `confmesh datapath --iface device`.
func IsDatapathOf(pid int, device string) bool {
	args := Cmdline(pid)
	hasDatapath := false
	for i, a := range args {
		if a == "datapath" {
			hasDatapath = true
		}
		if hasDatapath && a == "--iface" && i+1 < len(args) && args[i+1] == device {
			return true
		}
	}
	return false
}

// killPID SIGKILLs a process the lab owns.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
