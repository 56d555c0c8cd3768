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
	tune      func(*controlplane.Config)
	idle      time.Duration // unauthenticated idle timeout
	unauth    int           // unauthenticated connections held at most
	memBudget int64         // RSS growth allowed under the flood
}

// floodLimits: small limits for CI; the defaults for the full run.
func floodLimits(full bool) floodLimit {
	if full {
		return floodLimit{idle: 30 * time.Second, unauth: 2048, memBudget: 192 << 20}
	}
	return floodLimit{idle: 3 * time.Second, unauth: 256, memBudget: 64 << 20}
}

func (l floodLimit) report(t *testing.T, c *cptest.ControlPlane) {}
