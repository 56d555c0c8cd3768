// Package agent is the node agent: it installs strict fail-closed rules,
// owns the WireGuard device, joins the control plane after verifying it,
// verifies every peer itself before configuring it, renews its identity,
// and serves the local API for the CNI plugin and `confmesh status`.
package agent

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/health"
	"github.com/confmesh/confmesh/agent/podmeta"
	"github.com/confmesh/confmesh/agent/workload"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/confmesh/confmesh/internal/wg"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Defaults for Config fields left zero.
const (
	DefaultDevice      = "cm0"
	DefaultListenPort  = 51820
	DefaultUnderlayMTU = 1500
	// WireGuardOverhead is what encapsulation costs over an IPv6 underlay,
	// the worst case: outer IPv6 (40) + UDP (8) + WireGuard (32).
	WireGuardOverhead = 80
	// WireGuardOverheadIPv4 is the cost over an IPv4 underlay: outer IPv4
	// (20) + UDP (8) + WireGuard (32).
	WireGuardOverheadIPv4 = 60
	DefaultClusterCIDR    = "10.244.0.0/16"
	DefaultTable          = "confmesh"
	tickInterval          = 2 * time.Second
	recheckInterval       = 30 * time.Second
)

// Config configures an Agent.
type Config struct {
	NodeName string
	// ControlPlanes lists the control plane's replicas (HOST:PORT each).
	// Every call tries them in turn, starting from the one that worked
	// last; each replica's own evidence is verified before it is used.
	ControlPlanes []string
	// ControlPlane is the single-address form: one HOST:PORT, or several
	// comma-separated (as the --control-plane flag takes them). Set it or
	// ControlPlanes, not both.
	ControlPlane string
	// ReplicaTimeout bounds one replica's dial when there are several
	// (default cpclient.DefaultReplicaTimeout).
	ReplicaTimeout time.Duration
	Policy         *attest.Policy
	Provider       attest.Provider
	StateDir       string
	// Endpoint is this node's underlay address:port that peers send to.
	Endpoint    netip.AddrPort
	Device      string
	ListenPort  int
	UnderlayMTU int
	// ClusterCIDR is known before joining, so strict mode can be installed
	// before anything else happens.
	ClusterCIDR netip.Prefix
	StrictMode  bool
	Table       string
	// DatapathCommand starts the userspace datapath when the kernel has no WireGuard.
	DatapathCommand []string
	ForceUserspace  bool
	// KeyRotation rotates the WireGuard key on this period (0: never).
	KeyRotation time.Duration
	// WorkloadSocket is where the SPIFFE Workload API is served after the
	// join (the CLI's default is DefaultWorkloadSocket); empty: not served.
	WorkloadSocket string
	// PodMetadata tells each pod's service account (its workload
	// identity); nil knows no pod, so no pod gets an identity. The pod's
	// own word (RegisterPod's service account) is never used.
	PodMetadata podmeta.Source
	Logger      *slog.Logger
	// TDXCollateral, when set, gives the verifier Intel collateral so TDX
	// peers' TCB status is checked (attest.Options.TDXCollateral).
	TDXCollateral *attest.TDXCollateral
	Now           func() time.Time
	// CNI plugin installation, done once the node is attested (see
	// CNIInstall). CNIConfDir empty: install nothing. CNIBinary empty:
	// copy no binary (it is already in CNIBinDir). CNIAgentSocket is
	// written into the conflist as agentSocket (empty: the plugin default).
	CNIBinDir      string
	CNIConfDir     string
	CNIBinary      string
	CNIAgentSocket string
	// WorkloadLimits bound the Workload API's connections (zero fields:
	// the workload package's defaults).
	WorkloadLimits workload.Limits
	// LivenessTimeout is how long a degraded state (strict mode, datapath,
	// file descriptors, peers) may last, or the strict-mode loop stay
	// silent, before Live reports the agent dead (default
	// DefaultLivenessTimeout; negative: never).
	LivenessTimeout time.Duration
}

