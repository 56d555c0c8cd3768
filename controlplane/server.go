// Package controlplane admits nodes: it verifies their evidence, runs the
// SPIFFE CA, allocates pod CIDRs and streams the verified peer set. It is
// trusted to allocate and distribute, not to vouch: agents re-verify every
// peer it hands out, and verify the control plane's own evidence first.
package controlplane

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/ipam"
	"github.com/confmesh/confmesh/controlplane/store"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/connpool"
	"github.com/confmesh/confmesh/internal/identity"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for Config fields left zero.
const (
	DefaultSVIDTTL       = time.Hour
	DefaultWorkloadTTL   = time.Hour
	DefaultChallengeTTL  = 60 * time.Second
	DefaultClusterCIDR   = "10.244.0.0/16"
	DefaultNodePrefixLen = 24
	DefaultMTUHint       = 1440
	DefaultSweepInterval = 15 * time.Second
	// DefaultEvidenceEpoch is how long the control plane's own evidence is
	// reused before its TEE is asked for a new report.
	DefaultEvidenceEpoch = 30 * time.Second
	// MaxEvidenceEpoch keeps the epoch within what agents accept
	// (attest.MaxControlPlaneEvidenceAge, less the allowed clock skew).
	MaxEvidenceEpoch = attest.MaxControlPlaneEvidenceAge - attest.MaxChallengeSkew
	// maxConsumedChallenges bounds the used challenges remembered; honest
	// joins and renewals within one challenge TTL stay far below it.
	maxConsumedChallenges = 100000
)

// Config configures a Server.
type Config struct {
	// Policy is what joining nodes must satisfy; it also sets the trust domain.
	Policy *attest.Policy
	// Provider produces the control plane's own evidence (real SNP or sim).
	Provider attest.Provider
	// Store keeps nodes, the CA, allocations and revocations. A
	// store.Shared store makes this server one of several replicas: its
	// cache follows the store's watch, which Run must be running for.
	Store store.Store
	// StoreSyncGrace, StaleWatchLimit and StoreWait bound a replica's
	// behaviour when its shared store's watch breaks or lags
	// (DefaultStoreSyncGrace, DefaultStaleWatchLimit, DefaultStoreWait when
	// zero; see replica.go). Unused with a store that is not shared.
	StoreSyncGrace  time.Duration
	StaleWatchLimit time.Duration
	StoreWait       time.Duration
	// StoreProgressDeadline is how long a shared store's watch may
	// deliver neither a change nor progress, or a store.Prober's probe
	// take, before the store counts as broken from its last progress
	// (DefaultStoreProgressDeadline when zero; more than
	// store.ProgressInterval). Open watches end StaleWatchLimit after the
	// last progress, or when the silence is noticed if that is later.
	StoreProgressDeadline time.Duration
	// ClusterCIDR is the pod network; each node gets a NodePrefixLen slice.
	ClusterCIDR   string
	NodePrefixLen int
	// MTUHint is sent to agents, which use the smaller of it and their own
	// (underlay MTU - 60 on IPv4, - 80 on IPv6): default 1500 - 60.
	MTUHint uint32
	// SVIDTTL is the node SVID lifetime; agents renew at half of it.
	SVIDTTL time.Duration
	// WorkloadTTL is the workload SVID lifetime.
	WorkloadTTL time.Duration
	// JWTTTL is the JWT-SVID lifetime (DefaultJWTTTL when zero), capped at
	// WorkloadTTL.
	JWTTTL time.Duration
	// ChallengeTTL is how long an issued challenge stays usable.
	ChallengeTTL time.Duration
	// EvidenceEpoch is how long the control plane's own evidence is reused
	// (DefaultEvidenceEpoch when zero, at most MaxEvidenceEpoch).
	EvidenceEpoch time.Duration
	// SourceRate and SourceBurst limit Challenge and Join calls per source
	// (a node SVID's identity, else the caller's address): a token bucket
	// of SourceBurst tokens refilled at SourceRate per second
	// (DefaultSourceRate, DefaultSourceBurst when zero). MaxSources bounds
	// the buckets kept (DefaultMaxSources when zero).
	SourceRate  float64
	SourceBurst int
	MaxSources  int
	// SweepInterval is how often every node is re-evaluated.
	SweepInterval time.Duration
	// Limits bound the agent listener's connections (limits.go); zero
	// fields take their defaults.
	Limits Limits
	// DNSNames and IPAddresses go into the serving certificate.
	DNSNames    []string
	IPAddresses []net.IP
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Now replaces the clock (tests).
	Now func() time.Time
	// VerifierOptions pass through to attest.NewVerifier (e.g. a KDS fetcher).
	VerifierOptions attest.Options
}

