package controlplane_test

import (
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
)

// floodLimit is the limits the flood test runs against and what it may
// expect of them.
type floodLimit struct {
	limits    controlplane.Limits // with the defaults applied
	memBudget int64               // RSS growth allowed under the flood
	slack     time.Duration       // an idle connection may outlive the idle timeout by this (a loaded machine)
}

// floodLimits: small limits for CI; the defaults for the full run. The
// flood from one address crosses the per-source cap, the flood as a whole
// the unauthenticated pool.
func floodLimits(full bool) floodLimit {
	if full {
		return floodLimit{limits: controlplane.DefaultLimits(), memBudget: 192 << 20, slack: 10 * time.Second}
	}
	return floodLimit{limits: controlplane.Limits{
		HandshakeTimeout: 2 * time.Second, IdleTimeout: 3 * time.Second,
		MaxConnsPerSource: 16, MaxConns: 1024, MaxUnauthenticatedConns: 256,
	}.WithDefaults(), memBudget: 64 << 20, slack: 7 * time.Second}
}

func (l floodLimit) tune(cfg *controlplane.Config) { cfg.Limits = l.limits }
func (l floodLimit) idle() time.Duration           { return l.limits.IdleTimeout }
func (l floodLimit) unauth() int                   { return l.limits.MaxUnauthenticatedConns }

// sampleServer records the most connections the server held at once.
func (l floodLimit) sampleServer(c *cptest.ControlPlane, peak *serverPeak) {
	st := c.Server.ConnStats()
	peak.mu.Lock()
	peak.total = max(peak.total, st.Total)
	peak.unauth = max(peak.unauth, st.Unauthenticated)
	peak.mu.Unlock()
}

// check asserts the server's own view: refusals and closes counted, never
// more connections held than the caps.
func (l floodLimit) check(t *testing.T, c *cptest.ControlPlane, peak *serverPeak, full bool) {
	t.Helper()
	refused := func(r string) float64 {
		return counterValue(t, c, "confmesh_controlplane_connections_refused_total", map[string]string{"reason": r})
	}
	closed := func(r string) float64 {
		return counterValue(t, c, "confmesh_controlplane_connections_closed_total", map[string]string{"reason": r})
	}
	t.Logf("server: refused per_source=%v total=%v unauthenticated_full=%v; closed idle=%v evicted=%v; peak held %d (unauthenticated %d)",
		refused("per_source"), refused("total"), refused("unauthenticated_full"), closed("idle"), closed("evicted"), peak.total, peak.unauth)
	if refused("per_source") == 0 {
		t.Errorf("confmesh_controlplane_connections_refused_total{reason=\"per_source\"} is 0: %d connections from one address crossed the per-source cap", l.limits.MaxConnsPerSource+24)
	}
	if refused("unauthenticated_full")+closed("evicted") == 0 {
		t.Error("the unauthenticated pool never refused nor evicted a connection, yet the flood exceeded it")
	}
	if closed("idle") == 0 {
		t.Error("confmesh_controlplane_connections_closed_total{reason=\"idle\"} is 0: no idle connection was closed")
	}
	if peak.unauth > l.unauth() || peak.total > l.limits.MaxConns {
		t.Errorf("the server held %d connections (%d unauthenticated); caps %d (%d)", peak.total, peak.unauth, l.limits.MaxConns, l.unauth())
	}
}
