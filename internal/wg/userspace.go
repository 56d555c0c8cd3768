package wg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// socketDir is where wireguard-go serves UAPI sockets and the only place
// wgctrl's userspace backend looks (see datapath.DefaultSocketDir).
const socketDir = "/var/run/wireguard"

func socketPath(name string) string { return filepath.Join(socketDir, name+".sock") }

// userspaceBackend is the `confmesh datapath` process: wireguard-go over a
// TUN link, configured through its UAPI socket.
type userspaceBackend struct {
	nl  *netlink.Handle
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	known int    // PID serving the socket, as last seen
	child *child // set when this backend started the process
}

// child is a datapath this process started. It runs in its own process
// group and does not die with us; the goroutine in start only reaps it if it exits
// while we are still here.
type child struct {
	pid  int
	done chan struct{}
	err  error // exit status, valid once done is closed
}

func (u *userspaceBackend) kind() Kind { return Userspace }

func (u *userspaceBackend) pid() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.known
}

func (u *userspaceBackend) setPID(pid int) {
	u.mu.Lock()
	u.known = pid
	u.mu.Unlock()
}

// adopt takes over a datapath that serves Name's socket with its TUN link in
// this network namespace. A live socket without the link here belongs to a
// datapath in another namespace and is an error. A TUN link without a live
// socket is a datapath that is exiting (its socket closed first): wait for
// the link to go.
func (u *userspaceBackend) adopt(ctx context.Context) (bool, error) {
	sock := socketPath(u.cfg.Name)
	live, pid, err := probeSocket(sock)
	if err != nil {
		return false, err
	}
	link, err := u.link()
	if err != nil {
		return false, err
	}
	if live {
		if link == nil {
			return false, fmt.Errorf("%s is served by a datapath (pid %d) but there is no link %s in this network namespace: the name is taken elsewhere", sock, pid, u.cfg.Name)
		}
		if link.Type() != "tuntap" {
			return false, fmt.Errorf("%s is served by a datapath but link %s is a %s, not a TUN", sock, u.cfg.Name, link.Type())
		}
		if pid == 0 {
			pid = u.pidFromFile()
		}
		u.setPID(pid)
		return true, nil
	}
	if link == nil || link.Type() != "tuntap" {
		return false, nil
	}
	err = poll(ctx, 3*time.Second, func() (bool, error) {
		l, err := u.link()
		return l == nil, err
	})
	if err != nil {
		return false, fmt.Errorf("TUN link %s exists but no datapath answers on %s (a hung datapath?): %w", u.cfg.Name, sock, err)
	}
	return false, nil
}

// create starts DatapathCommand detached, or with no command waits for an
// externally managed datapath, until the socket answers and the link is
// there.
func (u *userspaceBackend) create(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	sock := socketPath(u.cfg.Name)
	up := func() (bool, error) {
		live, pid, err := probeSocket(sock)
		if err != nil || !live {
			return false, err
		}
		l, err := u.link()
		if l != nil {
			u.setPID(pid)
		}
		return l != nil, err
	}

	if len(u.cfg.DatapathCommand) == 0 {
		u.log.Info("no datapath command: waiting for an externally managed datapath", "socket", sock)
		if err := poll(ctx, startTimeout, up); err != nil {
			return fmt.Errorf("no datapath serves %s (DatapathCommand is empty, so one must be started elsewhere): %w", sock, err)
		}
		if u.pid() == 0 {
			u.setPID(u.pidFromFile())
		}
		return nil
	}

	c, err := u.start()
	if err != nil {
		return err
	}
	u.log.Info("started userspace datapath", "pid", c.pid, "command", u.cfg.DatapathCommand)
	err = poll(ctx, startTimeout, func() (bool, error) {
		select {
		case <-c.done:
			return false, fmt.Errorf("datapath exited before serving its socket: %v%s", c.err, u.logHint())
		default:
		}
		return up()
	})
	if err != nil {
		if c.running() {
			_ = unix.Kill(c.pid, unix.SIGKILL)
			waitDone(c.done, 2*time.Second)
		}
		return fmt.Errorf("datapath (pid %d) on %s: %w", c.pid, sock, err)
	}
	if pid := u.pid(); pid != c.pid && pid != 0 {
		u.log.Warn("socket served by another process than the one started", "started", c.pid, "serving", pid)
	}
	return nil
}

// start runs the datapath in a process group of its own with stdin on
// /dev/null and stdout/stderr on DatapathLog, so neither our exit nor the
// signals a terminal sends our group (Ctrl-C) reach it; the datapath ignores
// SIGHUP. It stays in our session on purpose: on a host whose processes run
// in the root cgroup the kernel's autogroup scheduler gives every session a
// CPU share of its own, and a datapath in a session of its own competed with
// the workloads it carries as a separate group (twice the context switches
// per GB and about 0.8x the throughput of stock wireguard-go in
// `confmesh bench throughput`; docs/benchmarks.md). It is forked from the
// calling thread and so inherits the caller's network namespace.
func (u *userspaceBackend) start() (*child, error) {
	out, err := u.openLog()
	if err != nil {
		return nil, err
	}
	defer out.Close()
	argv := u.cfg.DatapathCommand
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start datapath: %w", err)
	}
	c := &child{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	u.mu.Lock()
	u.child = c
	u.mu.Unlock()
	return c, nil
}

