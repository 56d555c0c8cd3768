package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	"github.com/confmesh/confmesh/internal/connlimit"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// localAPI serves the agent's unix socket. The socket is 0600 and owned by
// root: only the container runtime (running the CNI plugin) and operators
// on the node reach it. Beyond that, every method that networks pods
// answers only callers in the node's network namespace (NodeNSGuard).
type localAPI struct {
	agentv1.UnimplementedAgentServer
	a     *Agent
	guard *NodeNSGuard // every method but Ready and Status: node namespace only
}

// ServeLocal serves the local API on the unix socket at path until ctx ends.
func (a *Agent) ServeLocal(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Bound under a temporary name, made 0600, then renamed into place:
	// the socket never appears at path with the umask's mode.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	_ = os.Remove(tmp)
	lis, err := net.Listen("unix", tmp)
	if err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		lis.Close()
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		lis.Close()
		return err
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false) // it would unlink tmp
	defer os.Remove(path)
	guard, err := NewNodeNSGuard(DefaultNodeNetNS)
	if err != nil {
		lis.Close()
		return err
	}
	g := grpc.NewServer(append(guard.ServerOptions(),
		grpc.ConnectionTimeout(localHandshakeTimeout),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: localIdleTimeout}))...)
	agentv1.RegisterAgentServer(g, &localAPI{a: a, guard: guard})
	go func() {
		<-ctx.Done()
		g.Stop()
	}()
	return g.Serve(connlimit.New(lis, connlimit.Config{Total: LocalMaxConns}))
}

// Bounds of the local API. Its socket is root's only (0600), so no pod
// reaches it; the bounds keep a runaway local client (a container runtime
// that leaks CNI plugin connections) from taking the descriptors the
// agent's own work needs. Every call on it is short.
const (
	// LocalMaxConns is the most connections the local API holds open.
	LocalMaxConns         = 256
	localHandshakeTimeout = 10 * time.Second
	localIdleTimeout      = 2 * time.Minute
)

// CheckCaller answers only callers in the node's network namespace: the
// guard has refused every other one before this runs.
func (l *localAPI) CheckCaller(context.Context, *agentv1.CheckCallerRequest) (*agentv1.CheckCallerResponse, error) {
	return &agentv1.CheckCallerResponse{NodeNetns: l.guard.Node().String()}, nil
}

func (l *localAPI) Ready(context.Context, *agentv1.ReadyRequest) (*agentv1.ReadyResponse, error) {
	ok, reason := l.a.Ready()
	return &agentv1.ReadyResponse{Ready: ok, Reason: reason}, nil
}

func (l *localAPI) NodeInfo(context.Context, *agentv1.NodeInfoRequest) (*agentv1.NodeInfoResponse, error) {
	a := l.a
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.joined {
		return nil, status.Error(codes.Unavailable, "node not attested yet: "+a.readyReason)
	}
	return &agentv1.NodeInfoResponse{
		NodeName: a.cfg.NodeName, PodCidr: a.podCIDR.String(), ClusterCidr: a.clusterCIDR.String(),
		Mtu: uint32(a.mtu), Gateway: Gateway(a.podCIDR).String(),
	}, nil
}

func (l *localAPI) RegisterPod(ctx context.Context, req *agentv1.RegisterPodRequest) (*agentv1.RegisterPodResponse, error) {
	p := req.GetPod()
	if p == nil || p.GetContainerId() == "" {
		return nil, status.Error(codes.InvalidArgument, "pod container_id is required")
	}
	if p.GetIp() != "" {
		if _, err := netip.ParseAddr(p.GetIp()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "pod ip %q: %v", p.GetIp(), err)
		}
	}
	if err := l.a.RegisterPod(ctx, p); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "register pod: %v", err)
	}
	return &agentv1.RegisterPodResponse{}, nil
}

