//go:build linux

package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// stopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Process is a confmesh process the harness started in a network
// namespace (`ip netns exec NS confmesh ...`; ip execs the command, so the
// PID is confmesh's own). Its stdout and stderr go to Log.
type Process struct {
	Name string // what it is, for messages: "node-1 agent", "control plane"
	Log  string // log file path

	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// startProcess starts bin ARGS in the network namespace netns, appending its
// output to logPath.
func startProcess(name, logPath, netns, bin string, args ...string) (*Process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== %s: ip netns exec %s %s %s\n", time.Now().Format(time.RFC3339Nano), netns, bin, strings.Join(args, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", netns, bin}, args...)...)
	// An *os.File is handed to the child as is: Wait does not wait for a
	// copying goroutine that a detached grandchild (the datapath) could
	// keep alive.
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Process{Name: name, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig unless the process has already been reaped.
func (p *Process) Signal(sig syscall.Signal) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Wait waits at most timeout for the process to end.
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s (pid %d) still running after %s", p.Name, p.PID(), timeout)
	}
}

// Stop sends SIGTERM, waits (bounded) and then SIGKILLs. It reports
// whether the process had to be killed.
func (p *Process) Stop() error {
	if done, _ := p.Exited(); done {
		return nil
	}
	_ = p.Signal(syscall.SIGTERM)
	if err := p.Wait(stopTimeout); err == nil {
		return nil
	}
	_ = p.Signal(syscall.SIGKILL)
	if err := p.Wait(5 * time.Second); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.Name, p.PID(), stopTimeout)
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
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

// pidAlive reports whether a process with this PID exists (and is not a zombie).
func pidAlive(pid int) bool {
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

// cmdline returns a process's arguments.
func cmdline(pid int) []string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
}

// readPIDFile reads a PID file.
func readPIDFile(path string) (int, error) {
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

// killDatapath SIGKILLs pid if it is alive and is the datapath of device
// (its command line says so): a PID from a file is checked before use.
func killDatapath(pid int, device string) error {
	if !pidAlive(pid) || !isDatapathOf(pid, device) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	deadline := time.Now().Add(5 * time.Second)
	for pidAlive(pid) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if pidAlive(pid) {
		return fmt.Errorf("datapath pid %d survived SIGKILL", pid)
	}
	return nil
}

// isDatapathOf reports whether pid runs `confmesh datapath --iface device`.
func isDatapathOf(pid int, device string) bool {
	args := cmdline(pid)
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
