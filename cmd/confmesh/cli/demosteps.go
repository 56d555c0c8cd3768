//go:build linux

package cli

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// demoStep is one claim the demo shows and checks.
type demoStep struct {
	id, title string
	proves    string // printed when the check held
	run       func() error
}

func (d *demo) steps() []demoStep {
	return []demoStep{
		{"a", "every node is attested and verified its peers itself",
			"each agent verified the control plane's report before joining, the control plane verified each node's, and each agent verified every peer's evidence under its own policy before configuring it",
			d.stepStatus},
		{"b", "pod-to-pod UDP across nodes",
			"pods on different nodes reach each other through the WireGuard mesh",
			d.stepTraffic},
		{"c", "the underlay carries only WireGuard",
			"pod payloads cross the underlay only inside WireGuard (UDP 51820); nothing else but ARP and the agents' TLS to the control plane",
			d.stepUnderlay},
		{"d", "SPIFFE identities: mTLS between pods on different nodes",
			"each pod got its own SPIFFE ID from its node's Workload API; the server authorised the caller by SPIFFE ID and by its node's attestation claims, refused another service account, and the exchange crossed the underlay only inside WireGuard",
			d.stepSPIFFE},
		{"e", "a rogue node (debug TEE) is refused",
			"a node whose attestation report fails the policy gets no identity, no pod CIDR and no tunnel",
			d.stepRogue},
		{"f", "revoking a node",
			"a revoked node is removed by every peer within seconds, and strict mode drops traffic to it instead of sending it in clear; the other nodes stay meshed",
			d.stepRevoke},
	}
}

