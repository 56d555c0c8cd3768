package cpclient_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

// TestControlPlaneTrustIsSeparate: an image approved for nodes is not
// thereby approved as a control plane. The control plane runs a TEE whose
// measurement is on the agent's node list; the agent accepts it only when
// its control-plane list names that measurement, and an agent whose policy
// has no control-plane list refuses to dial with a clear error instead of
// falling back to the node list.
func TestControlPlaneTrustIsSeparate(t *testing.T) {
	// The control plane runs the node image (AltMeasurement), which its own
	// policy and every agent's node list accept.
	cp := cptest.Start(t, cptest.Options{
		Policy:   cptest.Policy(t, cptest.GoodMeasurement, cptest.AltMeasurement),
		Provider: cptest.SimNode(t, sim.NodeConfig{Measurement: cptest.AltMeasurement}),
	})
	agentPolicy := func(cpList ...[]byte) *attest.Policy {
		p := cptest.Policy(t, cptest.GoodMeasurement, cptest.AltMeasurement)
		p.ControlPlane = nil
		if len(cpList) > 0 {
			p.ControlPlane = &attest.ControlPlanePolicy{}
			for _, m := range cpList {
				p.ControlPlane.Measurements = append(p.ControlPlane.Measurements, m)
			}
		}
		return p
	}
	node := func(t *testing.T, name string, p *attest.Policy) *cptest.Agent {
		return cptest.NewAgent(t, name, cptest.SimNode(t, sim.NodeConfig{}), p)
	}

	t.Run("control-plane list lacks its measurement", func(t *testing.T) {
		a := node(t, "node-a", agentPolicy(cptest.GoodMeasurement))
		_, err := a.Dial(t, cp)
		// The reason label names the failed check.
		if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !strings.Contains(err.Error(), "refused: measurement:") {
			t.Fatalf("dial a control plane running a node image: err = %v, want it refused for its measurement", err)
		}
		if _, err := a.TryJoin(t, cp); err == nil {
			t.Fatal("joined a control plane the agent's control-plane list does not name")
		}
	})
	t.Run("no control-plane list", func(t *testing.T) {
		a := node(t, "node-b", agentPolicy())
		_, err := a.Dial(t, cp)
		if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !errors.Is(err, attest.ErrNoControlPlaneTrust) ||
			!strings.Contains(err.Error(), "controlPlane.measurements") {
			t.Fatalf("dial with no control-plane list: err = %v, want a refusal naming controlPlane.measurements", err)
		}
	})
	t.Run("control-plane list names it", func(t *testing.T) {
		a := node(t, "node-c", agentPolicy(cptest.AltMeasurement))
		conn, err := a.Dial(t, cp)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		if !strings.EqualFold(conn.Claims.Measurement.String(), attest.HexBytes(cptest.AltMeasurement).String()) {
			t.Errorf("control plane claims measurement %s", conn.Claims.Measurement)
		}
		conn.Close()
		a.Join(t, cp)
		// Reconnecting (the mTLS dial after join) applies the same list.
		a.MTLS(t, cp).Close()
	})
}
