//go:build linux

package k8s_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// scenario is one named check and its verdict, for the summary table.
type scenario struct {
	name   string
	ok     bool
	detail string
	took   time.Duration
}

type summary struct {
	t    *testing.T
	rows []scenario
}

// check runs one scenario; a failure is recorded and reported, and the
// following scenarios still run unless the failure is fatal to them.
func (s *summary) check(name string, f func() (string, error)) bool {
	start := time.Now()
	detail, err := f()
	row := scenario{name: name, ok: err == nil, detail: detail, took: time.Since(start)}
	if err != nil {
		row.detail = err.Error()
		s.t.Errorf("%s: %v", name, err)
	}
	s.rows = append(s.rows, row)
	s.t.Logf("%s %s: %s: %s (%.1fs)", time.Now().Format("15:04:05"), name, verdict(row.ok), row.detail, row.took.Seconds())
	return err == nil
}

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func (s *summary) print() {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-4s  %-58s  %6s  %s\n", "", "scenario", "time", "detail")
	for _, r := range s.rows {
		d := r.detail
		if len(d) > 110 {
			d = d[:110] + "…"
		}
		fmt.Fprintf(&b, "%-4s  %-58s  %5.1fs  %s\n", verdict(r.ok), r.name, r.took.Seconds(), d)
	}
	s.t.Log(b.String())
}

