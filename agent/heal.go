package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/confmesh/confmesh/agent/workload"
	"golang.org/x/sys/unix"
)

// The agent's degraded conditions (health.Tracker names). Each is set by
// a periodic check and cleared by the next one that passes; while one
// fails the node is not ready for pods, and once one has failed for
// longer than Config.LivenessTimeout the agent is not live.
const (
	condStrict   = "strict-mode"      // the table or the fail-closed routes could not be checked or repaired
	condDatapath = "datapath"         // the WireGuard device is down or could not be restored
	condPeers    = "peers"            // verified peers or their routes could not be applied
	condFDs      = "file-descriptors" // no file descriptor left (or almost none)
)

var conditions = []string{condStrict, condDatapath, condPeers, condFDs}

// DefaultLivenessTimeout is how long a degraded state may last before
// /healthz fails and the kubelet restarts the agent (Config.LivenessTimeout).
// Every check repeats at least every tickInterval, so a transient failure
// heals well within it; what lasts longer will not heal in place, and a
// restart costs no traffic (the device, datapath and rules stay).
const DefaultLivenessTimeout = 60 * time.Second

// healthInterval is how often the file-descriptor probe runs.
const healthInterval = time.Second

// fdReserve is how many free descriptors count as none: the agent needs a
// few at once for one check (a netlink socket, an nftables socket, a file).
const fdReserve = 8

// strictLoopBeat names the strict-mode loop's heartbeat.
const strictLoopBeat = "strict-mode"

// passed clears cond and says so in the log when it was failing.
func (a *Agent) passed(cond string) {
	if healed, after := a.health.Pass(cond); healed {
		a.log.Info("healed: "+cond+" checks pass again", "degradedFor", after.Round(time.Millisecond))
		a.refreshReady()
	}
}

// failed records cond as failing; the first failure is logged.
func (a *Agent) failed(cond, reason string) {
	if a.health.Fail(cond, reason) {
		a.log.Error("degraded: "+cond, "reason", reason)
	}
}

// healthLoop probes the agent's file descriptors until ctx ends.
func (a *Agent) healthLoop(ctx context.Context) {
	t := time.NewTicker(healthInterval)
	defer t.Stop()
	for {
		a.checkFDs()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkFDs marks the agent degraded while it has no file descriptor to
// spare (it cannot open a socket for nftables, netlink or wgctrl, nor
// accept a CNI or Workload API call), and clears that when it has again.
func (a *Agent) checkFDs() {
	open, limit, err := fdUsage()
	switch {
	case err != nil && (errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE)):
		a.failed(condFDs, "file descriptors exhausted: "+err.Error())
	case err != nil:
		a.log.Debug("file-descriptor probe", "err", err) // not a verdict either way
	case limit > 0 && uint64(open+fdReserve) >= limit:
		a.failed(condFDs, fmt.Sprintf("file descriptors exhausted: %d of %d open", open, limit))
	default:
		a.passed(condFDs)
	}
}

// fdUsage counts the process's open descriptors (/proc/self/fd, itself
// needing one) and reads its RLIMIT_NOFILE soft limit (0: unlimited).
func fdUsage() (open int, limit uint64, err error) {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err == nil && r.Cur != unix.RLIM_INFINITY {
		limit = r.Cur
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return 0, limit, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return 0, limit, err
	}
	return len(names) - 1, limit, nil // not counting d itself
}

// checkDatapath restores the WireGuard device when it is down, and keeps
// trying on every tick until the device is up, configured and holds the
// verified peers again; only then is the datapath condition cleared.
func (a *Agent) checkDatapath(ctx context.Context) {
	dev := a.device()
	if dev == nil {
		return
	}
	err := dev.Healthy()
	if err == nil && !a.health.IsFailing(condDatapath) {
		return
	}
	if err != nil {
		a.log.Warn("WireGuard device unhealthy; restoring", "err", err)
		a.failed(condDatapath, "datapath down: "+err.Error())
	}
	if err := a.ensureDevice(ctx); err != nil {
		a.log.Error("restore device", "err", err)
		a.failed(condDatapath, "restore device: "+err.Error())
		return
	}
	a.reconcile()
	if err := a.device().Healthy(); err != nil {
		a.failed(condDatapath, "datapath down: "+err.Error())
		return
	}
	a.passed(condDatapath)
	a.refreshReady()
}

func (a *Agent) setReady(reason string) {
	a.mu.Lock()
	a.readyReason = reason
	a.mu.Unlock()
}

// refreshReady recomputes the node's standing part of readiness:
// attested, in the peer set, datapath started. Strict mode and the
// degraded conditions are checked live by Ready.
func (a *Agent) refreshReady() {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.state == StateRevoked || a.state == StateRefused:
		a.readyReason = a.state + " by the control plane: " + a.stateReason
	case !a.joined:
		if a.readyReason == "" {
			a.readyReason = "not attested yet"
		}
	case a.state == StateJoining:
		a.readyReason = "not in the peer set: " + a.stateReason
	case a.dev == nil:
		a.readyReason = "datapath not up"
	default:
		a.readyReason = ""
	}
}

// Ready reports whether pods may be networked, and if not, why.
func (a *Agent) Ready() (bool, string) {
	if dev := a.device(); dev != nil {
		if err := dev.Healthy(); err != nil {
			return false, "datapath down: " + err.Error()
		}
	}
	if ok, why := a.strictHealthy(); !ok {
		return false, why
	}
	if ok, why := a.health.Ready(); !ok {
		return false, why
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readyReason == "", a.readyReason
}

// Live reports whether the agent can still do its job or heal by itself:
// false once a degraded condition has lasted longer than
// Config.LivenessTimeout, or the strict-mode loop has not run for that
// long. /healthz serves it, so the kubelet restarts an agent that stays
// stuck; a restart keeps the device, the datapath and the rules.
func (a *Agent) Live() (bool, string) {
	return a.health.Live(a.cfg.LivenessTimeout)
}

// workloadConnStats are the Workload API's connection counts (zero when
// it is not served).
func (a *Agent) workloadConnStats() workload.ConnStats {
	a.mu.Lock()
	wl := a.workload
	a.mu.Unlock()
	if wl == nil {
		return workload.ConnStats{Refused: map[string]uint64{}}
	}
	return wl.ConnStats()
}
