//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
	"github.com/confmesh/confmesh/pkg/claims"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

// The Workload API identifies a caller by the network namespace of the
// process that connected (SO_PEERCRED pid -> /proc/<pid>/ns/net), not of
// the thread, so a workload must be a whole process inside the pod's
// namespace: the test binary re-executes itself there (`ip netns exec`),
// with helperEnv naming what to do. TestMain runs the helper instead of
// the tests.
const (
	helperEnv        = "CME2E_WORKLOAD_HELPER" // serve, dial or fetch
	helperSocketEnv  = "CME2E_WL_SOCKET"       // the node's Workload API socket
	helperAddrEnv    = "CME2E_WL_ADDR"         // serve: listen address; dial: server address
	helperPeerEnv    = "CME2E_WL_PEER"         // dial: the server's expected SPIFFE ID
	helperMeasOKEnv  = "CME2E_WL_MEAS_OK"      // dial: a measurement the server's node has
	helperMeasBadEnv = "CME2E_WL_MEAS_BAD"     // dial: one it has not
	helperTimeout    = 15 * time.Second
)

// helperReport is what a helper prints (one JSON line).
type helperReport struct {
	ID          string `json:"id,omitempty"`
	NodeID      string `json:"nodeID,omitempty"`
	Measurement string `json:"measurement,omitempty"`
	TEE         string `json:"tee,omitempty"`
	Reply       string `json:"reply,omitempty"`   // dial: what the server said with the right measurement
	GoodErr     string `json:"goodErr,omitempty"` // dial: error with the right measurement
	BadErr      string `json:"badErr,omitempty"`  // dial: error with another measurement (want one)
	Code        string `json:"code,omitempty"`    // fetch: gRPC code of FetchX509SVID
	Err         string `json:"err,omitempty"`
}

// runWorkloadHelper is the child's main; it returns the exit status.
func runWorkloadHelper(mode string) int {
	if mode == "flood" {
		return runFloodHelper() // fdflood_test.go
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout)
	defer cancel()
	rep, err := workloadHelper(ctx, mode)
	if err != nil {
		rep.Err = err.Error()
	}
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	if mode == "serve" && err == nil {
		// Serve until the parent closes stdin (or the timeout).
		done := make(chan struct{})
		go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	return 0
}

func workloadHelper(ctx context.Context, mode string) (helperReport, error) {
	var rep helperReport
	addr := "unix://" + os.Getenv(helperSocketEnv)
	if mode == "fetch" {
		client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
		if err != nil {
			return rep, err
		}
		defer client.Close()
		svid, err := client.FetchX509SVID(ctx)
		if err == nil {
			rep.ID = svid.ID.String()
			return rep, nil
		}
		rep.Code = status.Code(err).String()
		return rep, err
	}
	source, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		return rep, fmt.Errorf("X509 source: %w", err)
	}
	svid, err := source.GetX509SVID()
	if err != nil {
		return rep, err
	}
	rep.ID = svid.ID.String()
	cl, err := claims.FromCertificate(svid.Certificates[0])
	if err != nil {
		return rep, fmt.Errorf("claims of my SVID: %w", err)
	}
	rep.NodeID, rep.Measurement, rep.TEE = cl.NodeID.String(), cl.MeasurementHex(), cl.TEE
	switch mode {
	case "serve":
		// Any workload of the trust domain on a node with the lab's
		// (all-zero) measurement.
		zero, _ := claims.ParseMeasurement(netlab.ZeroMeasurement)
		lis, err := spiffetls.ListenWithMode(ctx, "tcp", os.Getenv(helperAddrEnv),
			spiffetls.MTLSServerWithSource(claims.AuthorizeMemberOf(svid.ID.TrustDomain(), zero), source))
		if err != nil {
			return rep, err
		}
		go func() {
			for {
				conn, err := lis.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
					if tc, ok := conn.(interface{ Handshake() error }); ok {
						if err := tc.Handshake(); err != nil {
							return // the client refused us (or we it)
						}
					}
					peer, err := spiffetls.PeerIDFromConn(conn)
					if err != nil {
						return
					}
					fmt.Fprintf(conn, "hello %s from %s\n", peer, svid.ID)
				}()
			}
		}()
		return rep, nil
	case "dial":
		peer, err := spiffeid.FromString(os.Getenv(helperPeerEnv))
		if err != nil {
			return rep, err
		}
		dial := func(meas string) (string, error) {
			m, err := claims.ParseMeasurement(meas)
			if err != nil {
				return "", err
			}
			conn, err := spiffetls.DialWithMode(ctx, "tcp", os.Getenv(helperAddrEnv),
				spiffetls.MTLSClientWithSource(claims.AuthorizeID(peer, m), source),
				spiffetls.WithDialer(&net.Dialer{Timeout: 10 * time.Second}))
			if err != nil {
				return "", err
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			return bufio.NewReader(conn).ReadString('\n')
		}
		reply, err := dial(os.Getenv(helperMeasOKEnv))
		rep.Reply = strings.TrimSpace(reply)
		if err != nil {
			rep.GoodErr = err.Error()
		}
		if _, err := dial(os.Getenv(helperMeasBadEnv)); err != nil {
			rep.BadErr = err.Error()
		}
		return rep, nil
	}
	return rep, fmt.Errorf("unknown helper mode %q", mode)
}

// helper is a running helper process.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	report helperReport
}