func (l *localAPI) UnregisterPod(ctx context.Context, req *agentv1.UnregisterPodRequest) (*agentv1.UnregisterPodResponse, error) {
	if err := l.a.UnregisterPod(ctx, req.GetContainerId()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "unregister pod: %v", err)
	}
	return &agentv1.UnregisterPodResponse{}, nil
}

func (l *localAPI) Status(context.Context, *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	return l.a.Status(), nil
}

// Status is what `confmesh status` shows.
func (a *Agent) Status() *agentv1.StatusResponse {
	ready, reason := a.Ready()
	si := a.Strict()
	var devPeers = map[string]*agentv1.PeerStatus{}
	kind := ""
	dev := a.device()
	if dev != nil {
		kind = string(dev.Kind())
	}
	a.mu.Lock()
	pub := a.wgKey.PublicKey()
	resp := &agentv1.StatusResponse{
		NodeName: a.cfg.NodeName, Attested: a.joined, SpiffeId: a.spiffeID, Datapath: kind,
		StrictMode: a.cfg.StrictMode && a.strict && si.State == StrictInstalled, Device: a.cfg.Device, Ready: ready, ReadyReason: reason,
		TrustsSimulatedRoot: a.verifier.TrustsSimulated(), Revision: a.revision, WireguardPublicKey: pub[:],
		State: a.state, StateReason: a.stateReason,
		ControlPlane: a.replicas.Current(), ControlPlanes: a.replicas.Addrs(), ControlPlaneFailovers: a.replicas.Failovers(),
	}
	if !a.stateSince.IsZero() {
		resp.StateSince = timestamppb.New(a.stateSince)
	}
	if a.podCIDR.IsValid() {
		resp.PodCidr = a.podCIDR.String()
	}
	resp.Strict = &agentv1.StrictStatus{Enabled: si.Enabled, State: si.State, Reason: si.Reason, Reinstalls: si.Reinstalls,
		RouteRepairs: si.RouteRepairs, Pods: uint32(si.Pods), DropsOut: si.Drops.Out, DropsIn: si.Drops.In, DropsSpoof: si.Drops.Spoof}
	if !si.LastReinstall.IsZero() {
		resp.Strict.LastReinstall = timestamppb.New(si.LastReinstall)
	}
	if !a.svidExpiry.IsZero() {
		resp.SvidExpiry = timestamppb.New(a.svidExpiry)
	}
	if a.own != nil {
		resp.Tee, resp.Measurement = a.own.TEE, a.own.Measurement
	}
	if a.ownTEE != nil {
		resp.Product, resp.ReportedTcb = a.ownTEE.Product, a.ownTEE.ReportedTCB.Raw
	}
	for name, s := range a.peerState {
		ps := &agentv1.PeerStatus{Name: name, Endpoint: s.record.GetEndpoint(), PodCidrs: s.record.GetPodCidrs(), WireguardPublicKey: s.record.GetWireguardPublicKey()}
		if s.err != nil {
			ps.State, ps.Reason = "refused", PeerReason(s.err)+": "+s.err.Error()
		} else {
			ps.State = "verified"
			if s.claims != nil {
				ps.Product, ps.ReportedTcb = s.claims.Product, s.claims.ReportedTCB.Raw
			}
		}
		devPeers[string(s.record.GetWireguardPublicKey())] = ps
		resp.Peers = append(resp.Peers, ps)
	}
	a.mu.Unlock()
	if dev != nil {
		if st, err := dev.State(); err == nil {
			for _, p := range st.Peers {
				if ps, ok := devPeers[string(p.PublicKey[:])]; ok && ps.State == "verified" {
					ps.RxBytes, ps.TxBytes = p.ReceiveBytes, p.TransmitBytes
					if !p.LastHandshakeTime.IsZero() {
						ps.LatestHandshake = timestamppb.New(p.LastHandshakeTime)
					}
				}
			}
		}
	}
	sortPeers(resp.Peers)
	return resp
}

func sortPeers(ps []*agentv1.PeerStatus) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && ps[j].Name < ps[j-1].Name; j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}
