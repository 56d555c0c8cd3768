package soak

import (
	"fmt"
	"time"
)

// Kind is a type of event the soak causes or observes.
type Kind string

// The event kinds. KindNone is the time outside every event window (pod
// churn, which runs the whole time, is all that happens then).
const (
	KindNone         Kind = "none (pod churn only)"
	KindNodeJoin     Kind = "node-join"
	KindNodeLeave    Kind = "node-leave"
	KindControlPlane Kind = "controlplane-kill"
	// KindControlPlaneFailover is the replica the agents use SIGKILLed,
	// the agents on the other one, then the killed one started again.
	KindControlPlaneFailover Kind = "controlplane-failover"
	KindPolicyReload         Kind = "policy-reload"
	KindKeyRotation          Kind = "key-rotation"
)

// Cycle is the order the scheduled events repeat in (ModeStandalone's;
// CycleFor gives each mode's). Key rotations are not
// scheduled: the agents rotate on their own period (--key-rotation), and
// the soak reads when from their logs.
var Cycle = []Kind{KindNodeJoin, KindPolicyReload, KindControlPlane, KindNodeLeave}

// Event is one scheduled event: Kind, due At after the start.
type Event struct {
	At   time.Duration
	Kind Kind
}

// Plan returns the events of a run of the given duration: one every
// `every`, the first after one interval, cycling through cycle, none later
// than duration minus `tail` (time left at the end for the last event's
// window and the final measurement). It is an error for every or duration
// not to be positive or for the cycle to be empty.
func Plan(duration, every, tail time.Duration, cycle []Kind) ([]Event, error) {
	if duration <= 0 || every <= 0 || tail < 0 {
		return nil, fmt.Errorf("soak plan: duration %s and interval %s must be positive, tail %s not negative", duration, every, tail)
	}
	if len(cycle) == 0 {
		return nil, fmt.Errorf("soak plan: no event kinds")
	}
	var out []Event
	for i := 0; ; i++ {
		at := time.Duration(i+1) * every
		if at > duration-tail {
			return out, nil
		}
		out = append(out, Event{At: at, Kind: cycle[i%len(cycle)]})
	}
}
