//go:build linux

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/netlab"
	"github.com/spf13/cobra"
)

// demoRuns names everything the demo creates: "cmdemo-<run ID>-1-...", a
// lock in /run/cmdemo while a demo runs. One cluster per run, so a
// one-digit cluster ID (device names: "cmdemo-1a2b-1n7" is 15 bytes).
var demoRuns = netlab.Runs{NamePrefix: "cmdemo-", LockDir: "/run/cmdemo", ClusterIDWidth: 1}

// Demo bounds.
const (
	demoMinNodes = 2
	demoMaxNodes = 6
)

// demoPodPlan names the demo's pods: pod i runs on node i, in Kubernetes
// namespace "shop", with the service account of its name.
var demoPodPlan = []string{"frontend", "payments", "catalog", "orders", "cart", "search"}

const demoK8sNamespace = "shop"

type demoFlags struct {
	tee     string
	nodes   int
	keep    bool
	cleanup bool
	all     bool
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo [--nodes N] [--keep] | --cleanup [RUN | --all]",
		Short: "run a local multi-node confmesh in network namespaces and show what it guarantees",
		Long: `Build a local cluster out of network namespaces on this machine: a control
plane and --nodes node agents (this binary, each in its own namespace, on the
SIMULATED TEE sim-snp, userspace WireGuard), joined by an underlay bridge;
one pod per node, made by the real confmesh-cni plugin (found next to this
binary) through libcni, as a container runtime makes it: shop/frontend on
node-1, shop/payments on node-2, shop/catalog, ... each with the service
account of its name in the node's root-only pod-metadata file. Then show,
step by step, with a check for each:

  (a) every node is attested, on sim-snp, userspace datapath, strict mode on,
      and has verified every peer itself;
  (b) pods on different nodes reach each other over UDP;
  (c) a capture on the underlay during that traffic holds only WireGuard
      (UDP 51820), ARP and the agents' TLS to the control plane: the payload
      never appears in clear;
  (d) frontend fetches its X.509-SVID from node-1's Workload API and calls
      payments on node-2 over SPIFFE mTLS; payments authorises it by SPIFFE
      ID and by its node's attestation claims (pkg/claims: TEE,
      measurement), and refuses catalog (another service account); the
      underlay meanwhile carries only WireGuard;
  (e) a rogue node whose TEE has the debug bit is refused by the control
      plane (the reason is printed);
  (f) 'confmesh nodes revoke' removes a node added for the purpose from
      every peer within seconds, and strict mode drops traffic to it
      (strict_out_drop); the --nodes nodes stay meshed.

Everything is torn down afterwards (processes by PID, 'confmesh agent
cleanup', namespaces) unless --keep is given: then the pods, their
addresses, SPIFFE IDs and Workload API sockets are printed with commands to
paste ('confmesh demo exec TARGET -- CMD' runs CMD in a node's or a pod's
namespace). 'confmesh demo --cleanup' removes your kept run (RUN names one
when you keep several; --all removes every run of yours that has ended).
Runs of other users, runs still running and runs with processes that are
not the demo's are left alone and named.

Needs root (network namespaces, TUN, nftables, packet capture) and the ip
command (iproute2). Exit codes: 0 every step's check held; 1 a step failed
(named in the message), or not root; 2 usage error.`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 && !f.cleanup {
				return usageErrorf("unexpected argument %q (a run ID goes with --cleanup)", args[0])
			}
			if len(args) > 1 {
				return usageErrorf("--cleanup takes at most one run ID, got %d", len(args))
			}
			if f.all && (!f.cleanup || len(args) > 0) {
				return usageErrorf("--all goes with --cleanup and no run ID")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			switch f.tee {
			case demoTEESimSnp, demoTEESimTDX, demoTEEMixed:
			default:
				return usageErrorf("--tee %q: want %s, %s or %s", f.tee, demoTEESimSnp, demoTEESimTDX, demoTEEMixed)
			}
			if f.nodes < demoMinNodes || f.nodes > demoMaxNodes {
				return usageErrorf("--nodes %d: want %d to %d", f.nodes, demoMinNodes, demoMaxNodes)
			}
			if os.Geteuid() != 0 {
				return failf("confmesh demo needs root: it creates network namespaces, TUN devices, nftables rules and a packet capture (run it as root, e.g. sudo confmesh demo)")
			}
			if err := netlab.CheckHost(); err != nil {
				return failf("confmesh demo: %v", err)
			}
			out := cmd.OutOrStdout()
			if f.cleanup {
				target := ""
				if len(args) == 1 {
					target = args[0]
				}
				return demoCleanup(out, target, f.all)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, out, f)
		},
	}
	cmd.Flags().StringVar(&f.tee, "tee", demoTEESimSnp, "simulated TEE of the nodes: sim-snp, sim-tdx, or mixed (alternating, node-1 on sim-snp)")
	cmd.Flags().IntVar(&f.nodes, "nodes", 3, fmt.Sprintf("how many nodes (%d to %d)", demoMinNodes, demoMaxNodes))
	cmd.Flags().BoolVar(&f.keep, "keep", false, "leave the cluster running and print how to explore it and clean it up")
	cmd.Flags().BoolVar(&f.cleanup, "cleanup", false, "remove your kept demo run (or RUN, or with --all every ended run of yours) and exit")
	cmd.Flags().BoolVar(&f.all, "all", false, "with --cleanup: every run of yours whose demo has ended")
	cmd.MarkFlagsMutuallyExclusive("keep", "cleanup")
	cmd.AddCommand(newDemoExecCmd(), newDemoSVIDCmd(), newDemoServeCmd(), newDemoCallCmd())
	return cmd
}

