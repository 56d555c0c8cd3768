//go:build linux

package netlab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ControlPlane is one `confmesh controlplane` process (a replica, when
// there are several) and its files. It can be stopped (or killed) and
// started again with the same state directory and address.
type ControlPlane struct {
	// Replica is its index from 0; Name is "cp" for replica 0, else
	// "cp<Replica+1>" (its namespace is Prefix-Name).
	Replica     int
	Name        string
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

// startControlPlane creates each replica's namespace and starts them.
func (c *Cluster) startControlPlane(policy string, opts Options) error {
	n := max(opts.ControlPlaneReplicas, 1)
	if n > MaxReplicas {
		return fmt.Errorf("at most %d control-plane replicas fit the underlay", MaxReplicas)
	}
	var extra []string
	if opts.ControlPlaneSetup != nil {
		var err error
		if extra, err = opts.ControlPlaneSetup(c); err != nil {
			return fmt.Errorf("control-plane setup: %w", err)
		}
	}
	cps := make([]*ControlPlane, n)
	for k := range cps {
		name := "cp"
		if k > 0 {
			name = fmt.Sprintf("cp%d", k+1)
		}
		ip := ReplicaIP(k)
		cp := &ControlPlane{c: c, Replica: k, Name: name, NS: c.Prefix + "-" + name, IP: ip,
			Addr: netip.AddrPortFrom(ip, ControlPlanePort).String(), StateDir: filepath.Join(c.Dir, name), Policy: policy}
		cp.AdminSocket = filepath.Join(cp.StateDir, "admin.sock")
		cp.AdminDir = filepath.Join(cp.StateDir, "admin")
		// Each replica is its own simulated TEE (chip, VCEK), so each
		// has its own evidence and serving key.
		cp.args = []string{"controlplane", "--policy", policy, "--state-dir", cp.StateDir, "--listen", cp.Addr,
			"--admin-socket", cp.AdminSocket, "--metrics-listen", "127.0.0.1:9464", "--sim-dir", c.SimDir,
			"--sim-name", c.Prefix + "-" + name, "--log-format", "text"}
		if opts.SVIDTTL > 0 {
			cp.args = append(cp.args, "--svid-ttl", opts.SVIDTTL.String())
		}
		cp.args = append(cp.args, extra...)
		cps[k] = cp
	}
	c.mu.Lock()
	c.CP, c.CPs = cps[0], cps
	c.mu.Unlock()
	for _, cp := range cps {
		if err := c.attach(cp.NS, cp.Name, cp.IP); err != nil {
			return fmt.Errorf("control plane %s namespace: %w", cp.Name, err)
		}
		if err := cp.Start(); err != nil {
			return err
		}
	}
	return nil
}

// ControlPlanes returns every control-plane replica, CP first.
func (c *Cluster) ControlPlanes() []*ControlPlane {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*ControlPlane(nil), c.CPs...)
}

// ControlPlaneList is every replica's address, comma-separated: the
// agents' --control-plane.
func (c *Cluster) ControlPlaneList() string {
	var addrs []string
	for _, cp := range c.ControlPlanes() {
		addrs = append(addrs, cp.Addr)
	}
	return strings.Join(addrs, ",")
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
	base, what := "controlplane", "control plane"
	if cp.Replica > 0 {
		base, what = fmt.Sprintf("controlplane%d", cp.Replica+1), fmt.Sprintf("control plane %s", cp.Name)
	}
	log := filepath.Join(cp.c.Dir, base+".log")
	if cp.starts > 1 {
		log = filepath.Join(cp.c.Dir, fmt.Sprintf("%s-%d.log", base, cp.starts))
	}
	p, err := cp.c.start(fmt.Sprintf("%s (start %d)", what, cp.starts), log, cp.NS, cp.args...)
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

// Kill kills the control plane's process with SIGKILL (by PID: no
// shutdown, open streams break) and waits until it is gone. Its namespace,
// address and state directory stay for the next Start.
func (cp *ControlPlane) Kill() error {
	p := cp.Process()
	if p == nil {
		return nil
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill %s (pid %d): %w", p.Name, p.PID(), err)
	}
	return p.Wait(5 * time.Second)
}
