//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestAgentTrustsOnlyItsControlPlaneList: the lab's control plane runs the
// image every agent's node list approves (the zero measurement). An agent
// whose controlPlane.measurements does not name it, and one whose policy
// has no control-plane list, refuse it (real binaries over the real gRPC
// API): they stay unattested with the refusal in their ready reason, and
// the honest nodes, whose list names it, join as before (and show each
// other's product and TCB in `confmesh peers`).
func TestAgentTrustsOnlyItsControlPlaneList(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	honest, other := c.Nodes[0], c.Nodes[1]
	refusing := map[*Node]string{
		c.AddNode(NodeOptions{Policy: &Policy{ControlPlaneMeasurements: []string{netlab.OtherMeasurement}}}): "control plane refused: measurement",
		c.AddNode(NodeOptions{Policy: &Policy{TrustNoControlPlane: true}}):                                   "control plane refused: no_controlplane_policy",
	}
	for n, want := range refusing {
		var last *Status
		err := netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
			if done, werr := n.Agent().Exited(); done {
				return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
			}
			st, err := n.Status()
			if err != nil {
				return err
			}
			last = st
			if st.Attested {
				return netlab.Permanent(fmt.Errorf("attested to a control plane its policy does not list (ready=%v %q)", st.Ready, st.ReadyReason))
			}
			if !strings.Contains(st.ReadyReason, want) {
				return fmt.Errorf("ready reason %q does not name %q yet", st.ReadyReason, want)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s (%s): %v", n.Name, want, err)
		}
		t.Logf("%s: attested=%v ready=%v reason=%q", n.Name, last.Attested, last.Ready, last.ReadyReason)
	}
	// The honest nodes joined; the refusing ones never do, and no node
	// lists them as peers.
	st, err := honest.Status()
	if err != nil || !st.Attested {
		t.Fatalf("honest node: attested=%v err=%v", st != nil && st.Attested, err)
	}
	peers, err := honest.Peers()
	if err != nil {
		t.Fatal(err)
	}
	if len(peers) != 1 || peers[0].Name != other.Name || peers[0].Product != "Milan" || peers[0].ReportedTCB == nil || peers[0].ReportedTCB.FMC != nil {
		t.Fatalf("honest node's peers %+v: want %s verified with its product (Milan) and TCB, no fmc", peers, other.Name)
	}
	deadline := time.Now().Add(observeFor)
	for time.Now().Before(deadline) {
		for n := range refusing {
			st, err := n.Status()
			if err != nil {
				t.Fatal(err)
			}
			if st.Attested {
				t.Fatalf("%s became attested", n.Name)
			}
		}
		peers, err := honest.Peers()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range peers {
			if p.Name != other.Name {
				t.Fatalf("honest node lists %s as a peer; the refusing nodes never joined", p.Name)
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
}