// demoCleanup removes this user's ended runs: target, or the only one,
// or (all) every one; it names each run it leaves alone and why.
func demoCleanup(out io.Writer, target string, all bool) error {
	me, name := invokingUser()
	var views []runView
	for _, dir := range demoRunDirs() {
		views = append(views, viewRun(dir))
	}
	if target == "" && !all {
		var mine []string
		for _, v := range views {
			if v.state != nil && v.state.OwnerUID == me {
				mine = append(mine, v.state.Run)
			}
		}
		switch len(mine) {
		case 0:
			fmt.Fprintf(out, "nothing to clean up: no demo run of %s (uid %d) on this machine\n", name, me)
			reportOthers(out, views, me)
			return nil
		case 1:
			target = mine[0]
		default:
			return usageErrorf("you have %d demo runs (%s): name one (confmesh demo --cleanup RUN) or remove every ended one (--cleanup --all)", len(mine), strings.Join(mine, ", "))
		}
	}
	var errs []error
	found, refused := false, false
	for _, v := range views {
		verdict := decideCleanup(v, me, target, all)
		if v.state != nil && v.state.Run == target {
			found = true
		}
		switch {
		case verdict.remove:
			removed, rerrs := removeRun(v.state)
			fmt.Fprintf(out, "removed run %s (%s, started %s): %s\n", v.state.Run, v.state.Prefix, v.state.Started.Format(time.RFC3339), strings.Join(removed, ", "))
			errs = append(errs, rerrs...)
		case verdict.why == "not the run asked for":
		default:
			label := v.dir
			if v.state != nil {
				label = fmt.Sprintf("run %s (%s)", v.state.Run, v.dir)
				if v.state.Run == target {
					refused = true
				}
			}
			fmt.Fprintf(out, "left alone: %s: %s\n", label, verdict.why)
		}
	}
	if target != "" && !found {
		return failf("demo cleanup: no demo run %q on this machine", target)
	}
	if err := errors.Join(errs...); err != nil {
		return failf("demo cleanup: %v", err)
	}
	if refused {
		return failf("demo cleanup: run %s was left alone (see above)", target)
	}
	return nil
}

