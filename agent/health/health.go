// Package health is the agent's record of what is degraded now: named
// conditions (strict mode, the datapath, file descriptors) that the
// periodic checks mark failing or passing, and heartbeats of the loops
// that run those checks. It is pure bookkeeping: every state a check sets
// is cleared by the next check that passes, so no degraded state outlives
// its cause, and a condition (or a silent loop) that lasts longer than a
// bound makes the agent not live, so the kubelet restarts it.
package health

import (
	"fmt"
	"sort"
	"sync"
	"time"
)

// Problem is a failing condition.
type Problem struct {
	Name   string
	Reason string
	Since  time.Time // when it started failing (continuously since)
}

func (p Problem) String() string { return p.Name + ": " + p.Reason }

// Tracker records conditions and heartbeats. The zero value is not
// usable: New.
type Tracker struct {
	now func() time.Time

	mu    sync.Mutex
	fail  map[string]Problem
	beats map[string]time.Time
	// transitions counts each condition's changes to failing (for metrics).
	transitions map[string]uint64
}

// New returns a Tracker reading the clock now (time.Now when nil).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{now: now, fail: map[string]Problem{}, beats: map[string]time.Time{}, transitions: map[string]uint64{}}
}

// Fail marks name failing for reason. A condition already failing keeps
// the time it started failing (the reason is updated); it reports whether
// the condition was passing before.
func (t *Tracker) Fail(name, reason string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, was := t.fail[name]
	if !was {
		p = Problem{Name: name, Since: t.now()}
		t.transitions[name]++
	}
	p.Reason = reason
	t.fail[name] = p
	return !was
}

// Pass marks name passing. It reports whether it was failing, and for how
// long.
func (t *Tracker) Pass(name string) (healed bool, after time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, was := t.fail[name]
	if !was {
		return false, 0
	}
	delete(t.fail, name)
	return true, t.now().Sub(p.Since)
}

// IsFailing reports whether name is failing.
func (t *Tracker) IsFailing(name string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.fail[name]
	return ok
}

// Set is Fail(name, err.Error()) for a non-nil err, Pass(name) otherwise.
func (t *Tracker) Set(name string, err error) {
	if err != nil {
		t.Fail(name, err.Error())
	} else {
		t.Pass(name)
	}
}

// Failing lists the failing conditions, oldest first (then by name).
func (t *Tracker) Failing() []Problem {
	t.mu.Lock()
	out := make([]Problem, 0, len(t.fail))
	for _, p := range t.fail {
		out = append(out, p)
	}
	t.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Since.Equal(out[j].Since) {
			return out[i].Since.Before(out[j].Since)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// Transitions is how often name went from passing to failing.
func (t *Tracker) Transitions(name string) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.transitions[name]
}

// Ready is false, with the oldest problem as the reason, while any
// condition fails.
func (t *Tracker) Ready() (bool, string) {
	ps := t.Failing()
	if len(ps) == 0 {
		return true, ""
	}
	return false, ps[0].String()
}

// Beat records that loop ran now. A loop that has beaten once is expected
// to keep beating (see Live).
func (t *Tracker) Beat(loop string) {
	t.mu.Lock()
	t.beats[loop] = t.now()
	t.mu.Unlock()
}

// Live is false when a condition has failed continuously for longer than
// bound, or a loop has not beaten for longer than bound: the agent cannot
// do its job and has not healed by itself, and a restart is the remedy
// left. bound <= 0 means always live.
func (t *Tracker) Live(bound time.Duration) (bool, string) {
	if bound <= 0 {
		return true, ""
	}
	now := t.now()
	for _, p := range t.Failing() {
		if d := now.Sub(p.Since); d > bound {
			return false, fmt.Sprintf("%s for %s (liveness timeout %s)", p, d.Round(time.Second), bound)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	loops := make([]string, 0, len(t.beats))
	for l := range t.beats {
		loops = append(loops, l)
	}
	sort.Strings(loops)
	for _, l := range loops {
		if d := now.Sub(t.beats[l]); d > bound {
			return false, fmt.Sprintf("the %s loop has not run for %s (liveness timeout %s)", l, d.Round(time.Second), bound)
		}
	}
	return true, ""
}