func (u *userspaceBackend) openLog() (*os.File, error) {
	if u.cfg.DatapathLog == "" {
		return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	}
	f, err := os.OpenFile(u.cfg.DatapathLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("datapath log: %w", err)
	}
	return f, nil
}

func (u *userspaceBackend) logHint() string {
	if u.cfg.DatapathLog == "" {
		return " (set DatapathLog to keep its output)"
	}
	return "; its output is in " + u.cfg.DatapathLog
}

func (u *userspaceBackend) alive() error {
	live, pid, err := probeSocket(socketPath(u.cfg.Name))
	if err != nil {
		return err
	}
	if !live {
		return fmt.Errorf("datapath (pid %d) does not answer on %s", u.pid(), socketPath(u.cfg.Name))
	}
	if pid != 0 {
		u.setPID(pid)
	}
	return nil
}

// destroy sends SIGTERM to the datapath and waits until the process, its
// socket and its link are gone; after stopTimeout it sends SIGKILL.
func (u *userspaceBackend) destroy(ctx context.Context) error {
	sock := socketPath(u.cfg.Name)
	live, pid, err := probeSocket(sock)
	if err != nil {
		return err
	}
	if !live {
		l, err := u.link()
		if err != nil {
			return err
		}
		if l == nil {
			return removeStaleSocket(sock)
		}
	}
	if pid == 0 {
		pid = u.pidFromFile()
	}
	if pid == 0 {
		return fmt.Errorf("cannot tell which process serves %s (no peer credentials, no usable PID file)", sock)
	}
	if err := unix.Kill(pid, unix.SIGTERM); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("SIGTERM datapath (pid %d): %w", pid, err)
	}
	gone := func() (bool, error) {
		if !u.processGone(pid) {
			return false, nil
		}
		if _, err := os.Lstat(sock); err == nil {
			return false, nil
		}
		l, err := u.link()
		return l == nil, err
	}
	if err := poll(ctx, stopTimeout, gone); err == nil {
		return nil
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	_ = poll(context.Background(), 2*time.Second, gone)
	if err := removeStaleSocket(sock); err != nil {
		return err
	}
	return fmt.Errorf("datapath (pid %d) did not exit within %s of SIGTERM; sent SIGKILL", pid, stopTimeout)
}

// link returns Name's link in this namespace, nil if there is none.
func (u *userspaceBackend) link() (netlink.Link, error) {
	l, err := u.nl.LinkByName(u.cfg.Name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up link %s: %w", u.cfg.Name, err)
	}
	return l, nil
}

// processGone reports whether pid has exited, all its threads included (so
// its TUN and socket are closed). For a child we started, that is when Wait
// returned. Another's exited process may linger as a zombie until its parent
// reaps it; it counts as gone once no thread but the zombie leader is left
// (a leader whose other threads still run is already a zombie while they
// close its files).
func (u *userspaceBackend) processGone(pid int) bool {
	u.mu.Lock()
	c := u.child
	u.mu.Unlock()
	if c != nil && c.pid == pid {
		return !c.running()
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	// The state is field 3, after the parenthesised command name.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) || (b[i+2] != 'Z' && b[i+2] != 'X') {
		return false
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	return err != nil || len(tasks) <= 1
}

// pidFromFile reads PIDFile and returns the PID only if that process's
// command line names this device, so a stale file cannot point a signal at
// an unrelated process that reused the PID.
func (u *userspaceBackend) pidFromFile() int {
	if u.cfg.PIDFile == "" {
		return 0
	}
	b, err := os.ReadFile(u.cfg.PIDFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if !slices.Contains(args, u.cfg.Name) && !slices.Contains(args, "--iface="+u.cfg.Name) {
		return 0
	}
	return pid
}

func (c *child) running() bool {
	select {
	case <-c.done:
		return false
	default:
		return true
	}
}

// probeSocket reports whether a process accepts connections on the UAPI
// socket at path, and its PID from the socket's peer credentials (the
// process that called listen; 0 if it is in a PID namespace we cannot see).
func probeSocket(path string) (live bool, pid int, err error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return false, 0, fmt.Errorf("%s exists and is not a socket", path)
	}
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.ENOENT) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("probe %s: %w", path, err)
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return true, 0, nil
	}
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return true, pid, nil
}

// removeStaleSocket removes a socket file nobody accepts on.
func removeStaleSocket(path string) error {
	live, _, err := probeSocket(path)
	if err != nil || live {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// poll calls cond every pollInterval until it returns true or an error, or
// until timeout or ctx ends.
func poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting: %w", context.Cause(ctx))
		case <-t.C:
		}
	}
}

func waitDone(done <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}
