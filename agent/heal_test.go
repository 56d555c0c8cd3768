package agent

import (
	"os"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/testutil"
	"golang.org/x/sys/unix"
)

// squeezeFDs lowers this process's RLIMIT_NOFILE soft limit to 3, so that
// no new descriptor can be opened (what a connection flood does to an
// agent), and returns the function that restores it.
func squeezeFDs(t *testing.T) (restore func()) {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 3, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	done := false
	restore = func() {
		if !done {
			done = true
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
				t.Fatalf("restore RLIMIT_NOFILE: %v", err)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// TestFDProbeHeals: with no descriptor to spare the agent is degraded and
// not ready, naming the cause; with descriptors again, the next probe
// clears it.
func TestFDProbeHeals(t *testing.T) {
	a := newTestAgent(t)
	a.checkFDs()
	if a.health.IsFailing(condFDs) {
		t.Fatalf("degraded with descriptors to spare: %v", a.health.Failing())
	}
	restore := squeezeFDs(t)
	a.checkFDs()
	restore()
	ok, why := a.Ready()
	if !a.health.IsFailing(condFDs) || ok || !strings.Contains(why, "file descriptors exhausted") || !strings.Contains(why, "too many open files") {
		t.Fatalf("descriptors exhausted: failing %v, Ready = %v %q", a.health.Failing(), ok, why)
	}
	if got := labeledValue(t, a, "confmesh_agent_degraded_total", "condition", condFDs); got != 1 {
		t.Errorf("confmesh_agent_degraded_total{condition=%q} = %v, want 1", condFDs, got)
	}
	if got := labeledValue(t, a, "confmesh_agent_degraded", "condition", condFDs); got != 1 {
		t.Errorf("confmesh_agent_degraded{condition=%q} = %v, want 1", condFDs, got)
	}
	a.checkFDs()
	if a.health.IsFailing(condFDs) {
		t.Fatalf("descriptors available again: still degraded: %v", a.health.Failing())
	}
	if _, why := a.Ready(); strings.Contains(why, "file descriptors") {
		t.Fatalf("Ready still names the descriptors: %q", why)
	}
}

// TestStrictFailureHeals: a strict check that fails because the agent
// cannot open a netlink socket (descriptors exhausted) marks strict mode
// failed; the first check that finds the kernel's table as wanted clears
// every trace of it (state, reason, the degraded condition, Ready),
// without a re-install and without anyone touching the table.
func TestStrictFailureHeals(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, nftables)")
	}
	a := newStrictAgent(t)
	a.mu.Lock()
	a.setStateLocked(StateActive, "")
	a.mu.Unlock()
	a.refreshReady()
	testutil.InNetNS(t, testutil.NewNetNS(t), func() error {
		if err := a.InstallStrictRules(); err != nil {
			return err
		}
		a.checkStrict()
		// No device in this test: "datapath not up" is the one reason left.
		const noDevice = "datapath not up"
		if _, why := a.Ready(); why != noDevice {
			t.Fatalf("installed: Ready's reason %q, want only %q", why, noDevice)
		}
		restore := squeezeFDs(t)
		a.checkStrict()
		restore()
		si := a.Strict()
		if si.State != StrictFailed || !strings.Contains(si.Reason, "too many open files") || !a.health.IsFailing(condStrict) {
			t.Fatalf("check without descriptors: %+v, failing %v; want failed naming the cause", si, a.health.Failing())
		}
		if ok, why := a.Ready(); ok || !strings.Contains(why, "too many open files") {
			t.Fatalf("check without descriptors: Ready = %v %q", ok, why)
		}
		a.checkStrict()
		si = a.Strict()
		if si.State != StrictInstalled || si.Reason != "" || si.Reinstalls != 0 || a.health.IsFailing(condStrict) {
			t.Fatalf("next check with descriptors: %+v, failing %v; want installed, no re-install, nothing failing", si, a.health.Failing())
		}
		if _, why := a.Ready(); why != noDevice {
			t.Fatalf("healed: Ready's reason %q, want only %q", why, noDevice)
		}
		if st := a.Status(); !st.StrictMode || st.Strict.State != StrictInstalled {
			t.Fatalf("healed: status strictMode %v, state %s", st.StrictMode, st.Strict.State)
		}
		return nil
	})
}

// labeledValue reads the series of a metric whose label has value.
func labeledValue(t *testing.T, a *Agent, name, label, value string) float64 {
	t.Helper()
	fams, err := a.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if c := m.GetCounter(); c != nil {
						return c.GetValue()
					}
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s=%q} not registered", name, label, value)
	return 0
}