// TestRealCluster installs confmesh with `kubectl apply -k` of the sim
// overlay, unchanged, on a three-node Kubernetes (kubelet + containerd +
// runc) in network namespaces, and checks what an operator relies on.
func TestRealCluster(t *testing.T) {
	start := time.Now()
	s := &summary{t: t}
	// Registered before the lab's teardown, so it runs after it: the table
	// is the last thing printed, after any logs a failure dumps, where a
	// truncated CI log still shows which scenario failed.
	t.Cleanup(s.print)
	l := newLab(t)
	ctx := context.Background()

	l.setupUnderlay()
	l.startControlPlane()
	ca := l.simCA()
	for i := 1; i <= nodeCount; i++ {
		l.startNode(i, ca)
	}
	if !s.check("cluster: 3 kubelets registered", func() (string, error) {
		var dead error
		ok := kubetest.WaitFor(ctx, 3*time.Minute, func() bool {
			if dead = l.alive(); dead != nil {
				return true
			}
			nodes, err := l.admin.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err == nil && len(nodes.Items) == nodeCount
		})
		if dead != nil {
			return "", dead
		}
		if !ok {
			return "", fmt.Errorf("nodes did not register within 3 min")
		}
		return fmt.Sprintf("after %.0fs", time.Since(start).Seconds()), nil
	}) {
		return
	}
	root, _ := kubetest.RepoRoot()
	overlay := filepath.Join(root, "manifests", "overlays", "sim")
	if !s.check("install: kubectl apply -k manifests/overlays/sim", func() (string, error) {
		out, err := l.kubectl("apply", "-k", overlay)
		return fmt.Sprintf("%d objects", strings.Count(strings.TrimSpace(out), "\n")+1), err
	}) {
		return
	}
	good := []*node{l.nodes[0], l.nodes[1]}
	if !s.check("bootstrap: agents attested, nodes 1 and 2 Ready", func() (string, error) {
		var last string
		ok := kubetest.WaitFor(ctx, 4*time.Minute, func() bool {
			for _, n := range good {
				ready, why := nodeReady(ctx, l, n.name)
				if !ready {
					last = n.name + ": " + why
					return false
				}
			}
			return true
		})
		if !ok {
			return "", fmt.Errorf("not Ready within 4 min: %s", last)
		}
		return fmt.Sprintf("after %.0fs", time.Since(start).Seconds()), nil
	}) {
		return
	}

	s.check("control plane: 2 replicas Ready; kubectl get attestednodes lists nodes 1 and 2 active", func() (string, error) {
		var last string
		ok := kubetest.WaitFor(ctx, 2*time.Minute, func() bool {
			pods, err := controlPlanePods(ctx, l)
			if err != nil {
				last = err.Error()
				return false
			}
			ready := 0
			for _, p := range pods {
				if podIsReady(p) {
					ready++
				}
			}
			last = fmt.Sprintf("%d of %d replicas ready", ready, len(pods))
			return ready == 2
		})
		if !ok {
			return "", fmt.Errorf("control plane: %s after 2 min", last)
		}
		out, err := l.kubectl("get", "attestednodes", "--no-headers", "-o", "custom-columns=NAME:.metadata.name,STATE:.status.state")
		if err != nil {
			return "", err
		}
		for _, n := range good {
			if !strings.Contains(out, n.name+" ") || !regexp.MustCompile(regexp.QuoteMeta(n.name)+`\s+active`).MatchString(out) {
				return "", fmt.Errorf("kubectl get attestednodes does not list %s active:\n%s", n.name, out)
			}
		}
		return strings.Join(strings.Fields(out), " "), nil
	})

	s.check("rogue: node with a debug TEE never Ready, no peer has it", func() (string, error) {
		n3 := l.nodes[debugNode-1]
		// Its agent runs (the debug variant of the DaemonSet) and is refused.
		var st *statusJSON
		ok := kubetest.WaitFor(ctx, 90*time.Second, func() bool {
			var err error
			st, err = agentStatus(l, n3)
			return err == nil && st.State == "refused"
		})
		if !ok {
			return "", fmt.Errorf("%s's agent is not refused within 90 s: %+v", n3.name, st)
		}
		reason := st.StateReason
		if ready, _ := nodeReady(ctx, l, n3.name); ready {
			return "", fmt.Errorf("%s is Ready", n3.name)
		}
		if entries, _ := os.ReadDir(filepath.Join(n3.dir, "root", "etc/cni/net.d")); len(entries) > 0 {
			return "", fmt.Errorf("%s has a CNI config", n3.name)
		}
		for _, n := range good {
			st, err := agentStatus(l, n)
			if err != nil {
				return "", err
			}
			if st.State != "active" {
				return "", fmt.Errorf("%s is %s", n.name, st.State)
			}
			var peers []string
			for _, p := range st.Peers {
				peers = append(peers, p.Name)
				if p.Name == n3.name && p.State != "refused" {
					return "", fmt.Errorf("%s has %s as a %s peer", n.name, n3.name, p.State)
				}
			}
			if len(peers) == 0 {
				return "", fmt.Errorf("%s has no peer at all", n.name)
			}
		}
		if len(reason) > 80 {
			reason = reason[:80] + "…"
		}
		return fmt.Sprintf("%s refused (%s), NotReady, no CNI config", n3.name, reason), nil
	})

	// Workloads: two service accounts in one namespace, one pod each, on
	// different nodes.
	if !s.check("workloads: Deployments client (node 1) and server (node 2) running", func() (string, error) {
		if _, err := l.kubectlApply(workloads); err != nil {
			return "", err
		}
		var last string
		ok := kubetest.WaitFor(ctx, 3*time.Minute, func() bool {
			for _, app := range []string{"client", "server"} {
				p, err := runningPod(ctx, l, app)
				if err != nil {
					last = err.Error()
					return false
				}
				_ = p
			}
			return true
		})
		if !ok {
			return "", fmt.Errorf("pods not running within 3 min: %s", last)
		}
		return "", nil
	}) {
		return
	}
	client, _ := runningPod(ctx, l, "client")
	server, _ := runningPod(ctx, l, "server")
	cpod := l.podNetns(client)
	spod := l.podNetns(server)

	s.check("cross-node TCP and UDP through the tunnels, nothing in clear on the underlay", func() (string, error) {
		capt, err := netlab.StartCapture(l.ul, l.bridge, 60*time.Second)
		if err != nil {
			return "", err
		}
		tcpReq, tcpResp := netlab.RandomPayload("k8s-tcp-req", 64), netlab.RandomPayload("k8s-tcp-resp", 64)
		terr := netlab.ExchangeTCP(cpod, spod, tcpReq, tcpResp, 20*time.Second)
		udp := netlab.RandomPayload("k8s-udp", 64)
		uerr := netlab.SendUDP(spod, cpod, udp, 20*time.Second)
		frames, cerr := capt.Stop()
		if terr != nil || uerr != nil || cerr != nil {
			return "", fmt.Errorf("tcp: %v; udp: %v; capture: %v", terr, uerr, cerr)
		}
		var leaks int
		for _, p := range [][]byte{tcpReq, tcpResp, udp} {
			leaks += netlab.FramesContaining(frames, p)
		}
		wg := 0
		for _, f := range frames {
			if _, ok := netlab.WireGuardType(f); ok {
				wg++
			}
		}
		if leaks > 0 || wg == 0 {
			return "", fmt.Errorf("%d frames with payload in clear, %d WireGuard frames of %d", leaks, wg, len(frames))
		}
		return fmt.Sprintf("%s -> %s; %d frames captured, %d WireGuard, 0 in clear", cpod.IP, spod.IP, len(frames), wg), nil
	})

	s.check("identities: two service accounts, two SPIFFE IDs, mTLS with pkg/claims", func() (string, error) {
		ids := map[string]string{}
		for _, p := range []*corev1.Pod{client, server} {
			out, err := l.kubectl("-n", "e2e", "exec", p.Name, "--", "/usr/local/bin/confmesh", "demo", "svid")
			if err != nil {
				return "", err
			}
			ids[p.Labels["app"]] = firstSPIFFEID(out)
		}
		if ids["client"] != "spiffe://confmesh.local/ns/e2e/sa/client" || ids["server"] != "spiffe://confmesh.local/ns/e2e/sa/server" {
			return "", fmt.Errorf("SVIDs: %v", ids)
		}
		out, err := l.kubectl("-n", "e2e", "exec", client.Name, "--", "/usr/local/bin/confmesh", "demo", "call",
			netip.AddrPortFrom(spod.IP, 8443).String(), "--server-id", ids["server"], "--message", "hello")
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%s, %s; call: %s", ids["client"], ids["server"], strings.TrimSpace(lastLine(out))), nil
	})

	s.check("rollout restart of the agent DaemonSet keeps a TCP stream alive", func() (string, error) {
		before, err := agentPods(ctx, l)
		if err != nil {
			return "", err
		}
		stream, err := netlab.StartTCPStream(cpod, spod, 400, 100*time.Millisecond, 30*time.Second)
		if err != nil {
			return "", err
		}
		time.Sleep(2 * time.Second)
		if _, err := l.kubectl("-n", "confmesh-system", "rollout", "restart", "daemonset/confmesh-agent"); err != nil {
			return "", err
		}
		// The debug node's agent never becomes ready, but it is another
		// DaemonSet: this one's rollout covers nodes 1 and 2 only.
		if _, err := l.kubectl("-n", "confmesh-system", "rollout", "status", "daemonset/confmesh-agent", "--timeout=180s"); err != nil {
			return "", err
		}
		if err := stream.Finish(); err != nil {
			return "", err
		}
		after, err := agentPods(ctx, l)
		if err != nil {
			return "", err
		}
		for uid := range after {
			if before[uid] {
				return "", fmt.Errorf("agent pod %s was not replaced by the rollout", uid)
			}
		}
		if len(after) != len(good) {
			return "", fmt.Errorf("%d agent pods after the rollout, want %d", len(after), len(good))
		}
		return fmt.Sprintf("both agents replaced; %d records sent, %d received, in order", stream.Sent(), stream.Received()), nil
	})

	s.check("HA: deleting a control-plane pod changes nothing for the nodes", func() (string, error) {
		pods, err := controlPlanePods(ctx, l)
		if err != nil || len(pods) != 2 {
			return "", fmt.Errorf("control-plane pods: %d, %v", len(pods), err)
		}
		before := map[string][]string{}
		for _, n := range good {
			st, err := agentStatus(l, n)
			if err != nil {
				return "", err
			}
			before[n.name] = activePeers(st)
			if len(before[n.name]) == 0 {
				return "", fmt.Errorf("%s has no verified peer before the deletion", n.name)
			}
		}
		stream, err := netlab.StartTCPStream(cpod, spod, 400, 100*time.Millisecond, 30*time.Second)
		if err != nil {
			return "", err
		}
		victim := pods[0]
		zero := int64(0)
		if err := l.admin.CoreV1().Pods("confmesh-system").Delete(ctx, victim.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return "", err
		}
		// With one replica gone, the control plane still signs: a new
		// workload SVID (fetched over the Workload API, signed by a replica).
		out, err := l.kubectl("-n", "e2e", "exec", server.Name, "--", "/usr/local/bin/confmesh", "demo", "svid")
		if err != nil {
			return "", fmt.Errorf("workload SVID while %s is gone: %v", victim.Spec.NodeName, err)
		}
		if id := firstSPIFFEID(out); id != "spiffe://confmesh.local/ns/e2e/sa/server" {
			return "", fmt.Errorf("workload SVID while a replica is gone: %q", id)
		}
		var last string
		replaced := kubetest.WaitFor(ctx, 2*time.Minute, func() bool {
			now, err := controlPlanePods(ctx, l)
			if err != nil {
				last = err.Error()
				return false
			}
			ready := 0
			for _, p := range now {
				if p.UID == victim.UID {
					last = "the deleted pod is still listed"
					return false
				}
				if podIsReady(p) {
					ready++
				}
			}
			last = fmt.Sprintf("%d replicas ready", ready)
			return ready == 2
		})
		if !replaced {
			return "", fmt.Errorf("no replacement replica: %s", last)
		}
		if err := stream.Finish(); err != nil {
			return "", fmt.Errorf("pod traffic across the replica's deletion: %w", err)
		}
		for _, n := range good {
			st, err := agentStatus(l, n)
			if err != nil {
				return "", err
			}
			if st.State != "active" || strings.Join(activePeers(st), ",") != strings.Join(before[n.name], ",") {
				return "", fmt.Errorf("%s: state %s, active peers %v, before %v", n.name, st.State, activePeers(st), before[n.name])
			}
		}
		return fmt.Sprintf("deleted %s on %s; SVID signed meanwhile; %d records sent, %d received in order; peers unchanged",
			victim.Name, victim.Spec.NodeName, stream.Sent(), stream.Received()), nil
	})

	s.check("pod deletion removes its identity and CNI state", func() (string, error) {
		n1 := l.nodes[0]
		before, _ := netlab.Links(n1.netns)
		if !podRecorded(n1, string(client.UID)) {
			return "", fmt.Errorf("the agent on %s has no record of pod %s before deletion", n1.name, client.Name)
		}
		zero := int64(0)
		if err := l.admin.CoreV1().Pods("e2e").Delete(ctx, client.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return "", err
		}
		if !kubetest.WaitFor(ctx, 60*time.Second, func() bool { return !podRecorded(n1, string(client.UID)) }) {
			return "", fmt.Errorf("the agent still records pod %s 60 s after deletion", client.UID)
		}
		// The Deployment starts a replacement pod on node 1: compare the
		// old pod's host-side veth, not the count.
		gone := kubetest.WaitFor(ctx, 30*time.Second, func() bool {
			after, _ := netlab.Links(n1.netns)
			return !containsAll(after, before)
		})
		if !gone {
			return "", fmt.Errorf("no host-side veth of node 1 went away after the pod was deleted")
		}
		return "agent record and host-side veth gone", nil
	})

	s.check("uninstall: kubectl delete -k leaves the nodes clean", func() (string, error) {
		// Workloads go first, while the CNI plugin can still tear their
		// sandboxes down (a sandbox whose plugin is gone keeps its network
		// namespace mounted until the node reboots).
		if _, err := l.kubectl("delete", "namespace", "e2e", "--wait=true", "--timeout=120s"); err != nil {
			return "", err
		}
		if _, err := l.kubectl("delete", "-k", overlay, "--wait=true", "--timeout=120s"); err != nil {
			return "", err
		}
		var dirty string
		ok := kubetest.WaitFor(ctx, 90*time.Second, func() bool {
			dirty = ""
			for _, n := range l.nodes {
				if entries, _ := os.ReadDir(filepath.Join(n.dir, "root", "etc/cni/net.d")); len(entries) > 0 {
					dirty += n.name + ": CNI config left; "
				}
				links, _ := netlab.Links(n.netns)
				for _, ln := range links {
					if ln == "cm0" {
						dirty += n.name + ": cm0 left; "
					}
				}
				if out, _ := run("nsenter", "--net=/run/netns/"+n.netns, "nft", "list", "tables"); strings.Contains(out, "confmesh") {
					dirty += n.name + ": nftables table left; "
				}
				if entries, _ := os.ReadDir(filepath.Join(n.dir, "root", "var/lib/confmesh/agent")); len(entries) > 0 {
					dirty += n.name + ": agent state left; "
				}
			}
			return dirty == ""
		})
		if !ok {
			return "", fmt.Errorf("%s", dirty)
		}
		return "no CNI config, WireGuard device, strict table or agent state", nil
	})
	t.Logf("total %.0fs", time.Since(start).Seconds())
}

