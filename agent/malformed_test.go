package agent

import (
	"bytes"
	"errors"
	"os"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"google.golang.org/protobuf/proto"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
)

// TestPeerCheckRefusesCraftedTDXQuote: a control plane that hands out a
// peer whose evidence is the crash input of issue 21 (a TDX v5 quote whose
// signed data is too short for its signature) gets that peer refused with
// reason malformed; the agent does not die, and the next honest peer
// still verifies.
func TestPeerCheckRefusesCraftedTDXQuote(t *testing.T) {
	pcFixture(t)
	crafted, err := os.ReadFile("../internal/attest/testdata/tdx/crash_v5_signed48.dat")
	if err != nil {
		t.Fatal(err)
	}
	p := pcPolicy(pcMeas)
	p.TDX = &attest.TDXPolicy{MRTDs: []attest.HexBytes{bytes.Repeat([]byte{0x7d}, 48)}, AcceptedTCBStatuses: []string{"UpToDate"}}
	p.TrustedRoots = append(p.TrustedRoots, attest.RootRef{Kind: attest.RootIntel})
	c := checker(t, p)
	honest := peerRecord(t, "node-b", sim.NodeConfig{})
	for _, tee := range []string{attest.TEETDX, attest.TEESimTDX} {
		rec := proto.Clone(honest).(*cpv1.Peer)
		rec.Evidence.Tee, rec.Evidence.Report, rec.Evidence.Chain = tee, crafted, nil
		_, _, err := c.Check(rec)
		if !errors.Is(err, attest.ErrMalformed) || PeerReason(err) != "malformed" {
			t.Fatalf("crafted %s quote: err = %v (reason %s), want reason malformed", tee, err, PeerReason(err))
		}
		t.Logf("refused: %s: %v", PeerReason(err), err)
	}
	if _, _, err := c.Check(honest); err != nil {
		t.Fatalf("honest peer after the crafted one: %v", err)
	}
}