// Server is the control plane. Mutations (join, renew, revoke, sweep) are
// serialised by writeMu and mu so uniqueness checks and allocation are
// atomic on this replica (across replicas the store's conflict checks are).
type Server struct {
	cpv1.UnimplementedControlPlaneServer
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	store store.Store
	// shared is the store when replicas share it, else nil.
	shared store.Shared
	alloc  *ipam.Allocator
	ca     *identity.CA
	jwt    *jwtSigner
	td     spiffeid.TrustDomain
	id     spiffeid.ID

	// prober is a store that is not shared but can be probed, else nil;
	// tracked: the store's health is followed (shared or prober).
	prober  store.Prober
	tracked bool

	tlsKey  crypto.Signer
	tlsCert *x509.Certificate
	tlsHash []byte

	// writeMu serialises writers, held across their wait for the store's
	// watch (with a shared store), while mu guards the state and is
	// released meanwhile so the watch can apply changes.
	writeMu  sync.Mutex
	mu       sync.Mutex // guards the state below
	cond     *sync.Cond // on mu: the cache advanced
	cacheRev uint64     // revision the cache reflects (shared store); guarded by mu
	// cacheListed: the shared store has been listed into the cache once.
	cacheListed bool
	health      storeHealth
	verifier    *attest.Verifier
	policy      *attest.Policy

	nodes      *nodeCache // guarded by mu
	challenges *challenges
	self       *selfEvidence
	limiter    *sourceLimiter
	refused    *refusalLog // recent refused joins, for `nodes --all`

	// conns is the agent listener's connection limiter, once Serve runs.
	conns atomic.Pointer[connpool.Listener]
	connm *connMetrics

	shutdown     chan struct{} // closed when the agent listener stops
	shutdownOnce sync.Once
	hub          *hub
	metrics      *metrics
}

