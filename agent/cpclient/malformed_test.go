package cpclient_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/identity"
)

// TestAgentRefusesCraftedControlPlaneQuote: a server posing as the control
// plane answers Challenge with the crash input of issue 21 (a TDX v5
// quote whose signed data is too short for its signature). The agent's
// dial is refused with reason malformed, and the same agent then dials a
// control plane with honest evidence.
func TestAgentRefusesCraftedControlPlaneQuote(t *testing.T) {
	crafted, err := os.ReadFile("../../internal/attest/testdata/tdx/crash_v5_signed48.dat")
	if err != nil {
		t.Fatal(err)
	}
	p := cptest.Policy(t, cptest.GoodMeasurement)
	mrtd := bytes.Repeat([]byte{0x7d}, 48)
	p.TDX = &attest.TDXPolicy{MRTDs: []attest.HexBytes{mrtd}, AcceptedTCBStatuses: []string{"UpToDate"}}
	p.ControlPlane.MRTDs = []attest.HexBytes{mrtd}
	p.TrustedRoots = append(p.TrustedRoots, attest.RootRef{Kind: attest.RootIntel})
	agent := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), p)

	f := &fakeControlPlane{}
	addr, keyHash := serveFake(t, f)
	ch, _ := attest.NewChallenge(time.Now())
	name := identity.ControlPlaneID(cptest.TrustDomain).String()
	for _, tee := range []string{attest.TEETDX, attest.TEESimTDX} {
		f.evidence = &attestv1.Evidence{Tee: tee, Report: crafted, Binding: &attestv1.Binding{
			Purpose: string(attest.PurposeControlPlane), Challenge: ch, IdentityKeyHash: keyHash, Name: name, Key: keyHash}}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := cpclient.Dial(ctx, cpclient.Config{Addr: addr, Verifier: agent.Verifier, TrustDomain: cptest.TrustDomain})
		cancel()
		if !errors.Is(err, cpclient.ErrControlPlaneRefused) || !strings.Contains(err.Error(), "refused: malformed:") {
			t.Fatalf("crafted %s quote from the control plane: err = %v, want a refusal with reason malformed", tee, err)
		}
		t.Logf("refused: %v", err)
	}
	cp := cptest.Start(t, cptest.Options{})
	conn, err := agent.Dial(t, cp)
	if err != nil {
		t.Fatalf("dial an honest control plane after the crafted one: %v", err)
	}
	conn.Close()
}
