//go:build linux

package netlab

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// StopTimeout bounds how long Stop waits after SIGTERM before SIGKILL.
const StopTimeout = 10 * time.Second

// ProcessSpec describes a process to start inside a network namespace.
type ProcessSpec struct {
	Name  string   // what it is, for messages: "node-1 agent", "control plane"
	Log   string   // file its stdout and stderr are appended to
	NetNS string   // network namespace it runs in
	Argv  []string // program and arguments
	// OwnGroup starts it in a process group of its own, so that a Ctrl-C
	// in the caller's terminal reaches only the caller, which then stops
	// its processes in order (or leaves them running on purpose).
	OwnGroup bool
}

// Process is a process started in a network namespace (`ip netns exec NS
// PROGRAM ...`; ip execs the program, so the PID is the program's own).
type Process struct {
	Name string // what it is, for messages
	Log  string // log file path

	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// StartProcess starts s.Argv in s.NetNS, appending its output to s.Log.
func StartProcess(s ProcessSpec) (*Process, error) {
	if len(s.Argv) == 0 {
		return nil, fmt.Errorf("start %s: no program", s.Name)
	}
	f, err := os.OpenFile(s.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== %s: ip netns exec %s %s\n", time.Now().Format(time.RFC3339Nano), s.NetNS, strings.Join(s.Argv, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", s.NetNS}, s.Argv...)...)
	// An *os.File is handed to the child as is: Wait does not wait for a
	// copying goroutine that a detached grandchild (the datapath) could
	// keep alive.
	cmd.Stdout, cmd.Stderr = f, f
	if s.OwnGroup {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", s.Name, err)
	}
	p := &Process{Name: s.Name, Log: s.Log, cmd: cmd, done: make(chan struct{})}
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
	if err := p.Wait(StopTimeout); err == nil {
		return nil
	}
	_ = p.Signal(syscall.SIGKILL)
	if err := p.Wait(5 * time.Second); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) ignored SIGTERM for %s and was killed", p.Name, p.PID(), StopTimeout)
}
