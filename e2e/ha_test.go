//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane/config"
	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// haNamespace is where the replicas keep their Secret and Lease (as
// manifests/base installs them).
const haNamespace = "confmesh-system"

// haAPIServer starts a real etcd + kube-apiserver in a namespace of the
// cluster's own on the underlay (netlab.SharedServiceIP), installs
// manifests/base's CRDs and RBAC, and returns the control-plane flags for
// the Kubernetes store: the replicas authenticate as the control plane's
// service account, with exactly the rights rbac.yaml grants it.
func haAPIServer(t *testing.T) func(c *netlab.Cluster) ([]string, error) {
	return func(c *netlab.Cluster) ([]string, error) {
		root, err := kubetest.RepoRoot()
		if err != nil {
			return nil, err
		}
		ns := c.Prefix + "-api"
		if err := c.AttachNS(ns, "api", netlab.SharedServiceIP); err != nil {
			return nil, fmt.Errorf("API server namespace: %w", err)
		}
		cpUser := kubetest.ServiceAccountUser(haNamespace, "confmesh-controlplane")
		start := time.Now()
		apiDir := filepath.Join(c.Dir, "apiserver")
		if err := os.MkdirAll(apiDir, 0o700); err != nil {
			return nil, err
		}
		api := kubetest.StartAPIServer(t, kubetest.Options{Users: []kubetest.User{cpUser}, BindAddress: netlab.SharedServiceIP.String(),
			Port: 6443, NetNS: ns, Dir: apiDir})
		admin := api.Client(t, api.Admin)
		if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: haNamespace}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		kubetest.ApplyRBAC(t, admin, filepath.Join(root, "manifests", "base", "rbac.yaml"), haNamespace)
		kubetest.InstallCRDs(t, api.Config(api.Admin), filepath.Join(root, "manifests", "base", "crds.yaml"))
		kc := filepath.Join(c.Dir, "controlplane.kubeconfig")
		if err := api.WriteKubeconfig(kc, cpUser); err != nil {
			return nil, err
		}
		t.Logf("etcd + kube-apiserver at %s, CRDs and RBAC installed, in %s", api.URL, time.Since(start).Round(time.Millisecond))
		return []string{"--store", "kubernetes", "--kubeconfig", kc, "--store-namespace", haNamespace}, nil
	}
}

// tunnelSettle is how old every tunnel's latest handshake must be before a
// phase that must leave the tunnels alone starts. wireguard-go arms an
// initiation's retransmission timer only after it has sent the initiation;
// when the response is handled first (a one-millisecond round trip on the
// lab's underlay, and a sender that loses its CPU in between on a loaded
// machine) the timer stays armed and a second, harmless handshake follows
// rekeyTimeout + jitter after the first. That is WireGuard's behaviour, not
// something the failover did: a tunnel whose handshake is older than a
// retransmission window has no initiation left in flight.
const tunnelSettle = rekeyTimeout + rekeyJitter + 700*time.Millisecond

// tunnelState is one WireGuard peer as a node's device reports it.
type tunnelState struct {
	handshake time.Time
	endpoint  string
	allowed   string
	rx, tx    int64
}

// tunnels is every node's WireGuard peers, by node name and peer key.
func tunnels(t *testing.T, nodes []*Node) map[string]map[wgtypes.Key]tunnelState {
	t.Helper()
	out := map[string]map[wgtypes.Key]tunnelState{}
	for _, n := range nodes {
		d, err := n.WGDevice()
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		out[n.Name] = map[wgtypes.Key]tunnelState{}
		for _, p := range d.Peers {
			out[n.Name][p.PublicKey] = tunnelState{handshake: p.LastHandshakeTime, endpoint: fmt.Sprint(p.Endpoint),
				allowed: fmt.Sprint(p.AllowedIPs), rx: p.ReceiveBytes, tx: p.TransmitBytes}
		}
	}
	return out
}