// reportOthers names the runs cleanup leaves alone because they are not
// this user's.
func reportOthers(out io.Writer, views []runView, me int) {
	for _, v := range views {
		if verdict := decideCleanup(v, me, "", true); !verdict.remove {
			label := v.dir
			if v.state != nil {
				label = fmt.Sprintf("run %s (%s)", v.state.Run, v.dir)
			}
			fmt.Fprintf(out, "left alone: %s: %s\n", label, verdict.why)
		}
	}
}

// runDemo builds the cluster, runs the steps and tears down (or keeps).
func runDemo(ctx context.Context, out io.Writer, f demoFlags) error {
	start := time.Now()
	self, err := os.Executable()
	if err != nil {
		return failf("demo: locate this binary: %v", err)
	}
	cniBin := filepath.Join(filepath.Dir(self), "confmesh-cni")
	if _, err := os.Stat(cniBin); err != nil {
		return failf("demo: the CNI plugin confmesh-cni must sit next to %s (make demo builds both; or: CGO_ENABLED=0 go build -o %s ./cmd/confmesh-cni): %v", self, filepath.Dir(self), err)
	}
	run, err := demoRuns.Start()
	if err != nil {
		return failf("demo: %v", err)
	}
	defer run.Release()
	dir, err := run.TempDir("state")
	if err != nil {
		return failf("demo: %v", err)
	}
	prefix, err := run.NextClusterPrefix()
	if err != nil {
		return failf("demo: %v", err)
	}
	uid, owner := invokingUser()
	d := &demo{out: out, self: self, nodes: f.nodes, tee: f.tee,
		c: netlab.NewCluster(netlab.Config{Prefix: prefix, Dir: dir, Bin: self, CNIBin: cniBin, OwnProcessGroup: true}),
		state: &demoState{Run: run.ID, RunPrefix: run.Prefix, Prefix: prefix, OwnerUID: uid, Owner: owner, DemoPID: os.Getpid(),
			Started: start.UTC(), Dir: dir, Bin: self}}
	if err := d.state.save(); err != nil {
		return failf("demo: record the run: %v", err)
	}

	fmt.Fprintf(out, "confmesh demo: a control plane and %d nodes in network namespaces on this machine,\n", f.nodes)
	fmt.Fprintf(out, "attesting with the SIMULATED TEE %s (development only: it proves nothing about hardware).\n", d.teeLabel())
	fmt.Fprintf(out, "run %s of %s; names start with %s; state and logs in %s\n", run.ID, owner, prefix, dir)
	if n := demoLeftovers(run.Prefix); n > 0 {
		fmt.Fprintf(out, "note: %d network namespaces left by earlier demos; 'confmesh demo --cleanup' removes yours\n", n)
	}

	steps := d.steps()
	var failed []string
	if err := d.setup(); err != nil {
		d.fail("setup", err)
		failed = append(failed, "setup")
	} else {
		for _, s := range steps {
			if ctx.Err() != nil {
				failed = append(failed, "interrupted before ("+s.id+")")
				break
			}
			d.section(fmt.Sprintf("(%s) %s", s.id, s.title))
			stepStart := time.Now()
			err := s.run()
			d.record()
			if err != nil {
				d.fail("("+s.id+") "+s.title, err)
				failed = append(failed, "("+s.id+") "+s.title)
				continue
			}
			d.say("PASS (%s): %s [%s]", s.id, s.proves, time.Since(stepStart).Round(100*time.Millisecond))
		}
	}
	d.record()
	interrupted := ctx.Err() != nil
	if f.keep && !interrupted && len(failed) == 0 {
		d.state.Kept = true
		d.record()
		d.printKeep()
	} else {
		// After a failure the logs stay for a look ('confmesh demo
		// --cleanup' removes them later).
		keepLogs := len(failed) > 0 && !interrupted
		if err := d.teardown(dir, keepLogs); err != nil {
			d.fail("teardown", err)
			failed = append(failed, "teardown")
		}
	}
	took := time.Since(start).Round(100 * time.Millisecond)
	fmt.Fprintln(out)
	if len(failed) > 0 {
		logs := ""
		if _, err := os.Stat(dir); err == nil {
			logs = fmt.Sprintf(" (process logs: %s/*.log)", dir)
		}
		return failf("demo: FAILED after %s: %s%s", took, strings.Join(failed, "; "), logs)
	}
	fmt.Fprintf(out, "demo: all %d steps held, in %s\n", len(steps), took)
	return nil
}

