package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/hostveth"
	"github.com/confmesh/confmesh/internal/netfilter"
)

// StrictCheckInterval is how often the agent compares the strict-mode
// table and the fail-closed routes with what they should be, besides
// checking at once on every nftables or route change the kernel reports.
const StrictCheckInterval = 500 * time.Millisecond

// Strict-mode states, as `confmesh status` reports them.
const (
	StrictOff       = "off"       // strict mode disabled by configuration
	StrictInstalled = "installed" // the kernel holds exactly the wanted table
	StrictMissing   = "missing"   // the table is gone (being re-installed)
	StrictAltered   = "altered"   // the table differs (being re-installed)
	StrictFailed    = "failed"    // re-installing failed; see the reason
)

// strictKeeper is the agent's view of strict mode. Its mutex serialises
// every change the agent makes to the table, the pod sets and the
// fail-closed routes, so a check never compares the kernel with a wanted
// state that another goroutine is in the middle of applying.
type strictKeeper struct {
	mu            sync.Mutex
	state         string
	reason        string
	reinstalls    uint64
	lastReinstall time.Time
	routeRepairs  uint64

	// applied is what the agent last programmed (Install or SyncPods):
	// a check compares the kernel with it, so a change the agent is about
	// to apply (a new pod, a new pod CIDR) is never mistaken for drift.
	applied *netfilter.Rules

	// The peer routes through the WireGuard device the last reconcile
	// applied: what a repair restores.
	peerRoutes []netip.Prefix
	peerMTU    int
	havePeer   bool
}

// StrictInfo is what the agent knows about strict mode, for status and
// metrics.
type StrictInfo struct {
	Enabled       bool
	State         string
	Reason        string
	Reinstalls    uint64
	LastReinstall time.Time
	RouteRepairs  uint64
	Pods          int
	Drops         netfilter.Drops
}

// strictRules is the table this node should have now: cluster CIDRs, its
// pod CIDR and every pod the IPAM holds an address for in that CIDR (on
// the host veth the CNI plugin names after the attachment).
func (a *Agent) strictRules() netfilter.Rules {
	a.mu.Lock()
	r := netfilter.Rules{Table: a.cfg.Table, ClusterCIDRs: uniquePrefixes(a.cfg.ClusterCIDR, a.clusterCIDR), Device: a.cfg.Device}
	pod := a.podCIDR
	a.mu.Unlock()
	if !pod.IsValid() {
		return r
	}
	r.LocalCIDRs = []netip.Prefix{pod}
	r.Pods = podsOf(pod, a.ipam.List())
	return r
}

// podsOf turns IPAM allocations into the strict-mode pod list: the host
// veth of each attachment (cni.HostVethName, derived exactly as the plugin
// derives it) and its address, for the addresses inside pod.
func podsOf(pod netip.Prefix, allocs []Allocation) []netfilter.Pod {
	var out []netfilter.Pod
	for _, al := range allocs {
		if !pod.Contains(al.IP) {
			continue // from an earlier pod CIDR
		}
		out = append(out, netfilter.Pod{Interface: hostveth.Name(al.ContainerID, al.Interface), Addr: al.IP})
	}
	return out
}

// InstallStrictRules programs the fail-closed rules and routes: before the
// agent does anything else, and again whenever the local pod CIDR changes.
func (a *Agent) InstallStrictRules() error {
	if !a.cfg.StrictMode {
		a.log.Warn("strict mode is OFF: pod traffic may leave in plaintext if a route is missing")
		return nil
	}
	k := &a.strictK
	k.mu.Lock()
	defer k.mu.Unlock()
	r := a.strictRules()
	if err := netfilter.Install(r); err != nil {
		k.state, k.reason = StrictFailed, err.Error()
		return fmt.Errorf("install strict rules: %w", err)
	}
	k.applied = &r
	k.state, k.reason = StrictInstalled, ""
	a.mu.Lock()
	a.strict = true
	a.mu.Unlock()
	if _, err := ensureFailClosedRoutes(r.ClusterCIDRs); err != nil {
		return fmt.Errorf("install fail-closed routes: %w", err)
	}
	return nil
}