// Agent is one node's agent.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	now     func() time.Time
	td      spiffeid.TrustDomain
	metrics *metrics

	verifier *attest.Verifier
	svidKey  crypto.Signer
	dev      *wg.Device
	replicas *cpclient.Replicas // the control plane's replicas, and the one in use

	mu          sync.Mutex // guards everything below
	wgKey       wgtypes.Key
	keyCreated  time.Time
	joined      bool
	svid        [][]byte
	svidExpiry  time.Time
	svidIssued  time.Time
	spiffeID    string
	bundle      *x509bundle.Bundle
	podCIDR     netip.Prefix
	clusterCIDR netip.Prefix
	mtu         int
	revision    uint64
	records     map[string]*cpv1.Peer // as the control plane sent them
	peerState   map[string]peerStatus
	haveSnap    bool
	strict      bool
	readyReason string
	// The node's standing with the control plane (StateJoining, ...).
	state       string
	stateReason string
	stateSince  time.Time
	own         *identity.Claims // this node's claims, from its SVID
	ownTEE      *attest.Claims   // this node's own evidence, verified under its own policy
	pods        *podStore
	jwtBundle   *jwtbundle.Bundle // JWT-SVID keys, from the control plane
	workload    *workload.Server  // nil when WorkloadSocket is empty
	ipam        *IPAM

	reconcileMu sync.Mutex
	rejoinMu    sync.Mutex      // one rejoin at a time
	ctx         context.Context // Run's context; bounds background work

	health *health.Tracker // degraded conditions, cleared by the checks that pass (heal.go)

	strictK strictKeeper // strict mode as found in the kernel (strict.go)
}

type peerStatus struct {
	record *cpv1.Peer
	err    error
	key    wgtypes.Key
	claims *attest.Claims // what the verified evidence says (product, TCB)
}