// demoLeftovers counts network namespaces of other demo runs.
func demoLeftovers(ownPrefix string) int {
	entries, _ := os.ReadDir(netlab.NetnsDir)
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), demoRuns.NamePrefix) && !strings.HasPrefix(e.Name(), ownPrefix) {
			n++
		}
	}
	return n
}

// demo is one run's cluster and narration.
type demo struct {
	tee    string // demoTEESimSnp, demoTEESimTDX or demoTEEMixed
	out    io.Writer
	self   string
	nodes  int
	c      *netlab.Cluster
	state  *demoState
	honest []*netlab.Node
	pods   []*netlab.Pod // one per honest node, in node order
	extra  []*netlab.Pod // catalog on node-1 when there are only two nodes
	rogue  *netlab.Node
	victim *netlab.Node // added and revoked in step (f)
	td     string       // trust domain
}

// section starts a titled part of the narration.
func (d *demo) section(title string) { fmt.Fprintf(d.out, "\n== %s\n", title) }

// say prints one line of narration.
func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

// indent prints text indented by four spaces.
func (d *demo) indent(text string) {
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Fprintf(d.out, "    %s\n", l)
	}
}

// fail reports a failed step.
func (d *demo) fail(what string, err error) {
	d.say("FAIL %s:", what)
	d.indent(err.Error())
}

// podLabel is how the demo names a pod: node-1/frontend.
func podLabel(p *netlab.Pod) string { return p.Node.Name + "/" + p.PodName }

// spiffeID is the workload SPIFFE ID of the demo's service account sa.
func (d *demo) spiffeID(sa string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", d.td, demoK8sNamespace, sa)
}

// addPod makes pod shop/<name> (service account <name>) on n with the
// CNI plugin, after writing its service account into n's pod-metadata file.
func (d *demo) addPod(n *netlab.Node, name string) (*netlab.Pod, error) {
	p, err := d.c.AddCNIPod(n, netlab.PodSpec{Namespace: demoK8sNamespace, Name: name, ServiceAccount: name})
	if err != nil {
		return nil, err
	}
	d.say("pod %s: Kubernetes pod %s/%s, service account %s, IP %s, network namespace %s (confmesh-cni ADD through libcni)",
		podLabel(p), p.Namespace, p.PodName, p.ServiceAccount, p.IP, p.NS)
	d.record()
	return p, nil
}

// setup builds the cluster: topology, control plane, nodes, full mesh, pods.
func (d *demo) setup() error {
	d.section("setup")
	t0 := time.Now()
	err := d.c.Start(netlab.Options{SimTDX: d.tee != demoTEESimSnp})
	d.record()
	if err != nil {
		return err
	}
	cp := d.c.CP
	d.say("underlay: bridge %s (%s/%d) in namespace %s; every node's default gateway", d.c.Bridge, netlab.BridgeIP, netlab.UnderlayBits, d.c.Underlay)
	d.say("control plane: namespace %s, listening on %s, pid %d (runs on sim-snp too: agents verify its report first)", cp.NS, cp.Addr, cp.Process().PID())
	for i := range d.nodes {
		n, err := d.c.AddNode(netlab.NodeOptions{TEE: d.nodeTEE(i)})
		d.record()
		if err != nil {
			return err
		}
		d.honest = append(d.honest, n)
	}
	for _, n := range d.honest {
		if err := n.WaitReady(); err != nil {
			return err
		}
		d.say("%s: %s, namespace %s, underlay %s, attested and ready, pod CIDR %s, WireGuard device %s", n.Name, teeOf(n), n.NS, n.IP, n.PodCIDR, n.Device)
	}
	if err := d.c.WaitMesh(d.honest...); err != nil {
		return err
	}
	d.say("full WireGuard mesh: every node has the other %d as peers (checked with wgctrl), %s after start", d.nodes-1, time.Since(t0).Round(time.Millisecond))
	st, err := d.honest[0].Status()
	if err != nil {
		return err
	}
	if td, ok := strings.CutPrefix(st.SPIFFEID, "spiffe://"); ok {
		d.td, _, _ = strings.Cut(td, "/")
	}
	if d.td == "" {
		return fmt.Errorf("%s: no SPIFFE ID in its status (%q)", d.honest[0].Name, st.SPIFFEID)
	}
	d.say("each node's agent reads the service account of its pods from its pod-metadata file (%s, root-only), never from the pod", filepath.Base(d.honest[0].PodMetadata))
	for i, n := range d.honest {
		p, err := d.addPod(n, demoPodPlan[i])
		if err != nil {
			return err
		}
		d.pods = append(d.pods, p)
	}
	if len(d.honest) < 3 {
		// Step (d) needs a caller with another service account.
		p, err := d.addPod(d.honest[0], demoPodPlan[2])
		if err != nil {
			return err
		}
		d.extra = append(d.extra, p)
	}
	return nil
}

