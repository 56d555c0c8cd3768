//go:build linux

package netlab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ControlPlane is the `confmesh controlplane` process and its files. It can
// be stopped and started again with the same state directory and address.
type ControlPlane struct {
	NS          string
	IP          netip.Addr
	Addr        string // agents' endpoint, IP:7443
	StateDir    string
	AdminSocket string
	AdminDir    string // admin credential (<state dir>/admin)
	Policy      string

	c      *Cluster
	args   []string
	mu     sync.Mutex
	proc   *Process
	starts int
}

// startControlPlane creates the control plane's namespace and starts it.
func (c *Cluster) startControlPlane(policy string, opts Options) error {
	cp := &ControlPlane{c: c, NS: c.Prefix + "-cp", IP: ControlPlaneIP, Addr: netip.AddrPortFrom(ControlPlaneIP, ControlPlanePort).String(),
		StateDir: filepath.Join(c.Dir, "cp"), Policy: policy}
	cp.AdminSocket = filepath.Join(cp.StateDir, "admin.sock")
	cp.AdminDir = filepath.Join(cp.StateDir, "admin")
	cp.args = []string{"controlplane", "--policy", policy, "--state-dir", cp.StateDir, "--listen", cp.Addr,
		"--admin-socket", cp.AdminSocket, "--metrics-listen", "127.0.0.1:9464", "--sim-dir", c.SimDir,
		"--sim-name", c.Prefix + "-cp", "--log-format", "text"}
	if opts.SVIDTTL > 0 {
		cp.args = append(cp.args, "--svid-ttl", opts.SVIDTTL.String())
	}
	c.CP = cp
	if err := c.attach(cp.NS, "cp", cp.IP); err != nil {
		return fmt.Errorf("control plane namespace: %w", err)
	}
	return cp.Start()
}

// Process is the control plane's current process (nil before the first start).
func (cp *ControlPlane) Process() *Process {
	if cp == nil {
		return nil
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.proc
}

// Start starts the control plane (again: same arguments, state directory
// and address) and waits until it serves on its address and admin socket.
func (cp *ControlPlane) Start() error {
	cp.mu.Lock()
	if cp.proc != nil {
		if done, _ := cp.proc.Exited(); !done {
			cp.mu.Unlock()
			return fmt.Errorf("control plane (pid %d) is still running", cp.proc.PID())
		}
		// The new process replaces the socket itself; removing the old
		// one first makes the wait below see the new one.
		os.Remove(cp.AdminSocket)
	}
	cp.starts++
	log := filepath.Join(cp.c.Dir, "controlplane.log")
	if cp.starts > 1 {
		log = filepath.Join(cp.c.Dir, fmt.Sprintf("controlplane-%d.log", cp.starts))
	}
	p, err := cp.c.start(fmt.Sprintf("control plane (start %d)", cp.starts), log, cp.NS, cp.args...)
	if err == nil {
		cp.proc = p
	}
	cp.mu.Unlock()
	if err != nil {
		return err
	}
	err = Eventually(ReadyTimeout, 50*time.Millisecond, func() error {
		if done, werr := p.Exited(); done {
			return Permanent(fmt.Errorf("control plane exited: %v", werr))
		}
		if _, err := os.Stat(cp.AdminSocket); err != nil {
			return err
		}
		return InNS(cp.NS, func() error {
			conn, err := net.DialTimeout("tcp", cp.Addr, time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("control plane not serving on %s: %v\n%s", cp.Addr, err, Tail(p.Log, 30))
	}
	return nil
}

// Stop stops the control plane (SIGTERM, bounded, then SIGKILL). Its
// namespace, address and state directory stay for the next Start.
func (cp *ControlPlane) Stop() error {
	p := cp.Process()
	if p == nil {
		return nil
	}
	return p.Stop()
}