// startHelper runs the test binary as a workload helper in netns and reads
// its report line.
func startHelper(t *testing.T, netns, mode string, env ...string) *helper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), helperTimeout+5*time.Second)
	h := &helper{cmd: exec.CommandContext(ctx, "ip", "netns", "exec", netns, exe)}
	h.cmd.Env = append(append(os.Environ(), helperEnv+"="+mode), env...)
	h.cmd.Stderr = &h.stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.stdin.Close()
		_ = h.cmd.Wait()
		cancel()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("workload helper %s in %s: no report: %v\nstderr: %s", mode, netns, err, h.stderr.String())
	}
	if err := json.Unmarshal([]byte(line), &h.report); err != nil {
		t.Fatalf("workload helper %s in %s: report %q: %v", mode, netns, line, err)
	}
	t.Logf("workload helper %s in %s: %s", mode, netns, strings.TrimSpace(line))
	return h
}

// TestWorkloadMTLSAcrossNodes (issue 6): two pods made by the CNI plugin,
// one per node, each get their X.509-SVID from their own node's Workload
// API: spiffe://<td>/ns/<namespace>/sa/<service account>, the service
// account being what the node's root-only pod-metadata file says, with
// claims naming
// their node and the lab's all-zero measurement. Pod A serves spiffetls on
// its pod IP; pod B dials it through the tunnel with the pkg/claims
// authorizer requiring A's ID and the zero measurement (accepted, and A
// sees B's ID), then requiring another measurement (refused). A process
// in node-1's namespace that is not a pod is denied (PermissionDenied), and
// so is a pod the plugin made that the node's pod-metadata file does not
// list (no identity rather than a default one).
func TestWorkloadMTLSAcrossNodes(t *testing.T) {
	c := NewCluster(t, Options{Nodes: 2})
	n1, n2 := c.Nodes[0], c.Nodes[1]
	st, err := n1.Status()
	if err != nil {
		t.Fatal(err)
	}
	nodeID, err := spiffeid.FromString(st.SPIFFEID)
	if err != nil {
		t.Fatalf("node SPIFFE ID %q: %v", st.SPIFFEID, err)
	}
	td := nodeID.TrustDomain()
	a := c.AddPodSpec(n1, PodSpec{Namespace: "shop", Name: "api-0", ServiceAccount: "api"})
	b := c.AddPodSpec(n2, PodSpec{Namespace: "pay", Name: "client-0", ServiceAccount: "client"})
	wantA := fmt.Sprintf("spiffe://%s/ns/shop/sa/api", td.Name())
	wantB := fmt.Sprintf("spiffe://%s/ns/pay/sa/client", td.Name())
	addrA := net.JoinHostPort(a.IP.String(), fmt.Sprint(netlab.RandomPort()))

	srv := startHelper(t, a.NS, "serve", helperSocketEnv+"="+n1.WorkloadSocket, helperAddrEnv+"="+addrA)
	if srv.report.Err != "" {
		t.Fatalf("pod %s: %s\nstderr: %s", a.Name, srv.report.Err, srv.stderr.String())
	}
	cli := startHelper(t, b.NS, "dial", helperSocketEnv+"="+n2.WorkloadSocket, helperAddrEnv+"="+addrA,
		helperPeerEnv+"="+wantA, helperMeasOKEnv+"="+netlab.ZeroMeasurement, helperMeasBadEnv+"="+netlab.OtherMeasurement)
	if cli.report.Err != "" {
		t.Fatalf("pod %s: %s\nstderr: %s", b.Name, cli.report.Err, cli.stderr.String())
	}

	for _, x := range []struct {
		pod  *Pod
		node *Node
		rep  helperReport
		want string
	}{{a, n1, srv.report, wantA}, {b, n2, cli.report, wantB}} {
		if x.rep.ID != x.want {
			t.Errorf("pod %s: SVID ID %s, want %s", x.pod.Name, x.rep.ID, x.want)
		}
		if want := fmt.Sprintf("spiffe://%s/confmesh/node/%s", td.Name(), x.node.Name); x.rep.NodeID != want {
			t.Errorf("pod %s: SVID claims name node %s, want %s", x.pod.Name, x.rep.NodeID, want)
		}
		if x.rep.Measurement != netlab.ZeroMeasurement || x.rep.TEE != claims.TEESimSnp {
			t.Errorf("pod %s: SVID claims measurement %s, TEE %s; want the zero measurement on %s", x.pod.Name, x.rep.Measurement, x.rep.TEE, claims.TEESimSnp)
		}
	}
	if want := fmt.Sprintf("hello %s from %s", wantB, wantA); cli.report.GoodErr != "" || cli.report.Reply != want {
		t.Errorf("mTLS %s -> %s requiring %s and the zero measurement: reply %q, error %q; want reply %q", b.Name, a.Name, wantA, cli.report.Reply, cli.report.GoodErr, want)
	}
	if cli.report.BadErr == "" || !strings.Contains(cli.report.BadErr, "is not an accepted one") {
		t.Errorf("mTLS %s -> %s requiring measurement %s…: error %q, want a refusal naming the measurement", b.Name, a.Name, netlab.OtherMeasurement[:8], cli.report.BadErr)
	}

	host := startHelper(t, n1.NS, "fetch", helperSocketEnv+"="+n1.WorkloadSocket)
	if host.report.Code != "PermissionDenied" || host.report.ID != "" {
		t.Errorf("host process in %s: FetchX509SVID gave ID %q, code %q (%s); want PermissionDenied", n1.NS, host.report.ID, host.report.Code, host.report.Err)
	}
	unknown := c.AddPodSpec(n1, PodSpec{Namespace: "shop", Name: "unlisted-0"})
	ghost := startHelper(t, unknown.NS, "fetch", helperSocketEnv+"="+n1.WorkloadSocket)
	if ghost.report.Code != "PermissionDenied" || ghost.report.ID != "" {
		t.Errorf("pod %s, unknown to the pod-metadata file: FetchX509SVID gave ID %q, code %q (%s); want PermissionDenied", unknown.Name, ghost.report.ID, ghost.report.Code, ghost.report.Err)
	}
}