// record writes what the run has created so far into its state file.
func (d *demo) record() {
	s := d.state
	s.Underlay, s.Bridge, s.TrustDomain = d.c.Underlay, d.c.Bridge, d.td
	s.Admin = nil
	if d.c.CP != nil {
		s.Admin = d.c.AdminArgs()
	}
	s.Namespaces = d.c.Namespaces()
	s.Processes = nil
	for _, p := range d.c.Processes() {
		s.Processes = append(s.Processes, stateProc{PID: p.PID(), Start: procStart(p.PID()), What: p.Name})
	}
	s.Nodes = nil
	for _, n := range d.c.Nodes() {
		role := "honest"
		switch n {
		case d.rogue:
			role = "rogue (refused)"
		case d.victim:
			role = "revoked"
		}
		s.Nodes = append(s.Nodes, stateNode{Name: n.Name, NS: n.NS, Device: n.Device, IP: n.IP.String(), StateDir: n.StateDir,
			Socket: n.Socket, WorkloadSocket: n.WorkloadSocket, Role: role})
	}
	s.Pods = nil
	for _, p := range d.c.Pods() {
		sp := statePod{Name: podLabel(p), Node: p.Node.Name, NS: p.NS, Namespace: p.Namespace, PodName: p.PodName,
			ServiceAccount: p.ServiceAccount, IP: p.IP.String(), WorkloadSocket: p.Node.WorkloadSocket}
		if p.ServiceAccount != "" && d.td != "" {
			sp.SPIFFEID = fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", d.td, p.Namespace, p.ServiceAccount)
		}
		s.Pods = append(s.Pods, sp)
	}
	if err := s.save(); err != nil {
		d.say("warning: could not record the run in %s: %v", s.Dir, err)
	}
}