// workloads are the test's pods: client on node 1 and server on node 2,
// each under its own service account, both running the demo's SPIFFE
// server (a long-running process with the Workload API socket mounted).
var workloads = `apiVersion: v1
kind: Namespace
metadata: {name: e2e}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: client, namespace: e2e}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: server, namespace: e2e}
` + deployment("client", "confmesh-k8s-n1", "spiffe://confmesh.local/ns/e2e/sa/server") +
	deployment("server", "confmesh-k8s-n2", "spiffe://confmesh.local/ns/e2e/sa/client")

func deployment(app, node, allow string) string {
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: e2e}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      serviceAccountName: %[1]s
      nodeSelector: {kubernetes.io/hostname: %[2]s}
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: confmesh:dev
          imagePullPolicy: Never
          args: [demo, serve, --listen=0.0.0.0:8443, --allow=%[3]s]
          env:
            - {name: SPIFFE_ENDPOINT_SOCKET, value: unix:///run/confmesh/workload/workload.sock}
          volumeMounts:
            - {name: workload-api, mountPath: /run/confmesh/workload, readOnly: true}
      volumes:
        - name: workload-api
          hostPath: {path: /run/confmesh/workload, type: DirectoryOrCreate}
`, app, node, allow)
}

func (l *lab) kubectlApply(manifest string) (string, error) {
	f := filepath.Join(l.dir, fmt.Sprintf("apply-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		return "", err
	}
	return l.kubectl("apply", "-f", f)
}

// agentPods are the UIDs of the main agent DaemonSet's live pods.
func agentPods(ctx context.Context, l *lab) (map[string]bool, error) {
	pods, err := l.admin.CoreV1().Pods("confmesh-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=confmesh-agent"})
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			out[string(p.UID)] = true
		}
	}
	return out, nil
}

func nodeReady(ctx context.Context, l *lab, name string) (bool, string) {
	n, err := l.admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return false, err.Error()
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue, c.Reason + ": " + c.Message
		}
	}
	return false, "no Ready condition"
}

func runningPod(ctx context.Context, l *lab, app string) (*corev1.Pod, error) {
	pods, err := l.admin.CoreV1().Pods("e2e").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app})
	if err != nil {
		return nil, err
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no running %s pod yet (%d pods)", app, len(pods.Items))
}

// podNetns names the pod's network namespace under /run/netns (a bind of
// its first process's /proc/PID/ns/net, found through the pod's cgroup),
// so that the lab's traffic helpers can run inside it.
func (l *lab) podNetns(p *corev1.Pod) *netlab.Pod {
	l.t.Helper()
	var n *node
	for _, x := range l.nodes {
		if x.name == p.Spec.NodeName {
			n = x
		}
	}
	var pid int
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", n.cgroup), func(path string, d os.DirEntry, err error) error {
		if pid == 0 && err == nil && d.IsDir() && strings.Contains(strings.ReplaceAll(d.Name(), "_", "-"), string(p.UID)) {
			if pids := cgroupPIDs(path); len(pids) > 0 {
				pid = pids[0]
			}
		}
		return nil
	})
	if pid == 0 {
		l.t.Fatalf("no process of pod %s in %s's cgroups", p.Name, n.name)
	}
	name := fmt.Sprintf("%s-pod-%s", l.prefix, p.Labels["app"])
	target := filepath.Join(netlab.NetnsDir, name)
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		l.t.Fatal(err)
	}
	l.namespaces = append(l.namespaces, name)
	l.must(run("mount", "--bind", fmt.Sprintf("/proc/%d/ns/net", pid), target))
	return &netlab.Pod{Name: p.Name, NS: name, IP: netip.MustParseAddr(p.Status.PodIP)}
}

// statusJSON is the part of `confmesh status -o json` the checks read.
type statusJSON struct {
	Node        string `json:"node"`
	State       string `json:"state"`
	StateReason string `json:"stateReason"`
	Peers       []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"peers"`
}