// stepStatus: (a) every node's `confmesh status`.
func (d *demo) stepStatus() error {
	n1 := d.honest[0]
	d.say("$ confmesh status --socket %s", n1.Socket)
	text, err := d.c.CLI("status", "--socket", n1.Socket)
	if err != nil {
		return err
	}
	d.indent(text)
	var problems []string
	for _, n := range d.honest {
		st, err := n.Status()
		if err != nil {
			return err
		}
		var verified, other []string
		for _, p := range st.Peers {
			if p.State == "verified" {
				verified = append(verified, p.Name)
			} else {
				other = append(other, fmt.Sprintf("%s %s (%s)", p.Name, p.State, p.Reason))
			}
		}
		d.say("%s: attested=%v tee=%s datapath=%s strict=%v verified peers: %s", n.Name, st.Attested, st.TEE, st.Datapath,
			onOff(st.StrictMode), strings.Join(verified, ", "))
		switch {
		case !st.Attested || !st.Ready:
			problems = append(problems, fmt.Sprintf("%s: attested=%v ready=%v %s", n.Name, st.Attested, st.Ready, st.ReadyReason))
		case st.TEE != teeOf(n) || st.Datapath != "userspace" || !st.StrictMode:
			problems = append(problems, fmt.Sprintf("%s: tee=%q datapath=%q strictMode=%v, want %s, userspace, true", n.Name, st.TEE, st.Datapath, st.StrictMode, teeOf(n)))
		case len(verified) != d.nodes-1 || len(other) > 0:
			problems = append(problems, fmt.Sprintf("%s: %d verified peers, want %d; others: %s", n.Name, len(verified), d.nodes-1, strings.Join(other, "; ")))
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// stepTraffic: (b) a datagram from every pod to every pod on another node.
func (d *demo) stepTraffic() error {
	var problems []string
	for _, a := range d.pods {
		for _, b := range d.pods {
			if a == b {
				continue
			}
			err := netlab.SendUDP(a, b, netlab.RandomPayload("demo "+a.Name+" to "+b.Name, 32), 10*time.Second)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s -> %s: %v", podLabel(a), podLabel(b), err))
				d.say("%s (%s) -> %s (%s): NOT delivered", podLabel(a), a.IP, podLabel(b), b.IP)
				continue
			}
			d.say("%s (%s) -> %s (%s): delivered", podLabel(a), a.IP, podLabel(b), b.IP)
		}
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// stepUnderlay: (c) capture on the bridge while pods talk.
func (d *demo) stepUnderlay() error {
	n1, n2 := d.honest[0], d.honest[1]
	a, b := d.pods[0], d.pods[1]
	// First show that the capture is not blind: a datagram sent in clear
	// between two node namespaces must be in it.
	control := netlab.RandomPayload("control datagram, in clear on purpose", 32)
	capt, err := d.c.StartCapture(10 * time.Second)
	if err != nil {
		return err
	}
	err = sendClear(n1, n2, control)
	frames, cerr := capt.Stop()
	if err = errors.Join(err, cerr); err != nil {
		return err
	}
	if netlab.FramesContaining(frames, control) == 0 {
		return fmt.Errorf("the capture did not see a datagram sent in clear from %s to %s: it is blind", n1.Name, n2.Name)
	}
	d.say("control: a datagram sent in clear from %s to %s IS seen by the capture on %s (it is not blind)", n1.IP, n2.IP, d.c.Bridge)

	payload := netlab.RandomPayload("secret pod payload", 48)
	const count = 20
	d.say("capturing every frame on %s while %s sends %d datagrams with a marked payload to %s ...", d.c.Bridge, podLabel(a), count, podLabel(b))
	capt, err = d.c.StartCapture(20 * time.Second)
	if err != nil {
		return err
	}
	arrived, err := netlab.CountUDP(a, b, payload, count, 10*time.Millisecond, time.Second)
	frames, cerr = capt.Stop()
	if err = errors.Join(err, cerr); err != nil {
		return err
	}
	d.say("%d of %d datagrams arrived; %d frames captured:", arrived, count, len(frames))
	d.indent(netlab.Summarize(frames))
	clear := netlab.FramesContaining(frames, payload)
	bad := d.c.UnderlayViolations(frames)
	wg := 0
	for _, f := range frames {
		p := netlab.Parse(f)
		if p.Proto == netlab.ProtoUDP && p.Src == n1.IP && p.Dst == n2.IP && p.DstPort == netlab.WireGuardPort {
			wg++
		}
	}
	d.say("frames holding the payload in clear: %d; frames other than WireGuard, ARP or control-plane TLS: %d; WireGuard frames %s -> %s: %d",
		clear, len(bad), n1.IP, n2.IP, wg)
	var problems []string
	if arrived == 0 {
		problems = append(problems, "no datagram arrived")
	}
	if clear > 0 {
		problems = append(problems, fmt.Sprintf("the payload crossed the underlay in clear in %d frames", clear))
	}
	if len(bad) > 0 {
		problems = append(problems, "frames the underlay must not carry:\n"+strings.Join(bad, "\n"))
	}
	if wg == 0 {
		problems = append(problems, "no WireGuard frame captured while the pods talked")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// sendClear sends payload in clear from node a's namespace to node b's
// (underlay addresses) until it arrives, at most 5 s.
func sendClear(a, b *netlab.Node, payload []byte) error {
	dst := netip.AddrPortFrom(b.IP, netlab.RandomPort())
	r, err := netlab.ListenUDP(b.NS, dst)
	if err != nil {
		return err
	}
	defer r.Close()
	s, err := netlab.DialUDP(a.NS, dst)
	if err != nil {
		return err
	}
	defer s.Close()
	return netlab.Eventually(5*time.Second, 50*time.Millisecond, func() error {
		if r.Has(payload) {
			return nil
		}
		_, err := s.Write(payload)
		if err == nil {
			err = netlab.ErrNotYet
		}
		return err
	})
}

// stepRogue: (d) a node with the debug bit asks to join.
func (d *demo) stepRogue() error {
	rogue, err := d.c.AddNode(netlab.NodeOptions{SimDebug: true})
	d.rogue = rogue
	if err != nil {
		return err
	}
	d.say("%s: agent started with --sim-debug (its simulated report has the DEBUG policy bit), namespace %s", rogue.Name, rogue.NS)
	var st *netlab.Status
	err = netlab.Eventually(20*time.Second, netlab.PollEvery, func() error {
		if done, werr := rogue.Agent().Exited(); done {
			return netlab.Permanent(fmt.Errorf("agent exited: %v", werr))
		}
		s, err := rogue.Status()
		if err != nil {
			return err
		}
		st = s
		if s.Attested {
			return netlab.Permanent(fmt.Errorf("%s became attested: the control plane admitted a debug guest", rogue.Name))
		}
		if !strings.Contains(s.ReadyReason, "debug") {
			return fmt.Errorf("ready reason %q does not name debug yet", s.ReadyReason)
		}
		return nil
	})
	if err != nil {
		return err
	}
	d.say("%s: attested=%v ready=%v; refused by the control plane:", rogue.Name, st.Attested, st.Ready)
	d.indent(st.ReadyReason)
	if st.Ready {
		return fmt.Errorf("%s is ready although not attested", rogue.Name)
	}
	recs, err := d.c.ListNodes()
	if err != nil {
		return err
	}
	listed := false
	for _, r := range recs {
		if r.Name == rogue.Name {
			listed = true
			d.say("confmesh nodes: %s %s %s", r.Name, r.State, r.Reason)
			if r.State == "active" {
				return fmt.Errorf("the control plane lists %s as active", rogue.Name)
			}
		}
	}
	if !listed {
		d.say("confmesh nodes: %s is not among the control plane's nodes", rogue.Name)
	}
	for _, n := range d.honest {
		if err := n.CheckPeers(netlab.Others(d.honest, n)...); err != nil {
			return fmt.Errorf("wgctrl: %v", err)
		}
		peers, err := n.Peers()
		if err != nil {
			return err
		}
		if slices.ContainsFunc(peers, func(p netlab.Peer) bool { return p.Name == rogue.Name }) {
			return fmt.Errorf("%s lists %s as a peer", n.Name, rogue.Name)
		}
	}
	d.say("no honest node knows %s: their WireGuard peers are still exactly each other", rogue.Name)
	return nil
}

// stepRevoke: (f) add a node for the purpose, with a pod, then revoke it;
// peers drop it, strict mode drops traffic to it, the --nodes nodes stay
// meshed (so a kept cluster is whole).
func (d *demo) stepRevoke() error {
	victim, err := d.c.AddNode(netlab.NodeOptions{})
	d.victim = victim
	if err != nil {
		return err
	}
	if err := victim.WaitReady(); err != nil {
		return err
	}
	all := append(append([]*netlab.Node(nil), d.honest...), victim)
	if err := d.c.WaitMesh(all...); err != nil {
		return err
	}
	to, err := d.addPod(victim, "legacy")
	if err != nil {
		return err
	}
	from := d.pods[0]
	if err := netlab.SendUDP(from, to, netlab.RandomPayload("before revocation", 32), 10*time.Second); err != nil {
		return fmt.Errorf("%s -> %s before the revocation: %v", podLabel(from), podLabel(to), err)
	}
	d.say("%s joined for this step and is meshed with every node; %s -> %s: delivered", victim.Name, podLabel(from), podLabel(to))
	rest := d.honest
	d.say("$ confmesh nodes revoke %s", victim.Name)
	out, err := d.c.Revoke(victim.Name)
	if err != nil {
		return err
	}
	d.indent(out)
	revoked := time.Now()
	err = netlab.Eventually(15*time.Second, netlab.PollEvery, func() error {
		for _, n := range rest {
			if has, err := n.HasPeerKey(victim.Key); err != nil {
				return err
			} else if has {
				return fmt.Errorf("%s still has %s's WireGuard key", n.Name, victim.Name)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s not removed everywhere: %v", victim.Name, err)
	}
	names := make([]string, len(rest))
	for i, n := range rest {
		names[i] = n.Name
	}
	d.say("%s's WireGuard key is gone from %s, %s after the revocation", victim.Name, strings.Join(names, ", "), time.Since(revoked).Round(time.Millisecond))
	d.say("$ confmesh nodes")
	table, err := d.c.CLI(append([]string{"nodes"}, d.c.AdminArgs()...)...)
	if err != nil {
		return err
	}
	d.indent(table)
	d.say("$ confmesh nodes --all")
	table, err = d.c.CLI(append([]string{"nodes", "--all"}, d.c.AdminArgs()...)...)
	if err != nil {
		return err
	}
	d.indent(table)
	// The revoked node learns it from its watch and drops every tunnel
	// itself: no stale peers, no handshakes from it.
	var own *netlab.Status
	err = netlab.Eventually(15*time.Second, netlab.PollEvery, func() error {
		st, err := victim.Status()
		if err != nil {
			return err
		}
		dev, err := victim.WGDevice()
		if err != nil {
			return err
		}
		if st.State != "revoked" || len(dev.Peers) != 0 {
			return fmt.Errorf("%s's own agent: state %q, %d WireGuard peers; want revoked and none", victim.Name, st.State, len(dev.Peers))
		}
		own = st
		return nil
	})
	if err != nil {
		return err
	}
	d.say("%s's own agent: state %s (%s), 0 WireGuard peers: it dropped every tunnel and stopped calling the control plane", victim.Name, own.State, own.StateReason)

	n1 := from.Node
	before, _, err := n1.StrictCounters()
	if err != nil {
		return err
	}
	payload := netlab.RandomPayload("to a revoked node", 48)
	const count = 20
	capt, err := d.c.StartCapture(20 * time.Second)
	if err != nil {
		return err
	}
	arrived, err := netlab.CountUDP(from, to, payload, count, 20*time.Millisecond, 300*time.Millisecond)
	frames, cerr := capt.Stop()
	if err = errors.Join(err, cerr); err != nil {
		return err
	}
	after, _, err := n1.StrictCounters()
	if err != nil {
		return err
	}
	clear := netlab.FramesContaining(frames, payload)
	d.say("%s -> %s: %d of %d datagrams arrived; payload in clear on the underlay: %d frames", podLabel(from), podLabel(to), arrived, count, clear)
	refused, err := n1.RoutingRefuses(to.IP)
	if err != nil {
		return err
	}
	d.say("strict_out_drop on %s: %d -> %d (+%d)", n1.Name, before, after, after-before)
	if refused {
		d.say("%s's routing table refuses %s: strict mode's fail-closed route for the cluster CIDR (the revoked node's pod CIDR has no route through the tunnel any more) drops it before the out chain, not sent in clear", n1.Name, to.IP)
	}
	var problems []string
	if arrived != 0 {
		problems = append(problems, fmt.Sprintf("%d datagrams reached the revoked node's pod", arrived))
	}
	if clear > 0 {
		problems = append(problems, fmt.Sprintf("the payload crossed the underlay in clear in %d frames", clear))
	}
	if !refused && after-before < count {
		problems = append(problems, fmt.Sprintf("neither refused by the fail-closed route nor counted: strict_out_drop rose by %d, want at least %d", after-before, count))
	}
	if err := d.c.WaitMesh(d.honest...); err != nil {
		problems = append(problems, fmt.Sprintf("after the revocation: %v", err))
	} else {
		d.say("%s: still a full mesh of each other (checked with wgctrl)", strings.Join(names, ", "))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}