// teardown stops everything and removes the state directory unless
// keepLogs.
func (d *demo) teardown(dir string, keepLogs bool) error {
	d.section("teardown")
	procs, nss := len(d.c.Processes()), len(d.c.Namespaces())
	if errs := d.c.Teardown(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	d.say("confmesh-cni DEL for every pod, stopped %d processes by PID, ran 'confmesh agent cleanup' on every node (rules, device, datapath), deleted %d namespaces", procs, nss)
	if keepLogs {
		d.say("kept %s for its logs; 'confmesh demo --cleanup %s' removes it", dir, d.state.Run)
		return nil
	}
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	d.say("removed %s", dir)
	return nil
}

// printKeep tells how to explore the kept cluster and remove it.
func (d *demo) printKeep() {
	d.section("kept running (--keep): run " + d.state.Run)
	d.say("nodes (%d, meshed; %s was refused, %s revoked):", d.nodes, d.rogue.Name, d.victim.Name)
	for _, n := range d.honest {
		d.indent(fmt.Sprintf("%-7s netns %-18s underlay %-12s pod CIDR %-15s agent socket %s", n.Name, n.NS, n.IP, n.PodCIDR, n.Socket))
	}
	d.say("pods (SPIFFE_ENDPOINT_SOCKET is set for them by 'confmesh demo exec'):")
	for _, p := range d.c.Pods() {
		if p.Node == d.victim {
			continue
		}
		d.indent(fmt.Sprintf("%-16s %-12s %s\n    Workload API: unix://%s", podLabel(p), p.IP, d.spiffeID(p.ServiceAccount), p.Node.WorkloadSocket))
	}
	front, pay := d.pods[0], d.pods[1]
	ex := d.self + " demo exec"
	d.say("explore (paste):")
	d.indent(strings.Join([]string{
		fmt.Sprintf("%s %s -- %s demo svid        # the pod's own SVID: %s", ex, podLabel(front), d.self, d.spiffeID(front.ServiceAccount)),
		fmt.Sprintf("%s %s -- %s demo serve --listen %s:8443 --allow %s &", ex, podLabel(pay), d.self, pay.IP, d.spiffeID(front.ServiceAccount)),
		fmt.Sprintf("%s %s -- %s demo call %s:8443 --server-id %s", ex, podLabel(front), d.self, pay.IP, d.spiffeID(pay.ServiceAccount)),
		fmt.Sprintf("%s %s -- ping -c 3 %s   # pod to pod through WireGuard (needs iputils-ping)", ex, podLabel(front), pay.IP),
		fmt.Sprintf("%s %s -- %s status --socket %s", ex, d.honest[0].Name, d.self, d.honest[0].Socket),
		fmt.Sprintf("%s peers --socket %s", d.self, d.honest[0].Socket),
		fmt.Sprintf("%s nodes %s", d.self, strings.Join(d.c.AdminArgs(), " ")),
		fmt.Sprintf("%s %s -- wg show %s   # needs wireguard-tools", ex, d.honest[0].Name, d.honest[0].Device),
		fmt.Sprintf("%s %s -- nft list table inet confmesh   # strict-mode rules (needs nftables)", ex, d.honest[0].Name),
		fmt.Sprintf("ip netns exec %s tcpdump -ni %s   # the underlay (needs tcpdump)", d.c.Underlay, d.c.Bridge),
	}, "\n"))
	d.say("process logs: %s/*.log", d.c.Dir)
	d.say("clean up later (stops the processes, deletes the namespaces and %s):", d.c.Dir)
	d.indent(fmt.Sprintf("%s demo --cleanup %s", d.self, d.state.Run))
}

// The demo's --tee values.
const (
	demoTEESimSnp = netlab.TEESimSnp
	demoTEESimTDX = netlab.TEESimTDX
	demoTEEMixed  = "mixed"
)

// nodeTEE is the simulated TEE of the i-th honest node (0-based): mixed
// alternates, node-1 on sim-snp.
func (d *demo) nodeTEE(i int) string {
	switch d.tee {
	case demoTEESimTDX:
		return netlab.TEESimTDX
	case demoTEEMixed:
		if i%2 == 1 {
			return netlab.TEESimTDX
		}
	}
	return netlab.TEESimSnp
}

// teeLabel names the TEEs the nodes run on.
func (d *demo) teeLabel() string {
	if d.tee == demoTEEMixed {
		return "sim-snp and sim-tdx (a mixed cluster)"
	}
	return d.tee
}

// teeList is the --tee list of demo serve/call: every TEE a node runs on.
func (d *demo) teeList() string {
	if d.tee == demoTEEMixed {
		return netlab.TEESimSnp + "," + netlab.TEESimTDX
	}
	return d.tee
}

// teeOf is the simulated TEE a lab node runs on.
func teeOf(n *netlab.Node) string {
	if n.Opts.TEE == "" {
		return netlab.TEESimSnp
	}
	return n.Opts.TEE
}
