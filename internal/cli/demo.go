//go:build linux

package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/confmesh/confmesh/internal/netlab"
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

type demoFlags struct {
	nodes   int
	keep    bool
	cleanup bool
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo [--nodes N] [--keep] [--cleanup]",
		Short: "run a local multi-node confmesh in network namespaces and show what it guarantees",
		Long: `Build a local cluster out of network namespaces on this machine: a control
plane and --nodes node agents (this binary, each in its own namespace, on the
SIMULATED TEE sim-snp, userspace WireGuard), joined by an underlay bridge;
one hand-made pod per node. Then show, step by step, with a check for each:

  (a) every node is attested, on sim-snp, userspace datapath, strict mode on,
      and has verified every peer itself;
  (b) pods on different nodes reach each other over UDP;
  (c) a capture on the underlay during that traffic holds only WireGuard
      (UDP 51820), ARP and the agents' TLS to the control plane: the payload
      never appears in clear;
  (d) a rogue node whose TEE has the debug bit is refused by the control
      plane (the reason is printed);
  (e) 'confmesh nodes revoke' removes the last node from every peer within
      seconds, and strict mode drops traffic to it (strict_out_drop).

Everything is torn down afterwards (processes by PID, 'confmesh agent
cleanup', namespaces) unless --keep is given, in which case the commands to
explore the cluster are printed; 'confmesh demo --cleanup' removes it later,
and any other leftover named cmdemo-*.

Needs root (network namespaces, TUN, nftables, packet capture) and the ip
command (iproute2). Exit codes: 0 every step's check held; 1 a step failed
(named in the message), or not root; 2 usage error.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
				return demoCleanup(out)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, out, f)
		},
	}
	cmd.Flags().IntVar(&f.nodes, "nodes", 3, fmt.Sprintf("how many nodes (%d to %d)", demoMinNodes, demoMaxNodes))
	cmd.Flags().BoolVar(&f.keep, "keep", false, "leave the cluster running and print how to explore it and clean it up")
	cmd.Flags().BoolVar(&f.cleanup, "cleanup", false, "remove what earlier demos left (namespaces, processes, sockets, state named cmdemo-*) and exit")
	cmd.MarkFlagsMutuallyExclusive("keep", "cleanup")
	return cmd
}

// demoCleanup sweeps every leftover of demos that are no longer running.
func demoCleanup(out io.Writer) error {
	removed, errs := demoRuns.Sweep(nil)
	for _, r := range removed {
		fmt.Fprintf(out, "removed %s\n", r)
	}
	if len(removed) == 0 && len(errs) == 0 {
		fmt.Fprintln(out, "nothing to clean up: no leftovers named "+demoRuns.NamePrefix+"*")
	}
	if err := errors.Join(errs...); err != nil {
		return failf("demo cleanup: %v", err)
	}
	return nil
}

// runDemo builds the cluster, runs the steps and tears down (or keeps).
func runDemo(ctx context.Context, out io.Writer, f demoFlags) error {
	start := time.Now()
	self, err := os.Executable()
	if err != nil {
		return failf("demo: locate this binary: %v", err)
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
	d := &demo{out: out, self: self, nodes: f.nodes,
		c: netlab.NewCluster(netlab.Config{Prefix: prefix, Dir: dir, Bin: self, OwnProcessGroup: true})}

	fmt.Fprintf(out, "confmesh demo: a control plane and %d nodes in network namespaces on this machine,\n", f.nodes)
	fmt.Fprintln(out, "attesting with the SIMULATED TEE sim-snp (development only: it proves nothing about hardware).")
	fmt.Fprintf(out, "names start with %s; state and logs in %s\n", prefix, dir)
	if n := demoLeftovers(run.Prefix); n > 0 {
		fmt.Fprintf(out, "note: %d network namespaces left by earlier demos; 'confmesh demo --cleanup' removes them\n", n)
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
			if err := s.run(); err != nil {
				d.fail("("+s.id+") "+s.title, err)
				failed = append(failed, "("+s.id+") "+s.title)
				continue
			}
			d.say("PASS (%s): %s", s.id, s.proves)
		}
	}
	interrupted := ctx.Err() != nil
	if f.keep && !interrupted && len(failed) == 0 {
		d.printKeep()
	} else {
		// After a failure the logs stay for a look (the sweep of
		// 'confmesh demo --cleanup' removes them later).
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
	out    io.Writer
	self   string
	nodes  int
	c      *netlab.Cluster
	honest []*netlab.Node
	pods   []*netlab.Pod
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

// setup builds the cluster: topology, control plane, nodes, full mesh, pods.
func (d *demo) setup() error {
	d.section("setup")
	t0 := time.Now()
	if err := d.c.Start(netlab.Options{}); err != nil {
		return err
	}
	cp := d.c.CP
	d.say("underlay: bridge %s (%s/%d) in namespace %s; every node's default gateway", d.c.Bridge, netlab.BridgeIP, netlab.UnderlayBits, d.c.Underlay)
	d.say("control plane: namespace %s, listening on %s, pid %d (runs on sim-snp too: agents verify its report first)", cp.NS, cp.Addr, cp.Process().PID())
	for range d.nodes {
		n, err := d.c.AddNode(netlab.NodeOptions{})
		if err != nil {
			return err
		}
		d.honest = append(d.honest, n)
	}
	for _, n := range d.honest {
		if err := n.WaitReady(); err != nil {
			return err
		}
		d.say("%s: namespace %s, underlay %s, attested and ready, pod CIDR %s, WireGuard device %s", n.Name, n.NS, n.IP, n.PodCIDR, n.Device)
	}
	if err := d.c.WaitMesh(d.honest...); err != nil {
		return err
	}
	d.say("full WireGuard mesh: every node has the other %d as peers (checked with wgctrl), %s after start", d.nodes-1, time.Since(t0).Round(time.Millisecond))
	for _, n := range d.honest {
		p, err := d.c.AddPod(n)
		if err != nil {
			return err
		}
		d.pods = append(d.pods, p)
		d.say("pod %s: namespace %s, IP %s", p.Name, p.NS, p.IP)
	}
	return nil
}

// teardown stops everything and removes the state directory unless
// keepLogs.
func (d *demo) teardown(dir string, keepLogs bool) error {
	d.section("teardown")
	procs, nss := len(d.c.Processes()), len(d.c.Namespaces())
	if errs := d.c.Teardown(); len(errs) > 0 {
		return errors.Join(errs...)
	}
	d.say("stopped %d processes by PID, ran 'confmesh agent cleanup' on every node (rules, device, datapath), deleted %d namespaces", procs, nss)
	if keepLogs {
		d.say("kept %s for its logs; 'confmesh demo --cleanup' removes it", dir)
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
	d.section("kept running (--keep)")
	n1, last := d.honest[0], d.honest[len(d.honest)-1]
	admin := strings.Join(d.c.AdminArgs(), " ")
	d.say("explore:")
	d.indent(strings.Join([]string{
		fmt.Sprintf("%s status --socket %s", d.self, n1.Socket),
		fmt.Sprintf("%s peers --socket %s", d.self, n1.Socket),
		fmt.Sprintf("%s nodes %s", d.self, admin),
		fmt.Sprintf("ip netns exec %s ping -c 3 %s   # pod on %s -> pod on %s (needs iputils-ping)", d.pods[0].NS, d.pods[1].IP, n1.Name, d.honest[1].Name),
		fmt.Sprintf("ip netns exec %s ip route   # pod CIDRs routed via %s", n1.NS, n1.Device),
		fmt.Sprintf("ip netns exec %s nft list table inet confmesh   # strict-mode rules (needs nftables)", n1.NS),
		fmt.Sprintf("ip netns exec %s tcpdump -ni %s   # the underlay (needs tcpdump)", d.c.Underlay, d.c.Bridge),
		fmt.Sprintf("ip netns list | grep %s", d.c.Prefix),
	}, "\n"))
	d.say("%s was revoked in step (e): it stays cut off. Process logs: %s/*.log", last.Name, d.c.Dir)
	d.say("clean up later (stops the processes, deletes the namespaces and %s):", d.c.Dir)
	d.indent(d.self + " demo --cleanup")
}
