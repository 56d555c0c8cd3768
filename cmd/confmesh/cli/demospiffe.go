//go:build linux

package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// inPod runs this binary with args as a workload of pod p: a whole process
// in the pod's network namespace (the Workload API identifies callers by
// the namespace of the process that connects), with SPIFFE_ENDPOINT_SOCKET
// naming its node's Workload API.
func (d *demo) inPod(ctx context.Context, p *netlab.Pod, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NS, d.self}, args...)...)
	c.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET=unix://"+p.Node.WorkloadSocket)
	return c
}

// runInPod runs a workload command to its end; it returns stdout, and an
// error holding stderr when it fails.
func (d *demo) runInPod(p *netlab.Pod, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := d.inPod(ctx, p, args...)
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%v: %s", err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// stepSPIFFE: (d) frontend (node-1) calls payments (node-2) over SPIFFE
// mTLS; payments authorises by SPIFFE ID and node claims, refuses catalog;
// the underlay is captured meanwhile.
func (d *demo) stepSPIFFE() error {
	front, pay := d.pods[0], d.pods[1]
	wrong := d.pods[len(d.pods)-1]
	if len(d.extra) > 0 {
		wrong = d.extra[0]
	} else if len(d.pods) >= 3 {
		wrong = d.pods[2]
	}
	frontID, payID, wrongID := d.spiffeID(front.ServiceAccount), d.spiffeID(pay.ServiceAccount), d.spiffeID(wrong.ServiceAccount)

	capt, err := d.c.StartCapture(60 * time.Second)
	if err != nil {
		return err
	}
	frames, stepErr := d.spiffeExchange(front, pay, wrong, frontID, payID, wrongID)
	captured, cerr := capt.Stop()
	if stepErr != nil || cerr != nil {
		return errors.Join(stepErr, cerr)
	}
	n1, n2 := front.Node, pay.Node
	bad := d.c.UnderlayViolations(captured)
	clear := 0
	for _, marker := range frames {
		clear += netlab.FramesContaining(captured, marker)
	}
	wg := 0
	for _, f := range captured {
		p := netlab.Parse(f)
		if p.Proto == netlab.ProtoUDP && p.DstPort == netlab.WireGuardPort &&
			((p.Src == n1.IP && p.Dst == n2.IP) || (p.Src == n2.IP && p.Dst == n1.IP)) {
			wg++
		}
	}
	d.say("underlay during this step: %d frames; other than WireGuard, ARP or control-plane TLS: %d; holding the messages or SPIFFE IDs in clear: %d; WireGuard frames between %s and %s: %d",
		len(captured), len(bad), clear, n1.Name, n2.Name, wg)
	var problems []string
	if len(bad) > 0 {
		problems = append(problems, "frames the underlay must not carry:\n"+strings.Join(bad, "\n"))
	}
	if clear > 0 {
		problems = append(problems, fmt.Sprintf("%d frames carried the exchange in clear", clear))
	}
	if wg == 0 {
		problems = append(problems, "no WireGuard frame between the two nodes during the mTLS calls")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "\n"))
	}
	return nil
}