// agentStatus is `confmesh status -o json` against the node's agent socket.
func agentStatus(l *lab, n *node) (*statusJSON, error) {
	out, err := run(filepath.Join(l.bin, "image", "confmesh"), "status", "-o", "json", "--socket", filepath.Join(n.dir, "root", "run/confmesh/agent.sock"))
	if err != nil {
		return nil, err
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("status of %s: %v: %s", n.name, err, out)
	}
	return &st, nil
}

// podRecorded reports whether the node's agent keeps a record of the pod.
func podRecorded(n *node, uid string) bool {
	files, _ := filepath.Glob(filepath.Join(n.dir, "root", "var/lib/confmesh/agent/pods", "*.json"))
	for _, f := range files {
		data, _ := os.ReadFile(f)
		var r struct {
			UID string `json:"uid"`
		}
		if json.Unmarshal(data, &r) == nil && r.UID == uid {
			return true
		}
	}
	return false
}

func containsAll(have, want []string) bool {
	set := map[string]bool{}
	for _, h := range have {
		set[h] = true
	}
	for _, w := range want {
		if !set[w] {
			return false
		}
	}
	return true
}

func firstSPIFFEID(s string) string {
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "spiffe://") {
			return strings.TrimRight(f, ",.;")
		}
	}
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// controlPlanePods are the control plane's live (not terminating) pods.
func controlPlanePods(ctx context.Context, l *lab) ([]*corev1.Pod, error) {
	pods, err := l.admin.CoreV1().Pods("confmesh-system").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=confmesh-controlplane"})
	if err != nil {
		return nil, err
	}
	var out []*corev1.Pod
	for i := range pods.Items {
		if pods.Items[i].DeletionTimestamp == nil {
			out = append(out, &pods.Items[i])
		}
	}
	return out, nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// activePeers are the names of the peers the agent verified and configured, sorted.
func activePeers(st *statusJSON) []string {
	var out []string
	for _, p := range st.Peers {
		if p.State == "verified" {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out
}