// changePods runs f, a change of the IPAM's reservations, and then brings
// the pod sets to the IPAM's pods element by element, as one step with
// respect to the strict checks. A failed sync is logged and left to the
// next check, which re-installs the whole table.
func (a *Agent) changePods(f func() error) error {
	if !a.cfg.StrictMode {
		return f()
	}
	k := &a.strictK
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := f(); err != nil {
		return err
	}
	r := a.strictRules()
	if err := netfilter.SyncPods(r); err != nil {
		a.log.Warn("strict mode: pod sets not updated; the next check re-installs the table", "err", err)
		return nil
	}
	k.applied = &r
	return nil
}

// notePeerRoutes records the routes through the device that a reconcile
// applied, so a route deleted behind the agent's back can be restored.
func (a *Agent) notePeerRoutes(routes []netip.Prefix, mtu int) {
	k := &a.strictK
	k.mu.Lock()
	k.peerRoutes, k.peerMTU, k.havePeer = append([]netip.Prefix(nil), routes...), mtu, true
	k.mu.Unlock()
}

// strictLoop keeps strict mode true until ctx ends: it checks at once on
// every nftables change (netlink notifications) and every route change,
// and every StrictCheckInterval as a safety net.
func (a *Agent) strictLoop(ctx context.Context) {
	if !a.cfg.StrictMode {
		return
	}
	routes := subscribeRoutes(ctx, a.log)
	tick := time.NewTicker(StrictCheckInterval)
	defer tick.Stop()
	var nft <-chan struct{}
	warned := false
	for {
		if nft == nil {
			ch, err := netfilter.Watch(ctx)
			if err != nil && !warned {
				warned = true
				a.log.Warn("strict mode: no nftables change notifications; checking every interval only", "err", err, "interval", StrictCheckInterval)
			}
			nft = ch
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-nft:
			if !ok {
				nft = nil // resubscribe; check now in case a change was missed
			}
		case <-routes:
		case <-tick.C:
		}
		a.checkStrict()
		a.health.Beat(strictLoopBeat)
	}
}

// checkStrict compares the kernel with what strict mode should be and
// repairs what differs: the table (re-installed whole, atomically), the
// fail-closed routes, the pods' host routes and the peer routes through
// the device.
func (a *Agent) checkStrict() {
	k := &a.strictK
	k.mu.Lock()
	defer k.mu.Unlock()
	r := a.strictRules()
	applied := r
	if k.applied != nil {
		applied = *k.applied
	}
	if err := netfilter.Verify(applied); err != nil {
		seen := time.Now()
		state := StrictAltered
		if errors.Is(err, netfilter.ErrTableMissing) {
			state = StrictMissing
		}
		if !errors.Is(err, netfilter.ErrTableMissing) && !errors.Is(err, netfilter.ErrTableAltered) {
			a.log.Warn("strict mode: cannot read the table; re-installing it", "err", err)
		}
		k.state, k.reason = state, err.Error()
		a.mu.Lock()
		a.strict = false
		a.mu.Unlock()
		if ierr := netfilter.Install(r); ierr != nil {
			k.state, k.reason = StrictFailed, fmt.Sprintf("%v; re-install failed: %v", err, ierr)
			a.log.Error("strict mode: table "+state+" and re-installing it failed", "drift", err, "err", ierr)
		} else {
			k.applied = &r
			k.reinstalls++
			k.lastReinstall = time.Now()
			k.state, k.reason = StrictInstalled, ""
			a.metrics.strictReinstalls.Inc()
			a.mu.Lock()
			a.strict = true
			a.mu.Unlock()
			a.log.Warn("strict mode: table was "+state+"; re-installed", "drift", err, "took", time.Since(seen).Round(time.Microsecond), "reinstalls", k.reinstalls)
		}
	} else if !slices.Equal(netfilter.Describe(applied), netfilter.Describe(r)) {
		// Not drift: the wanted rules changed since the agent last applied them.
		if err := netfilter.Install(r); err != nil {
			k.state, k.reason = StrictFailed, "applying a change: "+err.Error()
			a.log.Error("strict mode: applying a change of the wanted rules failed", "err", err)
		} else {
			k.applied = &r
			a.strictInstalledLocked()
		}
	} else if k.state != StrictInstalled {
		// The kernel holds exactly the table last applied, and it is the
		// wanted one: whatever failed before (a check or re-install that
		// could not even open a socket) is over.
		a.log.Info("strict mode: the table verifies again", "was", k.state, "reason", k.reason)
		a.strictInstalledLocked()
	}
	repaired, err := ensureFailClosedRoutes(r.ClusterCIDRs)
	if err != nil {
		a.log.Error("strict mode: fail-closed routes", "err", err)
	}
	routesErr := err
	n, err := ensurePodRoutes(r.Pods)
	if err != nil {
		a.log.Error("strict mode: pod routes", "err", err)
	}
	repaired += n
	repaired += a.repairPeerRoutes()
	if repaired > 0 {
		k.routeRepairs += uint64(repaired)
		a.metrics.strictRouteRepairs.Add(float64(repaired))
		a.log.Warn("strict mode: restored deleted routes", "routes", repaired)
	}
	switch {
	case k.state != StrictInstalled:
		a.failed(condStrict, "strict rules "+k.state+": "+k.reason)
	case routesErr != nil:
		a.failed(condStrict, "fail-closed routes: "+routesErr.Error())
	default:
		a.passed(condStrict)
	}
}