// waitTunnelsSettled waits until every WireGuard peer of nodes has
// completed a handshake at least tunnelSettle ago.
func waitTunnelsSettled(t *testing.T, nodes []*Node, limit time.Duration) {
	t.Helper()
	err := netlab.Eventually(limit, netlab.PollEvery, func() error {
		for node, peers := range tunnels(t, nodes) {
			for k, p := range peers {
				if p.handshake.IsZero() {
					return fmt.Errorf("%s: peer %s has no handshake yet", node, k.String()[:8])
				}
				if age := time.Since(p.handshake); age < tunnelSettle {
					return fmt.Errorf("%s: peer %s handshake only %s ago", node, k.String()[:8], age.Round(time.Millisecond))
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("tunnels not settled: %v", err)
	}
}

// touchedTunnels reports each peer of before that was torn down or
// reconfigured since: gone from the device, another endpoint or allowed
// IPs, byte counters that restarted (the peer was removed and added again)
// or a new handshake that is not WireGuard's scheduled rekey (which comes
// rekeyAfterTime after the session's handshake, whatever the agent does).
func touchedTunnels(before, after map[string]map[wgtypes.Key]tunnelState) []string {
	var bad []string
	for node, peers := range before {
		for k, was := range peers {
			now, ok := after[node][k]
			name := node + ": peer " + k.String()[:8]
			switch {
			case !ok:
				bad = append(bad, name+" gone")
			case now.endpoint != was.endpoint || now.allowed != was.allowed:
				bad = append(bad, fmt.Sprintf("%s reconfigured: endpoint %s allowed IPs %s, was %s %s", name, now.endpoint, now.allowed, was.endpoint, was.allowed))
			case now.rx < was.rx || now.tx < was.tx:
				bad = append(bad, fmt.Sprintf("%s removed and added again: rx %d tx %d bytes, was %d %d", name, now.rx, now.tx, was.rx, was.tx))
			case !now.handshake.Equal(was.handshake) && now.handshake.Sub(was.handshake) < rekeyAfterTime:
				bad = append(bad, fmt.Sprintf("%s handshake %s, was %s (%s later)", name, now.handshake.Format(time.RFC3339Nano),
					was.handshake.Format(time.RFC3339Nano), now.handshake.Sub(was.handshake).Round(time.Millisecond)))
			}
		}
	}
	return bad
}

// waitReplica waits until every node's agent reports replica addr in use,
// with at least minFailovers failovers behind it.
func waitReplica(t *testing.T, nodes []*Node, addr string, minFailovers uint64, limit time.Duration) {
	t.Helper()
	err := netlab.Eventually(limit, netlab.PollEvery, func() error {
		for _, n := range nodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.ControlPlane != addr || st.ControlPlaneFailovers < minFailovers {
				return fmt.Errorf("%s uses %q after %d failovers; want %s after at least %d", n.Name, st.ControlPlane, st.ControlPlaneFailovers, addr, minFailovers)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// haStreams are UDP streams around a triangle of pods, one on each of three
// nodes, so every tunnel among them carries traffic both ways.
type haStreams []*netlab.UDPStream

const haCount, haInterval = 1500, 10 * time.Millisecond

func startHAStreams(t *testing.T, pods []*Pod) haStreams {
	t.Helper()
	var s haStreams
	for i := range pods {
		for _, pr := range [][2]*Pod{{pods[i], pods[(i+1)%len(pods)]}, {pods[(i+1)%len(pods)], pods[i]}} {
			u, err := netlab.StartUDPStream(pr[0], pr[1], haCount, haInterval)
			if err != nil {
				t.Fatal(err)
			}
			s = append(s, u)
		}
	}
	if err := netlab.Eventually(streamStartLimit, 10*time.Millisecond, func() error {
		for _, u := range s {
			if u.Sent() < 100 {
				return netlab.ErrNotYet
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("streams: %v", err)
	}
	return s
}

// finish waits for the streams and fails the test on any loss above 1%.
func (s haStreams) finish(t *testing.T, phase string) {
	t.Helper()
	for _, u := range s {
		missing, err := u.Finish(haCount*haInterval + streamEndSlack)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %s -> %s: lost %d of %d datagrams%s", phase, u.From.Name, u.To.Name, len(missing), haCount,
			map[bool]string{true: ": seq " + netlab.Ranges(missing)}[len(missing) > 0])
		if len(missing)*100 > haCount {
			t.Errorf("%s: %s -> %s lost %d of %d datagrams (limit 1%%): a control-plane failover must not touch the tunnels", phase, u.From.Name, u.To.Name, len(missing), haCount)
		}
	}
}

// TestControlPlaneFailover (issue 15): two control-plane replicas on one
// real kube-apiserver + etcd (--store kubernetes, the CRDs and RBAC of
// manifests/base), three agents given both replicas' addresses, and pod
// traffic around the three nodes. The agents start on replica 1 (the
// first they were given).
//
// Replica 1 is SIGKILLed under the traffic: every agent moves to replica 2
// (status names it, the failover counter rises), no datagram stream loses
// more than 1%, no tunnel is touched (measured from tunnels that have
// settled: every WireGuard peer stays, with its endpoint, allowed IPs,
// growing byte counters and latest handshake; touchedTunnels), a fourth
// node joins through replica 2,
// and the whole mesh forms: its arrival reached every agent through the
// watch each resumed on replica 2.
//
// Replica 1 is started again and replica 2 SIGKILLed: the same on replica
// 1 with a fifth node. Then every node's SVID is renewed (the control plane
// runs with the shortest SVID lifetime it accepts; renewal is at half of
// it), necessarily through the restarted replica 1.
func TestControlPlaneFailover(t *testing.T) {
	RequireRoot(t)
	kubetest.Tool(t, "etcd")
	kubetest.Tool(t, "kube-apiserver")
	start := time.Now()
	c := NewCluster(t, Options{Nodes: 3, ControlPlaneReplicas: 2, ControlPlaneSetup: haAPIServer(t), SVIDTTL: config.MinTTL})
	cp1, cp2 := c.CPs[0], c.CPs[1]
	orig := append([]*Node(nil), c.Nodes...)
	waitReplica(t, orig, cp1.Addr, 0, failoverLimit)
	expiry := map[string]string{}
	for _, n := range orig {
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(st.ControlPlanes, ",") != cp1.Addr+","+cp2.Addr {
			t.Fatalf("%s: replicas %v", n.Name, st.ControlPlanes)
		}
		expiry[n.Name] = st.SVIDExpiry
	}
	pods := []*Pod{c.AddPod(orig[0]), c.AddPod(orig[1]), c.AddPod(orig[2])}
	for i := range pods {
		for _, pr := range [][2]*Pod{{pods[i], pods[(i+1)%3]}, {pods[(i+1)%3], pods[i]}} {
			if err := netlab.SendUDP(pr[0], pr[1], netlab.RandomPayload("warm-up", 16), sendLimit); err != nil {
				t.Fatalf("before the failover: %v", err)
			}
		}
	}
	t.Logf("cluster with 2 replicas, 3 nodes and pod traffic up in %s", time.Since(start).Round(time.Millisecond))

	phase := func(name string, kill, survivor *netlab.ControlPlane, minFailovers uint64) {
		t.Helper()
		// The tunnels are new (the cluster's, and the node the last phase
		// added): let their handshakes finish before taking the baseline.
		waitTunnelsSettled(t, orig, settleLimit)
		before := tunnels(t, orig)
		streams := startHAStreams(t, pods)
		killed := time.Now()
		if err := kill.Kill(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		waitReplica(t, orig, survivor.Addr, minFailovers, failoverLimit)
		movedAfter := time.Since(killed)
		n := c.AddNode(NodeOptions{})
		n.WaitReady()
		joinedAfter := time.Since(killed)
		st, err := n.Status()
		if err != nil {
			t.Fatal(err)
		}
		if st.ControlPlane != survivor.Addr {
			t.Fatalf("%s: %s joined through %q, want %s", name, n.Name, st.ControlPlane, survivor.Addr)
		}
		c.WaitMesh(c.Nodes...)
		meshAfter := time.Since(killed)
		streams.finish(t, name)
		if bad := touchedTunnels(before, tunnels(t, orig)); len(bad) > 0 {
			t.Errorf("%s: tunnels touched by the failover:\n%s", name, strings.Join(bad, "\n"))
		}
		t.Logf("%s: every agent on %s %s after SIGKILL of %s; %s joined through it after %s; full mesh of %d nodes after %s",
			name, survivor.Name, movedAfter.Round(time.Millisecond), kill.Name, n.Name, joinedAfter.Round(time.Millisecond),
			len(c.Nodes), meshAfter.Round(time.Millisecond))
	}
	phase("kill replica 1", cp1, cp2, 1)

	back := time.Now()
	if err := cp1.Start(); err != nil {
		t.Fatalf("restart replica 1: %v", err)
	}
	t.Logf("replica 1 serving again %s after its start", time.Since(back).Round(time.Millisecond))
	phase("kill replica 2", cp2, cp1, 2)

	// Renewals at half the SVID lifetime: only replica 1 is up.
	renewStart := time.Now()
	err := netlab.Eventually(config.MinTTL/2+30*time.Second, netlab.PollEvery, func() error {
		for _, n := range orig {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.SVIDExpiry <= expiry[n.Name] || !st.Attested {
				return fmt.Errorf("%s: SVID expiry %s, was %s (attested %v)", n.Name, st.SVIDExpiry, expiry[n.Name], st.Attested)
			}
			if st.ControlPlane != cp1.Addr {
				return netlab.Permanent(fmt.Errorf("%s renewed through %q with only %s up", n.Name, st.ControlPlane, cp1.Addr))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("renewals after the failovers: %v", err)
	}
	t.Logf("every original node renewed its SVID through the restarted replica 1 (waited %s); whole test %s",
		time.Since(renewStart).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	for _, pr := range [][2]*Pod{{pods[0], pods[1]}, {pods[2], pods[0]}} {
		if err := netlab.SendUDP(pr[0], pr[1], netlab.RandomPayload("after", 16), sendLimit); err != nil {
			t.Errorf("after the renewals: %v", err)
		}
	}
}