// spiffeExchange runs the SVID fetch, the accepted call and the refused
// one, narrating both sides. It returns the byte strings that must never
// appear in clear on the underlay.
func (d *demo) spiffeExchange(front, pay, wrong *netlab.Pod, frontID, payID, wrongID string) ([][]byte, error) {
	marker := fmt.Sprintf("order-%x", netlab.RandomPayload("", 8))
	secrets := [][]byte{[]byte(marker), []byte(frontID), []byte(payID), []byte(wrongID)}

	d.say("$ confmesh demo exec %s -- confmesh demo svid", podLabel(front))
	out, err := d.runInPod(front, "demo", "svid")
	if err != nil {
		return secrets, fmt.Errorf("%s: no SVID: %v", podLabel(front), err)
	}
	d.indent(out)
	if !strings.Contains(out, "SPIFFE ID:   "+frontID+"\n") {
		return secrets, fmt.Errorf("%s got %q, want SPIFFE ID %s", podLabel(front), out, frontID)
	}

	// payments serves until it is sent SIGTERM.
	addr := net.JoinHostPort(pay.IP.String(), "8443")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := d.inPod(ctx, pay, "demo", "serve", "--listen", addr, "--allow", frontID, "--tee", d.teeList())
	stdout, err := srv.StdoutPipe()
	if err != nil {
		return secrets, err
	}
	var stderr bytes.Buffer
	srv.Stderr = &stderr
	if err := srv.Start(); err != nil {
		return secrets, err
	}
	defer func() {
		// `ip netns exec` execs the server: the PID is its own.
		_ = srv.Process.Signal(syscall.SIGTERM)
		_ = srv.Wait()
	}()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	next := func(what string) (string, error) {
		select {
		case l, ok := <-lines:
			if !ok {
				return "", fmt.Errorf("%s: the server in %s ended: %s", what, podLabel(pay), strings.TrimSpace(stderr.String()))
			}
			return l, nil
		case <-time.After(20 * time.Second):
			return "", fmt.Errorf("%s: nothing from the server in %s within 20 s", what, podLabel(pay))
		}
	}
	l, err := next("start")
	if err != nil {
		return secrets, err
	}
	d.say("$ confmesh demo exec %s -- confmesh demo serve --listen %s --allow %s &", podLabel(pay), addr, frontID)
	d.indent(l + "\n(accepts only " + frontID + " on a " + d.teeList() + " node with the all-zero measurement, checked with pkg/claims)")
	if !strings.Contains(l, "serving "+payID) {
		return secrets, fmt.Errorf("server in %s: %q, want it serving as %s", podLabel(pay), l, payID)
	}

	call := func(p *netlab.Pod) (string, error) {
		d.say("$ confmesh demo exec %s -- confmesh demo call %s --server-id %s", podLabel(p), addr, payID)
		return d.runInPod(p, "demo", "call", addr, "--server-id", payID, "--message", marker, "--tee", d.teeList())
	}
	out, err = call(front)
	if err != nil {
		return secrets, fmt.Errorf("%s -> %s: %v", podLabel(front), podLabel(pay), err)
	}
	d.indent(out)
	seen, err := next("accepted call")
	if err != nil {
		return secrets, err
	}
	d.say("%s's view:", podLabel(pay))
	d.indent(seen)
	if !strings.HasPrefix(seen, "accepted "+frontID+" (node "+front.Node.Name+", "+teeOf(front.Node)+", measurement 0000") {
		return secrets, fmt.Errorf("server in %s: %q, want it to accept %s on %s", podLabel(pay), seen, frontID, front.Node.Name)
	}
	if !strings.Contains(out, "mTLS ok: I am "+frontID+"; server "+payID+" (node "+pay.Node.Name+", "+teeOf(pay.Node)) || !strings.Contains(out, marker) {
		return secrets, fmt.Errorf("%s: %q, want an mTLS ok naming %s on %s and the reply", podLabel(front), out, payID, pay.Node.Name)
	}
	d.say("mTLS: %s -> %s ok; %s saw peer %s on %s (%s), %s saw peer %s on %s (%s), measurement 0000…",
		front.PodName, pay.PodName, front.PodName, payID, pay.Node.Name, teeOf(pay.Node), pay.PodName, frontID, front.Node.Name, teeOf(front.Node))

	out, err = call(wrong)
	if err == nil {
		return secrets, fmt.Errorf("%s (service account %s) was served: %q", podLabel(wrong), wrong.ServiceAccount, out)
	}
	d.indent(err.Error())
	seen, err = next("refused call")
	if err != nil {
		return secrets, err
	}
	d.say("%s's view:", podLabel(pay))
	d.indent(seen)
	if !strings.HasPrefix(seen, "refused "+wrongID) {
		return secrets, fmt.Errorf("server in %s: %q, want it to refuse %s", podLabel(pay), seen, wrongID)
	}
	d.say("mTLS: %s -> %s refused by %s's authorizer: %s is not an allowed caller", wrong.PodName, pay.PodName, pay.PodName, wrongID)
	return secrets, nil
}