// strictInstalledLocked records that the kernel holds the wanted table;
// k.mu is held.
func (a *Agent) strictInstalledLocked() {
	a.strictK.state, a.strictK.reason = StrictInstalled, ""
	a.mu.Lock()
	a.strict = true
	a.mu.Unlock()
}

// repairPeerRoutes restores the routes through the device the last
// reconcile applied, when some are missing. It leaves the routes alone
// while a reconcile runs (that reconcile sets them itself). k.mu is held.
func (a *Agent) repairPeerRoutes() int {
	k := &a.strictK
	dev := a.device()
	if !k.havePeer || dev == nil || !a.reconcileMu.TryLock() {
		return 0
	}
	defer a.reconcileMu.Unlock()
	have, err := dev.Routes()
	if err != nil {
		return 0 // the device is down: the datapath check restores it
	}
	present := map[netip.Prefix]bool{}
	for _, p := range have {
		present[p] = true
	}
	missing := 0
	for _, p := range k.peerRoutes {
		if !present[p.Masked()] {
			missing++
		}
	}
	if missing == 0 {
		return 0
	}
	if err := dev.SyncRoutes(k.peerRoutes, k.peerMTU); err != nil {
		a.log.Error("strict mode: restore peer routes", "err", err)
		return 0
	}
	return missing
}

// strictHealthy reports whether strict mode is in force as far as the
// agent knows, checking the table's presence live.
func (a *Agent) strictHealthy() (bool, string) {
	if !a.cfg.StrictMode {
		return true, ""
	}
	if ok, err := netfilter.Installed(a.cfg.Table); err != nil || !ok {
		return false, "strict rules are not installed"
	}
	k := &a.strictK
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.state != StrictInstalled {
		return false, "strict rules " + k.state + ": " + k.reason
	}
	return true, ""
}

// Strict reports strict mode as the kernel has it.
func (a *Agent) Strict() StrictInfo {
	if !a.cfg.StrictMode {
		return StrictInfo{State: StrictOff}
	}
	k := &a.strictK
	k.mu.Lock()
	info := StrictInfo{Enabled: true, State: k.state, Reason: k.reason, Reinstalls: k.reinstalls,
		LastReinstall: k.lastReinstall, RouteRepairs: k.routeRepairs}
	k.mu.Unlock()
	if ok, err := netfilter.Installed(a.cfg.Table); err != nil || !ok {
		info.State, info.Reason = StrictMissing, "the table is not in the kernel"
	}
	if info.State == "" {
		info.State = StrictMissing
	}
	info.Pods = len(a.strictRules().Pods)
	if d, err := netfilter.ReadDrops(a.cfg.Table); err == nil {
		info.Drops = d
	}
	return info
}