// New validates the configuration and loads the node's keys.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" || (cfg.ControlPlane == "" && len(cfg.ControlPlanes) == 0) || cfg.Policy == nil || cfg.Provider == nil || cfg.StateDir == "" {
		return nil, errors.New("agent: NodeName, ControlPlanes (or ControlPlane), Policy, Provider and StateDir are required")
	}
	replicas, err := controlPlaneReplicas(cfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := identity.ValidateNodeName(cfg.NodeName); err != nil {
		return nil, fmt.Errorf("node name: %w", err)
	}
	if !cfg.Endpoint.IsValid() {
		return nil, errors.New("agent: Endpoint (underlay address:port) is required")
	}
	if cfg.Device == "" {
		cfg.Device = DefaultDevice
	}
	if cfg.ListenPort == 0 {
		cfg.ListenPort = DefaultListenPort
	}
	if cfg.UnderlayMTU == 0 {
		cfg.UnderlayMTU = DefaultUnderlayMTU
	}
	if m := cfg.UnderlayMTU - Overhead(cfg.Endpoint); m < 576 {
		return nil, fmt.Errorf("underlay MTU %d leaves %d for pods; need at least 576", cfg.UnderlayMTU, m)
	}
	if !cfg.ClusterCIDR.IsValid() {
		cfg.ClusterCIDR = netip.MustParsePrefix(DefaultClusterCIDR)
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	td, err := spiffeid.TrustDomainFromString(cfg.Policy.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain: %w", err)
	}
	v, err := attest.NewVerifier(cfg.Policy, attest.Options{Logger: log, Now: now, TDXCollateral: cfg.TDXCollateral})
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	wgKey, err := loadOrCreateWireGuardKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	svidKey, err := loadOrCreateSVIDKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	pods, err := openPodStore(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	ipam, err := OpenIPAM(filepath.Join(cfg.StateDir, "ipam"), now)
	if err != nil {
		return nil, err
	}
	if err := cfg.WorkloadLimits.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.LivenessTimeout == 0 {
		cfg.LivenessTimeout = DefaultLivenessTimeout
	}
	m := newMetrics()
	m.registerReplicas(replicas)
	a := &Agent{
		cfg: cfg, log: log, now: now, td: td, metrics: m, verifier: v, svidKey: svidKey, replicas: replicas,
		wgKey: wgKey, keyCreated: now(), clusterCIDR: cfg.ClusterCIDR, mtu: cfg.UnderlayMTU - Overhead(cfg.Endpoint),
		records: map[string]*cpv1.Peer{}, peerState: map[string]peerStatus{}, readyReason: "starting", pods: pods, ipam: ipam,
		health: health.New(now),
	}
	m.registerHealth(a.health, a.workloadConnStats)
	if cfg.StrictMode {
		m.registerStrict(a.Strict)
	}
	a.setStateLocked(StateJoining, "starting")
	replicas.OnFailover = func(from, to string) {
		a.log.Warn("control plane failover: using another replica", "from", from, "to", to)
	}
	// What the last join said, so the first strict rules keep local pods
	// reachable while this agent re-joins.
	if st, err := loadNetState(cfg.StateDir); err != nil {
		log.Warn("ignoring remembered network state", "err", err)
	} else if st.PodCIDR.IsValid() {
		a.podCIDR, a.clusterCIDR = st.PodCIDR, st.ClusterCIDR
	}
	return a, nil
}

func uniquePrefixes(ps ...netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, p := range ps {
		if p.IsValid() && !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// Run is the agent's life: strict rules first, then the device, the join,
// and the watch/renew loop until ctx ends. The device and the rules are
// left in place on exit: an agent restart costs no traffic.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	a.ctx = ctx
	a.mu.Unlock()
	if err := a.InstallStrictRules(); err != nil {
		return err
	}
	go a.strictLoop(ctx) // from now on, a removed or altered table is re-installed at once
	go a.healthLoop(ctx) // file descriptors (heal.go)
	if err := a.ensureDevice(ctx); err != nil {
		return err
	}
	if err := a.joinWithRetry(ctx); errors.Is(err, errStopped) {
		// Refused or revoked: stay up without peers, for status and metrics.
	} else if err != nil {
		return err
	} else {
		if err := a.startWorkloadAPI(ctx); err != nil {
			a.log.Error("SPIFFE Workload API not served", "err", err)
		}
		go a.watchLoop(ctx)
	}
	t := time.NewTicker(tickInterval)
	defer t.Stop()
	lastRecheck := a.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.checkDatapath(ctx) // heal.go
		if a.now().Sub(lastRecheck) >= recheckInterval || a.health.IsFailing(condPeers) {
			lastRecheck = a.now()
			a.reconcile() // evidence ages out, SVIDs expire; a failed apply is retried
		}
		a.collectDeviceMetrics()
		if a.renewDue() {
			if err := a.renew(ctx); err != nil {
				a.log.Error("renewal failed", "err", err)
				a.metrics.renewals.WithLabelValues("failed").Inc()
				if r, ok := cpclient.AsRefusal(err); ok {
					// Refused, not unreachable: the join that follows decides.
					a.metrics.cpRefusals.WithLabelValues(r.Op, r.Reason).Inc()
					a.rejoin(ctx, "renewal refused: "+r.Message())
				} else if status.Code(err) == codes.Unauthenticated {
					a.rejoin(ctx, "renewal not authenticated: "+err.Error())
				}
			} else {
				a.metrics.renewals.WithLabelValues("ok").Inc()
			}
		}
	}
}

func (a *Agent) ensureDevice(ctx context.Context) error {
	a.mu.Lock()
	var addrs []netip.Prefix
	if a.podCIDR.IsValid() {
		gw := Gateway(a.podCIDR)
		addrs = []netip.Prefix{netip.PrefixFrom(gw, gw.BitLen())}
	}
	key := a.wgKey
	a.mu.Unlock()
	dev, err := wg.Ensure(ctx, wg.Config{
		Name: a.cfg.Device, MTU: a.mtu, Addresses: addrs, DatapathCommand: a.cfg.DatapathCommand,
		PIDFile: a.cfg.StateDir + "/datapath.pid", DatapathLog: a.cfg.StateDir + "/datapath.log",
		Logger: a.log, ForceUserspace: a.cfg.ForceUserspace,
	})
	if err != nil {
		return fmt.Errorf("WireGuard device: %w", err)
	}
	a.mu.Lock()
	old := a.dev
	a.dev = dev
	a.mu.Unlock()
	if old != nil && old != dev {
		old.Close()
	}
	if err := dev.Configure(key, a.cfg.ListenPort); err != nil {
		return fmt.Errorf("configure WireGuard device: %w", err)
	}
	return nil
}

// controlPlaneReplicas is the validated replica list of cfg.
func controlPlaneReplicas(cfg Config) (*cpclient.Replicas, error) {
	addrs := cfg.ControlPlanes
	if cfg.ControlPlane != "" {
		if len(cfg.ControlPlanes) > 0 {
			return nil, errors.New("set ControlPlane or ControlPlanes, not both")
		}
		var err error
		if addrs, err = cpclient.ParseAddrs(cfg.ControlPlane); err != nil {
			return nil, err
		}
	}
	r, err := cpclient.NewReplicas(addrs)
	if err != nil {
		return nil, err
	}
	if cfg.ReplicaTimeout > 0 {
		r.Timeout = cfg.ReplicaTimeout
	}
	return r, nil
}

// dial connects to the first control-plane replica, starting from the one
// that worked last, whose evidence verifies.
func (a *Agent) dial(ctx context.Context) (*cpclient.Conn, error) {
	return a.call(ctx, nil)
}

// call runs op on a verified connection to a control-plane replica,
// trying the next replica while one is unavailable (cpclient.Replicas.Dial).
// The returned connection is open; the caller closes it.
func (a *Agent) call(ctx context.Context, op func(context.Context, *cpclient.Conn) error) (*cpclient.Conn, error) {
	a.mu.Lock()
	cfg := cpclient.Config{Verifier: a.verifier, TrustDomain: a.td, Bundle: a.bundle, Now: a.now}
	if a.joined {
		cfg.ClientCertificate = func() (*tls.Certificate, error) {
			a.mu.Lock()
			defer a.mu.Unlock()
			return &tls.Certificate{Certificate: a.svid, PrivateKey: a.svidKey}, nil
		}
	}
	a.mu.Unlock()
	return a.replicas.Dial(ctx, cfg, op)
}

// dialTimeout bounds one join or renewal call on one replica (after its
// dial, which Replicas.Timeout bounds).
const dialTimeout = 15 * time.Second

func (a *Agent) nodeSpec() cpclient.Node {
	a.mu.Lock()
	defer a.mu.Unlock()
	pub := a.wgKey.PublicKey()
	return cpclient.Node{Name: a.cfg.NodeName, Endpoint: a.cfg.Endpoint.String(), WireGuardKey: pub[:], SVIDKey: a.svidKey, Provider: a.cfg.Provider}
}

// joinWithRetry joins, retrying while the control plane is unreachable
// or the join fails for a passing reason. A refusal (cpclient.Refusal)
// stops the agent: errStopped.
func (a *Agent) joinWithRetry(ctx context.Context) error {
	backoff := time.Second
	for {
		err := a.join(ctx)
		if err == nil {
			return nil
		}
		if a.stopIfRefused(err) {
			return errStopped
		}
		a.setReady("not attested: " + err.Error())
		a.log.Error("join failed; retrying", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		// Capped low: after a control-plane outage a node should be back
		// within seconds of the control plane.
		if backoff < 8*time.Second {
			backoff *= 2
		}
	}
}

func (a *Agent) join(ctx context.Context) error {
	var resp *cpv1.JoinResponse
	conn, err := a.call(ctx, func(ctx context.Context, conn *cpclient.Conn) error {
		jctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		var err error
		resp, err = conn.Join(jctx, a.nodeSpec())
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := a.adopt(resp.GetSvid(), resp.GetTrustBundle()); err != nil {
		return err
	}
	a.adoptJWTBundle(resp.GetJwtBundle())
	a.noteOwnEvidence(conn)
	pod, err := netip.ParsePrefix(resp.GetPodCidr())
	if err != nil {
		return fmt.Errorf("control plane sent pod CIDR %q: %w", resp.GetPodCidr(), err)
	}
	cluster, err := netip.ParsePrefix(resp.GetClusterCidr())
	if err != nil || !cluster.Contains(pod.Addr()) {
		return fmt.Errorf("control plane sent cluster CIDR %q that does not hold pod CIDR %s", resp.GetClusterCidr(), pod)
	}
	if err := saveNetState(a.cfg.StateDir, netState{PodCIDR: pod, ClusterCIDR: cluster}); err != nil {
		a.log.Warn("could not remember the pod CIDR for restarts", "err", err)
	}
	a.mu.Lock()
	a.podCIDR, a.clusterCIDR, a.joined = pod, cluster, true
	a.setStateLocked(StateActive, "")
	if hint := int(resp.GetMtuHint()); hint > 0 && hint < a.mtu {
		a.mtu = hint
	}
	a.mu.Unlock()
	if cluster != a.cfg.ClusterCIDR {
		a.log.Warn("control plane's cluster CIDR differs from the configured one; strict mode covers both", "configured", a.cfg.ClusterCIDR, "controlplane", cluster)
	}
	if err := a.InstallStrictRules(); err != nil {
		return err
	}
	if err := a.ensureDevice(ctx); err != nil {
		return err
	}
	a.log.Info("joined", "spiffeID", resp.GetSpiffeId(), "podCIDR", pod, "datapath", a.device().Kind())
	a.refreshReady()
	a.reconcile() // back in the peer set after a re-join: the peers return
	a.registerPendingPods(ctx)
	if err := a.installCNI(); err != nil {
		return fmt.Errorf("install CNI plugin: %w", err)
	}
	return nil
}

// adopt takes a new node SVID and bundle.
func (a *Agent) adopt(svid, bundle [][]byte) error {
	chain, err := identity.ParseChain(svid)
	if err != nil {
		return fmt.Errorf("node SVID: %w", err)
	}
	b, err := cpclient.ParseBundle(a.td, bundle)
	if err != nil {
		return err
	}
	id, err := identity.VerifySVID(chain, b, a.now())
	if err != nil {
		return fmt.Errorf("node SVID does not verify against the bundle: %w", err)
	}
	claims, err := identity.ClaimsFromCert(chain[0])
	if err != nil {
		return fmt.Errorf("node SVID claims: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	pub := a.wgKey.PublicKey()
	if string(claims.WireGuardKey) != string(pub[:]) {
		return errors.New("node SVID binds another WireGuard key than ours")
	}
	a.svid, a.bundle, a.spiffeID = svid, b, id.String()
	a.svidExpiry, a.svidIssued = chain[0].NotAfter, a.now()
	a.own = claims
	return nil
}

// noteOwnEvidence verifies the evidence this node just attested with under
// its own policy, for `confmesh status` (its product and decoded TCB). A
// failure is only logged: the control plane admitted the node, but peers
// with this policy will refuse it, which is worth a warning.
func (a *Agent) noteOwnEvidence(conn *cpclient.Conn) {
	ev := conn.Evidence()
	if ev == nil {
		return
	}
	a.mu.Lock()
	v := a.verifier
	a.mu.Unlock()
	c, err := v.VerifyUnbound(ev)
	if err != nil {
		a.log.Warn("this node's own evidence does not pass its own policy: peers with this policy will refuse it", "reason", attest.Reason(err), "err", err)
		return
	}
	a.mu.Lock()
	a.ownTEE = c
	a.mu.Unlock()
}

// watchLoop follows the peer set, reconnecting (and re-attesting the
// control plane) whenever the stream breaks. Existing tunnels are left
// alone while the control plane is away. When the control plane says this
// node is out of the peer set (PermissionDenied, or its SVID no longer
// authenticates) the peers go and the node joins again; a refused join
// stops the agent and ends the loop.
func (a *Agent) watchLoop(ctx context.Context) {
	const minBackoff = 500 * time.Millisecond
	backoff := minBackoff
	for ctx.Err() == nil && !a.stopped() {
		err := a.watchOnce(ctx)
		if ctx.Err() != nil || errors.Is(err, errStopped) {
			return
		}
		if errors.Is(err, errWatchBroke) {
			// It was up: a replica that dies now is replaced at once
			// (the next dial starts with it and moves on).
			backoff = minBackoff
		}
		if c := status.Code(err); c == codes.PermissionDenied || c == codes.Unauthenticated {
			a.log.Error("control plane says this node is not in the peer set; dropping every peer and joining again", "err", err)
			if a.rejoin(ctx, status.Convert(err).Message()) {
				return
			}
		} else if err != nil {
			a.log.Warn("watch interrupted; reconnecting", "err", err, "in", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		if backoff < 10*time.Second {
			backoff *= 2
		}
	}
}

// watchSettle is how long a new watch stream must stay open without an
// error before its replica counts as working: a replica resumed at the
// current revision sends nothing until the next change.
const watchSettle = time.Second

// errWatchBroke wraps the error that ended a watch stream which was up.
var errWatchBroke = errors.New("watch stream broke")

type recvResult struct {
	ev  *cpv1.WatchEvent
	err error
}

// watchOnce opens a watch on a replica, resuming from the last revision
// seen (revisions are the shared store's: any replica resumes them), and
// follows it until it breaks. The peer set, and so every tunnel, is only
// ever changed by the events received, never by the switch of replica.
func (a *Agent) watchOnce(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var stream cpv1.ControlPlane_WatchClient
	var first <-chan recvResult
	conn, err := a.call(wctx, func(ctx context.Context, conn *cpclient.Conn) error {
		a.mu.Lock()
		from := a.revision
		a.mu.Unlock()
		s, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{Revision: from})
		if err != nil {
			return err
		}
		ch := make(chan recvResult, 1)
		go func() {
			ev, err := s.Recv()
			ch <- recvResult{ev, err}
		}()
		t := time.NewTimer(watchSettle)
		defer t.Stop()
		select {
		case r := <-ch:
			if r.err != nil {
				return r.err
			}
			ch <- r // handled below, with the rest
		case <-t.C:
		}
		stream, first = s, ch
		return nil
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	for {
		var r recvResult
		if first != nil {
			r, first = <-first, nil
		} else {
			r.ev, r.err = stream.Recv()
		}
		if r.err != nil {
			if status.Code(r.err) == codes.PermissionDenied || status.Code(r.err) == codes.Unauthenticated {
				return r.err
			}
			return fmt.Errorf("%w: %w", errWatchBroke, r.err)
		}
		if a.stopped() {
			return errStopped
		}
		a.applyEvent(r.ev)
		a.reconcile()
	}
}

func (a *Agent) applyEvent(ev *cpv1.WatchEvent) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch e := ev.Event.(type) {
	case *cpv1.WatchEvent_Snapshot:
		a.records = map[string]*cpv1.Peer{}
		for _, p := range e.Snapshot.GetPeers() {
			a.records[p.GetName()] = p
		}
		a.haveSnap = true
	case *cpv1.WatchEvent_Upsert:
		if e.Upsert.GetName() != a.cfg.NodeName {
			a.records[e.Upsert.GetName()] = e.Upsert
		}
	case *cpv1.WatchEvent_Delete:
		delete(a.records, e.Delete)
	}
	a.revision = ev.GetRevision()
}

// reconcile verifies every peer record locally and brings the device to
// exactly the verified set: the pure Reconcile plan applied incrementally.
func (a *Agent) reconcile() {
	a.reconcileMu.Lock()
	defer a.reconcileMu.Unlock()
	a.mu.Lock()
	// Out of the peer set (left it, refused, revoked): no peers at all. A
	// restart's first join is not that: its tunnels stay until the
	// snapshot.
	out := a.state != StateActive && (a.haveSnap || a.state != StateJoining)
	if !out && (!a.haveSnap || a.bundle == nil) {
		a.mu.Unlock()
		return // never tear down peers before the first snapshot
	}
	checker := &PeerChecker{TrustDomain: a.td, Bundle: a.bundle, Verifier: a.verifier, ClusterCIDR: a.clusterCIDR, LocalCIDR: a.podCIDR, Now: a.now}
	records := make([]*cpv1.Peer, 0, len(a.records))
	for _, r := range a.records {
		if !out {
			records = append(records, r)
		}
	}
	mtu := a.mtu
	a.mu.Unlock()
	sort.Slice(records, func(i, j int) bool { return records[i].GetName() < records[j].GetName() })

	states := map[string]peerStatus{}
	var desired []DesiredPeer
	claimed := map[netip.Prefix]string{}
	for _, r := range records {
		d, claims, err := checker.Check(r)
		if err == nil {
			for _, p := range d.AllowedIPs {
				for q, owner := range claimed {
					if p.Overlaps(q) {
						err = fmt.Errorf("%w: pod CIDR %s overlaps %s of peer %s", ErrPeerAddressing, p, q, owner)
					}
				}
			}
		}
		if err != nil {
			prev, seen := a.peerStateOf(r.GetName())
			if !seen || prev.err == nil || prev.err.Error() != err.Error() {
				a.log.Warn("peer refused", "peer", r.GetName(), "reason", PeerReason(err), "err", err)
				a.metrics.refusals.WithLabelValues(PeerReason(err)).Inc()
			}
			states[r.GetName()] = peerStatus{record: r, err: err}
			continue
		}
		for _, p := range d.AllowedIPs {
			claimed[p] = d.Name
		}
		desired = append(desired, d)
		states[r.GetName()] = peerStatus{record: r, key: d.PublicKey, claims: claims}
	}
	a.mu.Lock()
	a.peerState = states
	a.mu.Unlock()
	verified := len(desired)
	a.metrics.peers.WithLabelValues("verified").Set(float64(verified))
	a.metrics.peers.WithLabelValues("refused").Set(float64(len(records) - verified))

	dev := a.device()
	if dev == nil {
		return
	}
	state, err := dev.State()
	if err != nil {
		a.log.Error("read device", "err", err)
		a.health.Fail(condPeers, "read device: "+err.Error())
		return
	}
	plan := Reconcile(desired, state.Peers)
	if len(plan.Changes) > 0 {
		// Taken before the device has the new peers: their first handshake
		// can complete before ApplyPeers returns (a millisecond round trip,
		// a loaded node), and one that counted as "not since" would have
		// kickHandshakes tear down the session it just made.
		added := a.now()
		if err := dev.ApplyPeers(plan.Changes); err != nil {
			a.log.Error("apply peers", "err", err)
			a.health.Fail(condPeers, "apply peers: "+err.Error())
			return
		}
		a.log.Info("peers applied", "changes", len(plan.Changes), "verified", verified)
		a.kickHandshakes(a.runCtx(), addedKeys(plan), added)
	}
	if err := dev.SyncRoutes(plan.Routes, mtu); err != nil {
		a.log.Error("sync routes", "err", err)
		a.health.Fail(condPeers, "sync routes: "+err.Error())
		return
	}
	a.notePeerRoutes(plan.Routes, mtu)
	a.passed(condPeers)
}

func (a *Agent) peerStateOf(name string) (peerStatus, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.peerState[name]
	return s, ok
}

func (a *Agent) renewDue() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.joined || a.state != StateActive {
		return false
	}
	half := a.svidIssued.Add(a.svidExpiry.Sub(a.svidIssued) / 2)
	rotate := a.cfg.KeyRotation > 0 && a.now().Sub(a.keyCreated) >= a.cfg.KeyRotation
	return !a.now().Before(half) || rotate
}

// renew re-attests with fresh evidence, rotating the WireGuard key when its
// period is over. The new key goes live on the device only after the
// control plane accepted it; peers switch when its upsert reaches them.
func (a *Agent) renew(ctx context.Context) error {
	var newKey *wgtypes.Key
	a.mu.Lock()
	if a.cfg.KeyRotation > 0 && a.now().Sub(a.keyCreated) >= a.cfg.KeyRotation {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			a.mu.Unlock()
			return err
		}
		newKey = &k
	}
	a.mu.Unlock()
	var newPub []byte
	if newKey != nil {
		p := newKey.PublicKey()
		newPub = p[:]
	}
	var resp *cpv1.RenewResponse
	conn, err := a.call(ctx, func(ctx context.Context, conn *cpclient.Conn) error {
		rctx, cancel := context.WithTimeout(ctx, dialTimeout)
		defer cancel()
		var err error
		resp, err = conn.Renew(rctx, a.nodeSpec(), newPub)
		return err
	})
	if err != nil {
		return err
	}
	defer conn.Close()
	a.noteOwnEvidence(conn)
	if newKey != nil {
		if err := saveWireGuardKey(a.cfg.StateDir, *newKey); err != nil {
			return fmt.Errorf("persist rotated WireGuard key: %w", err)
		}
		switched := a.now()
		if err := a.device().Configure(*newKey, a.cfg.ListenPort); err != nil {
			return fmt.Errorf("switch device to the rotated key: %w", err)
		}
		a.mu.Lock()
		a.wgKey, a.keyCreated = *newKey, a.now()
		a.mu.Unlock()
		// Sessions under the old key are gone: start handshakes under the
		// new one now rather than at the next packet or keepalive.
		if st, err := a.device().State(); err == nil {
			keys := make([]wgtypes.Key, 0, len(st.Peers))
			for _, p := range st.Peers {
				keys = append(keys, p.PublicKey)
			}
			a.rekick(setOf(keys), switched)
			a.kickHandshakes(ctx, keys, switched)
		}
		a.log.Info("WireGuard key rotated")
	}
	if err := a.adopt(resp.GetSvid(), resp.GetTrustBundle()); err != nil {
		return err
	}
	a.adoptJWTBundle(resp.GetJwtBundle())
	a.log.Info("node SVID renewed", "expires", a.svidExpiry)
	return nil
}

func (a *Agent) collectDeviceMetrics() {
	dev := a.device()
	if dev == nil {
		return
	}
	st, err := dev.State()
	if err != nil {
		return
	}
	a.mu.Lock()
	names := map[wgtypes.Key]string{}
	for n, s := range a.peerState {
		if s.err == nil {
			names[s.key] = n
		}
	}
	a.mu.Unlock()
	for _, p := range st.Peers {
		n, ok := names[p.PublicKey]
		if !ok {
			continue
		}
		a.metrics.rx.WithLabelValues(n).Set(float64(p.ReceiveBytes))
		a.metrics.tx.WithLabelValues(n).Set(float64(p.TransmitBytes))
		if !p.LastHandshakeTime.IsZero() {
			a.metrics.handshake.WithLabelValues(n).Set(float64(p.LastHandshakeTime.Unix()))
		}
	}
}

// SetPolicy swaps in a new local policy and re-verifies every peer at once:
// a peer that no longer passes is removed from the device.
func (a *Agent) SetPolicy(p *attest.Policy) error {
	if p.TrustDomain != a.td.String() {
		return fmt.Errorf("policy trust domain %q differs from the running %q", p.TrustDomain, a.td)
	}
	v, err := attest.NewVerifier(p, attest.Options{Logger: a.log, Now: a.now, TDXCollateral: a.cfg.TDXCollateral})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.verifier = v
	a.mu.Unlock()
	a.log.Info("agent policy loaded; re-verifying peers")
	a.reconcile()
	return nil
}

// Metrics returns the agent's Prometheus registry.
func (a *Agent) Metrics() *prometheus.Registry { return a.metrics.reg }

// device returns the current WireGuard device (nil before the first Ensure).
func (a *Agent) device() *wg.Device {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dev
}

// runCtx is Run's context (Background before Run).
func (a *Agent) runCtx() context.Context {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx == nil {
		return context.Background()
	}
	return a.ctx
}

func setOf(keys []wgtypes.Key) map[wgtypes.Key]bool {
	m := make(map[wgtypes.Key]bool, len(keys))
	for _, k := range keys {
		m[k] = true
	}
	return m
}

// Overhead is what WireGuard encapsulation costs on the underlay of this
// endpoint: WireGuardOverheadIPv4 for an IPv4 address, else (IPv6, or an
// IPv4-mapped address that may be sent as IPv6) WireGuardOverhead.
func Overhead(endpoint netip.AddrPort) int {
	if endpoint.Addr().Is4() {
		return WireGuardOverheadIPv4
	}
	return WireGuardOverhead
}
