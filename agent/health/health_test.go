package health

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time           { return c.t }
func (c *clock) add(d time.Duration)      { c.t = c.t.Add(d) }
func newClock() *clock                    { return &clock{t: time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)} }
func newTracker(c *clock) *Tracker        { return New(c.now) }
func wantReady(t *testing.T, tr *Tracker) { t.Helper(); wantReadyIs(t, tr, true, "") }
func wantReadyIs(t *testing.T, tr *Tracker, ok bool, contains string) {
	t.Helper()
	got, why := tr.Ready()
	if got != ok || !strings.Contains(why, contains) {
		t.Fatalf("Ready() = %v %q, want %v containing %q", got, why, ok, contains)
	}
}

// TestConditionsHeal: a failing check makes the agent not ready with its
// reason; the next passing check clears it, whatever failed before.
func TestConditionsHeal(t *testing.T) {
	c := newClock()
	tr := newTracker(c)
	wantReady(t, tr)
	if !tr.Fail("strict", "install: too many open files") {
		t.Fatal("first Fail did not report a change")
	}
	c.add(time.Second)
	tr.Fail("datapath", "wgctrl: too many open files")
	wantReadyIs(t, tr, false, "strict: install: too many open files") // the oldest first
	c.add(time.Second)
	if tr.Fail("strict", "verify: too many open files") {
		t.Fatal("Fail of a failing condition reported a change")
	}
	ps := tr.Failing()
	if len(ps) != 2 || ps[0].Name != "strict" || ps[0].Reason != "verify: too many open files" || !ps[0].Since.Equal(c.t.Add(-2*time.Second)) || ps[1].Name != "datapath" {
		t.Fatalf("failing %+v: want strict (since its first failure, latest reason) then datapath", ps)
	}
	healed, after := tr.Pass("strict")
	if !healed || after != 2*time.Second {
		t.Fatalf("Pass(strict) = %v %v, want healed after 2s", healed, after)
	}
	wantReadyIs(t, tr, false, "datapath")
	if tr.IsFailing("strict") || !tr.IsFailing("datapath") {
		t.Fatal("IsFailing disagrees with Fail and Pass")
	}
	tr.Set("datapath", nil)
	wantReady(t, tr)
	if healed, _ := tr.Pass("datapath"); healed {
		t.Fatal("Pass of a passing condition reported healing")
	}
	tr.Set("fds", errors.New("exhausted"))
	wantReadyIs(t, tr, false, "fds: exhausted")
	if tr.Transitions("strict") != 1 || tr.Transitions("fds") != 1 || tr.Transitions("other") != 0 {
		t.Fatalf("transitions strict %d fds %d", tr.Transitions("strict"), tr.Transitions("fds"))
	}
}

// TestLiveness: a condition failing continuously for longer than the
// bound, or a loop silent that long, makes the agent not live; a
// condition that heals in between restarts the count.
func TestLiveness(t *testing.T) {
	c := newClock()
	tr := newTracker(c)
	const bound = 60 * time.Second
	tr.Beat("strict")
	if ok, why := tr.Live(bound); !ok {
		t.Fatalf("fresh tracker not live: %s", why)
	}
	tr.Fail("fds", "file descriptors exhausted")
	c.add(50 * time.Second)
	tr.Beat("strict")
	tr.Pass("fds") // healed in time
	c.add(5 * time.Second)
	tr.Fail("fds", "file descriptors exhausted")
	c.add(bound)
	tr.Beat("strict")
	if ok, why := tr.Live(bound); !ok {
		t.Fatalf("failing exactly the bound: not live (%s)", why)
	}
	c.add(time.Second)
	tr.Beat("strict")
	ok, why := tr.Live(bound)
	if ok || !strings.Contains(why, "fds: file descriptors exhausted for 1m1s") {
		t.Fatalf("failing past the bound: Live = %v %q", ok, why)
	}
	if ok, _ := tr.Live(0); !ok {
		t.Fatal("bound 0 must mean always live")
	}
	tr.Pass("fds")
	if ok, why := tr.Live(bound); !ok {
		t.Fatalf("healed: not live (%s)", why)
	}
	// A loop that stops beating.
	c.add(bound + time.Second)
	ok, why = tr.Live(bound)
	if ok || !strings.Contains(why, "the strict loop has not run for 1m1s") {
		t.Fatalf("silent loop: Live = %v %q", ok, why)
	}
	tr.Beat("strict")
	if ok, why := tr.Live(bound); !ok {
		t.Fatalf("loop beating again: not live (%s)", why)
	}
}