// New opens (or creates) the CA in the store and prepares the serving
// identity. It does not listen; see Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Policy == nil || cfg.Provider == nil || cfg.Store == nil {
		return nil, errors.New("controlplane: Policy, Provider and Store are required")
	}
	if cfg.ClusterCIDR == "" {
		cfg.ClusterCIDR = DefaultClusterCIDR
	}
	if cfg.NodePrefixLen == 0 {
		cfg.NodePrefixLen = DefaultNodePrefixLen
	}
	if cfg.MTUHint == 0 {
		cfg.MTUHint = DefaultMTUHint
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = DefaultSVIDTTL
	}
	if cfg.WorkloadTTL == 0 {
		cfg.WorkloadTTL = DefaultWorkloadTTL
	}
	if cfg.ChallengeTTL == 0 {
		cfg.ChallengeTTL = DefaultChallengeTTL
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.StoreSyncGrace == 0 {
		cfg.StoreSyncGrace = DefaultStoreSyncGrace
	}
	if cfg.StaleWatchLimit == 0 {
		cfg.StaleWatchLimit = DefaultStaleWatchLimit
	}
	if cfg.StoreWait == 0 {
		cfg.StoreWait = DefaultStoreWait
	}
	if cfg.StoreSyncGrace < 0 || cfg.StaleWatchLimit < 0 || cfg.StoreWait < 0 {
		return nil, fmt.Errorf("controlplane: store sync grace %s, stale watch limit %s, store wait %s: want positive durations", cfg.StoreSyncGrace, cfg.StaleWatchLimit, cfg.StoreWait)
	}
	if cfg.StoreProgressDeadline == 0 {
		cfg.StoreProgressDeadline = DefaultStoreProgressDeadline
	}
	if cfg.StoreProgressDeadline <= store.ProgressInterval {
		return nil, fmt.Errorf("controlplane: store progress deadline %s: want more than the store's progress interval %s",
			cfg.StoreProgressDeadline, store.ProgressInterval)
	}
	if cfg.EvidenceEpoch == 0 {
		cfg.EvidenceEpoch = DefaultEvidenceEpoch
	}
	if cfg.EvidenceEpoch < 0 || cfg.EvidenceEpoch > MaxEvidenceEpoch {
		return nil, fmt.Errorf("controlplane: evidence epoch %s: want more than 0 and at most %s (agents accept control-plane evidence up to %s old)", cfg.EvidenceEpoch, MaxEvidenceEpoch, attest.MaxControlPlaneEvidenceAge)
	}
	if cfg.SourceRate == 0 {
		cfg.SourceRate = DefaultSourceRate
	}
	if cfg.SourceBurst == 0 {
		cfg.SourceBurst = DefaultSourceBurst
	}
	if cfg.MaxSources == 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	if cfg.SourceRate < 0 || cfg.SourceBurst < 1 || cfg.MaxSources < 1 {
		return nil, fmt.Errorf("controlplane: source rate %g, burst %d, max sources %d: want positive values", cfg.SourceRate, cfg.SourceBurst, cfg.MaxSources)
	}
	cfg.Limits = cfg.Limits.WithDefaults()
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	alloc, err := ipam.New(cfg.ClusterCIDR, cfg.NodePrefixLen)
	if err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(cfg.Policy.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", cfg.Policy.TrustDomain, err)
	}
	vopts := cfg.VerifierOptions
	vopts.Logger = log
	if vopts.Now == nil {
		vopts.Now = now
	}
	cfg.VerifierOptions = vopts
	v, err := attest.NewVerifier(cfg.Policy, vopts)
	if err != nil {
		return nil, err
	}
	chs, err := newChallenges(cfg.ChallengeTTL, maxConsumedChallenges)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: log, now: now, store: cfg.Store, alloc: alloc, td: td,
		id:         identity.ControlPlaneID(td),
		verifier:   v,
		policy:     cfg.Policy,
		challenges: chs,
		limiter:    newSourceLimiter(cfg.SourceRate, cfg.SourceBurst, cfg.MaxSources, now),
		refused:    newRefusalLog(maxRefusalNames),
		shutdown:   make(chan struct{}),
		metrics:    newMetrics(),
	}
	s.cond = sync.NewCond(&s.mu)
	s.registerConnMetrics()
	s.metrics.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "confmesh_controlplane_store_unsynced_seconds", Help: "How long this replica's store watch (or store probe) has been broken, silent or unlisted (0 while synced).",
	}, func() float64 { _, d, _ := s.storeState(); return d.Seconds() }))
	s.shared, _ = cfg.Store.(store.Shared)
	if s.shared == nil {
		s.prober, _ = cfg.Store.(store.Prober)
	}
	s.tracked = s.shared != nil || s.prober != nil
	s.health.since = time.Now()
	if s.prober != nil {
		// Opened and read below: in step until a probe says otherwise.
		s.health.synced, s.health.everSynced, s.health.progress = true, true, time.Now()
	}
	s.self = &selfEvidence{epoch: cfg.EvidenceEpoch, now: now, produce: s.attestSelf, counted: s.countReport}
	if s.ca, err = s.loadOrCreateCA(); err != nil {
		return nil, err
	}
	if s.jwt, err = s.loadOrCreateJWTKey(); err != nil {
		return nil, err
	}
	if err := s.issueServingCert(); err != nil {
		return nil, err
	}
	if s.shared != nil {
		// The cache and the watch log are built from the store's watch
		// (Run); until its first list the replica admits nothing.
		s.hub = newHub(0)
		s.nodes, _ = newNodeCache(nil)
		s.metrics.storeSynced.Set(0)
		return s, nil
	}
	rev, err := s.store.Revision()
	if err != nil {
		return nil, err
	}
	s.hub = newHub(rev)
	recs, err := s.store.ListNodes()
	if err != nil {
		return nil, err
	}
	if s.nodes, err = newNodeCache(recs); err != nil {
		return nil, err
	}
	s.metrics.revision.Set(float64(rev))
	if err := s.refreshNodeGauge(); err != nil {
		return nil, err
	}
	return s, nil
}

