//go:build linux

package e2e

import (
	"net/netip"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// TestUnderlayCarriesOnlyWireGuard captures every frame on the underlay
// bridge while a pod on node-1 sends known random payloads to a pod on
// node-2 over UDP and TCP: no frame may carry a payload, every frame
// between node addresses must be WireGuard (UDP 51820 <-> 51820) and every
// frame between a node and the control plane TCP to or from port 7443. The
// receiver must get the payloads, so the test cannot pass by sending
// nothing, and a control datagram sent in clear on the underlay must be
// seen, so it cannot pass with a blind capture.
func TestUnderlayCarriesOnlyWireGuard(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	a, b := c.AddPod(n1), c.AddPod(n2)

	// The capture sees what crosses the bridge: a datagram sent in
	// clear between two node namespaces.
	control := netlab.RandomPayload("control, sent in clear on purpose", 32)
	capt := c.StartCapture(10 * time.Second)
	dst := netip.AddrPortFrom(n2.IP, netlab.RandomPort())
	r, err := netlab.ListenUDP(n2.NS, dst)
	if err != nil {
		t.Fatal(err)
	}
	s, err := netlab.DialUDP(n1.NS, dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlab.Eventually(5*time.Second, 50*time.Millisecond, func() error {
		if r.Has(control) {
			return nil
		}
		_, err := s.Write(control)
		if err == nil {
			err = netlab.ErrNotYet
		}
		return err
	}); err != nil {
		t.Fatalf("control datagram on the underlay: %v", err)
	}
	s.Close()
	r.Close()
	frames, err := capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if netlab.FramesContaining(frames, control) == 0 {
		t.Fatalf("the capture on the bridge did not see a datagram sent in clear between two nodes; frames:\n%s", netlab.Summarize(frames))
	}

	// The real thing.
	udpPayload := netlab.RandomPayload("udp pod payload", 48)
	tcpReq := netlab.RandomPayload("tcp pod request", 4000)
	tcpResp := netlab.RandomPayload("tcp pod reply", 4000)
	capt = c.StartCapture(30 * time.Second)
	if err := netlab.SendUDP(a, b, udpPayload, 10*time.Second); err != nil {
		t.Errorf("UDP %s -> %s: %v", a.Name, b.Name, err)
	}
	if err := netlab.ExchangeTCP(a, b, tcpReq, tcpResp, 10*time.Second); err != nil {
		t.Errorf("TCP %s <-> %s: %v", a.Name, b.Name, err)
	}
	frames, err = capt.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("underlay frames while the pods talked:\n%s", netlab.Summarize(frames))
	for what, p := range map[string][]byte{"UDP payload": udpPayload, "TCP request": tcpReq[:64], "TCP reply": tcpResp[:64]} {
		if n := netlab.FramesContaining(frames, p); n > 0 {
			t.Errorf("%s seen in clear in %d frames on the underlay", what, n)
		}
	}
	if bad := c.UnderlayViolations(frames); len(bad) > 0 {
		t.Errorf("frames the underlay must not carry:\n%v", bad)
	}
	wg := 0
	for _, f := range frames {
		p := netlab.Parse(f)
		if p.Proto == netlab.ProtoUDP && p.Src == n1.IP && p.Dst == n2.IP && p.DstPort == netlab.WireGuardPort {
			wg++
		}
	}
	if wg == 0 {
		t.Errorf("no WireGuard frame from %s to %s captured while the pods talked", n1.IP, n2.IP)
	}
}
