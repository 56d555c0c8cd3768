package agent

import (
	"context"
	"errors"

	"github.com/confmesh/confmesh/agent/cpclient"
)

// The node's standing with the control plane (`confmesh status` state).
const (
	// StateJoining: not admitted yet, or out of the peer set and joining
	// again (then without peers).
	StateJoining = "joining"
	// StateActive: admitted, in the peer set.
	StateActive = "active"
	// StateRevoked: an operator revoked the node; permanent.
	StateRevoked = "revoked"
	// StateRefused: the control plane refused the node's join (evidence,
	// name or key); the same join would be refused again.
	StateRefused = "refused"
)

var allStates = []string{StateJoining, StateActive, StateRevoked, StateRefused}

// errStopped ends the join loop: the control plane refused this node.
var errStopped = errors.New("the control plane refused this node")

// setStateLocked records a new standing; the caller holds a.mu.
func (a *Agent) setStateLocked(state, reason string) {
	if a.state != state || a.stateReason != reason {
		a.stateSince = a.now()
	}
	a.state, a.stateReason = state, reason
	for _, s := range allStates {
		v := 0.0
		if s == state {
			v = 1
		}
		a.metrics.state.WithLabelValues(s).Set(v)
	}
}

// stopped reports whether the control plane refused or revoked this node.
func (a *Agent) stopped() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state == StateRevoked || a.state == StateRefused
}

// stopIfRefused stops the agent when err is the control plane's refusal
// of this node (cpclient.Refusal) and reports whether it did. A stopped
// agent removes every peer and route from its device, keeps strict mode
// (its pods' cross-node traffic is dropped, never sent in clear), makes no
// further call to the control plane, and stays up so that status and
// metrics say why. Revoked is permanent; a refused node tries again only
// when restarted.
func (a *Agent) stopIfRefused(err error) bool {
	r, ok := cpclient.AsRefusal(err)
	if !ok || r.Reason == "" {
		// No label: a renewal by a node that left the peer set; only a
		// join's answer is a verdict.
		return false
	}
	state := StateRefused
	if r.Revoked() {
		state = StateRevoked
	}
	reason := r.Reason + ": " + r.Message()
	a.metrics.cpRefusals.WithLabelValues(r.Op, r.Reason).Inc()
	a.mu.Lock()
	a.joined = false
	a.setStateLocked(state, reason)
	a.mu.Unlock()
	a.refreshReady()
	a.log.Error("the control plane refused this node: removing every peer and stopping; strict mode stays on", "state", state, "reason", reason)
	a.reconcile()
	return true
}

// rejoin is for a node the control plane no longer counts in its peer set
// (its watch ended with PermissionDenied or Unauthenticated, or a renewal
// was refused): its peers have dropped it, so it drops them at once, then
// tries one join, whose refusal stops the agent. It reports whether the
// agent stopped.
func (a *Agent) rejoin(ctx context.Context, why string) bool {
	// The watch and a renewal may both find out at once: one join at a time.
	a.rejoinMu.Lock()
	defer a.rejoinMu.Unlock()
	a.mu.Lock()
	switch a.state {
	case StateRevoked, StateRefused:
		a.mu.Unlock()
		return true
	}
	a.setStateLocked(StateJoining, why)
	a.readyReason = "not in the peer set: " + why
	a.mu.Unlock()
	a.reconcile() // out of the peer set: no peers
	err := a.join(ctx)
	if err == nil {
		return false
	}
	if a.stopIfRefused(err) {
		return true
	}
	a.log.Error("re-join failed", "err", err)
	return false
}