const (
	secretCACert = "ca.crt"
	secretCAKey  = "ca.key"
)

func (s *Server) loadOrCreateCA() (*identity.CA, error) {
	certDER, err := s.store.GetSecret(secretCACert)
	if err == nil {
		keyDER, err := s.store.GetSecret(secretCAKey)
		if err != nil {
			return nil, fmt.Errorf("CA certificate stored without its key: %w", err)
		}
		ca, err := identity.LoadCA(certDER, keyDER)
		if err != nil {
			return nil, fmt.Errorf("load CA: %w", err)
		}
		if ca.TrustDomain() != s.td {
			return nil, fmt.Errorf("stored CA is for trust domain %q, policy says %q", ca.TrustDomain(), s.td)
		}
		return ca, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	ca, err := identity.NewCA(s.td, s.now())
	if err != nil {
		return nil, err
	}
	certDER, keyDER, err := ca.Marshal()
	if err != nil {
		return nil, err
	}
	// Created at once or not at all: replicas starting together agree on
	// one CA (the loser loads the winner's).
	got, err := s.store.CreateSecrets(map[string][]byte{secretCAKey: keyDER, secretCACert: certDER})
	if err != nil {
		return nil, fmt.Errorf("store the new CA: %w", err)
	}
	if !bytes.Equal(got[secretCAKey], keyDER) { // another replica made one first
		return s.loadOrCreateCA()
	}
	s.log.Info("created SPIFFE CA", "trustDomain", s.td.String())
	return ca, nil
}

// issueServingCert makes a fresh TLS key at every start; the agents pin it
// through the control plane's evidence, not through a long-lived secret.
func (s *Server) issueServingCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	cert, err := s.ca.IssueSVID(identity.IssueRequest{
		PublicKey: key.Public(), ID: s.id, TTL: 365 * 24 * time.Hour, Now: s.now(),
		DNSNames: s.cfg.DNSNames, IPAddresses: s.cfg.IPAddresses,
	})
	if err != nil {
		return fmt.Errorf("issue serving certificate: %w", err)
	}
	h, err := identity.SPKIHash(key.Public())
	if err != nil {
		return err
	}
	s.tlsKey, s.tlsCert, s.tlsHash = key, cert, h
	return nil
}

// CA returns the SPIFFE CA.
func (s *Server) CA() *identity.CA { return s.ca }

// ID returns the control plane's SPIFFE ID.
func (s *Server) ID() spiffeid.ID { return s.id }

// TrustDomain returns the trust domain.
func (s *Server) TrustDomain() spiffeid.TrustDomain { return s.td }

// currentVerifier returns the verifier for the policy in force.
func (s *Server) currentVerifier() *attest.Verifier {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verifier
}

// Node states only `confmesh nodes --all` shows: revoked nodes (from the
// store's revocations) and recently refused joins (refusalLog).
const (
	stateRevoked = "revoked"
	stateRefused = "refused"
)

// refreshCacheGauge sets the node gauge's states the cache holds.
func (s *Server) refreshCacheGauge() {
	for st, c := range s.nodes.counts() {
		s.metrics.nodes.WithLabelValues(st).Set(float64(c))
	}
}

func (s *Server) refreshNodeGauge() error {
	s.refreshCacheGauge()
	revs, err := s.store.ListRevocations()
	if err != nil {
		return err
	}
	s.metrics.nodes.WithLabelValues(stateRevoked).Set(float64(len(revs)))
	s.metrics.nodes.WithLabelValues(stateRefused).Set(float64(s.refused.len()))
	return nil
}
