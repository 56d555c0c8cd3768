// Package config holds the settings of `confmesh controlplane`: their
// defaults, the strict YAML config file, validation, and the policy
// reloader that keeps the policy file and the running control plane in step.
//
// It does no I/O beyond reading files and knows nothing about flags: the CLI
// layers flags over a loaded file, then calls Validate.
package config

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/ipam"
	"github.com/google/go-sev-guest/abi"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"
)

// Defaults of the settings that are not controlplane.Config defaults.
const (
	DefaultStateDir      = "/var/lib/confmesh/controlplane"
	DefaultListen        = "0.0.0.0:7443"
	DefaultAdminSocket   = "/run/confmesh/controlplane-admin.sock"
	DefaultMetricsListen = "127.0.0.1:9464"
	DefaultSimName       = "controlplane"
	DefaultLogFormat     = "json"
	DefaultLogLevel      = "info"
	// DefaultStore keeps the state in bbolt under the state directory.
	DefaultStore = StoreBolt
	// DefaultStoreNamespace holds the Kubernetes store's Secret and Lease.
	DefaultStoreNamespace = "confmesh-system"

	// StoreBolt and StoreKubernetes are the values of --store.
	StoreBolt       = "bolt"
	StoreKubernetes = "kubernetes"

	// StateFile is the bbolt file inside the state directory.
	StateFile = "state.db"
	// AdminDirName is the admin credential directory inside the state directory.
	AdminDirName = "admin"

	// MinTTL is the shortest SVID lifetime accepted: below it the one minute
	// of clock-skew allowance on every certificate dominates.
	MinTTL = 2 * time.Minute
	// MinSweepInterval is the shortest sweep interval accepted.
	MinSweepInterval = time.Second
	// MaxSourceRate and MaxSourceBurst bound the per-source limit: beyond
	// them it would limit nothing.
	MaxSourceRate  = 10000
	MaxSourceBurst = 100000
	// MinLimitDuration and MaxLimitDuration bound the connection
	// timeouts and keepalive intervals; MaxLimitConns the connection caps
	// (each connection needs a file descriptor).
	MinLimitDuration = time.Second
	MaxLimitDuration = time.Hour
	MaxLimitConns    = 1 << 20
)

// Config is every setting of `confmesh controlplane`. The JSON names are the
// keys of the YAML config file; each has a flag of the same meaning
// (stateDir <-> --state-dir and so on).
type Config struct {
	// Policy is the attestation policy file (required).
	Policy string `json:"policy"`
	// StateDir holds state.db (bbolt) and the admin credential directory.
	StateDir string `json:"stateDir"`
	// Store is where the state lives: bolt (state.db in StateDir, one
	// control plane) or kubernetes (the Kubernetes API, any number of
	// replicas).
	Store string `json:"store"`
	// Kubeconfig reaches the API server for the kubernetes store; empty:
	// the in-cluster service account.
	Kubeconfig string `json:"kubeconfig"`
	// StoreNamespace holds the kubernetes store's Secret and leader Lease.
	StoreNamespace string `json:"storeNamespace"`
	// Listen is the agents' TCP address, host:port.
	Listen string `json:"listen"`
	// AdminSocket is the unix socket of the Admin service.
	AdminSocket string `json:"adminSocket"`
	// MetricsListen serves /metrics, /healthz and /readyz over plain HTTP;
	// empty disables it.
	MetricsListen string `json:"metricsListen"`
	// ClusterCIDR is the pod network; each node gets a NodePrefixLen slice.
	ClusterCIDR   string `json:"clusterCIDR"`
	NodePrefixLen int    `json:"nodePrefixLen"`
	// MTUHint is sent to agents.
	MTUHint uint32 `json:"mtuHint"`
	// SVIDTTL is the node SVID lifetime (agents renew at half of it).
	SVIDTTL Duration `json:"svidTTL"`
	// WorkloadTTL is the workload SVID lifetime.
	WorkloadTTL Duration `json:"workloadTTL"`
	// SweepInterval is how often every node is re-evaluated.
	SweepInterval Duration `json:"sweepInterval"`
	// SourceRate and SourceBurst limit Challenge and Join calls per source
	// (a token bucket per node identity or client address).
	SourceRate  float64 `json:"sourceRate"`
	SourceBurst int     `json:"sourceBurst"`
	// Connection limits of the agent listener (controlplane.Limits;
	// docs/security.md): handshake and unauthenticated idle timeouts,
	// per-source, total and unauthenticated caps, streams per connection,
	// keepalive.
	HandshakeTimeout           Duration `json:"handshakeTimeout"`
	UnauthenticatedIdleTimeout Duration `json:"unauthenticatedIdleTimeout"`
	MaxConnsPerSource          int      `json:"maxConnsPerSource"`
	MaxConns                   int      `json:"maxConns"`
	MaxUnauthenticatedConns    int      `json:"maxUnauthenticatedConns"`
	MaxConcurrentStreams       int      `json:"maxConcurrentStreams"`
	KeepaliveTime              Duration `json:"keepaliveTime"`
	KeepaliveTimeout           Duration `json:"keepaliveTimeout"`
	KeepaliveMinTime           Duration `json:"keepaliveMinTime"`
	// MetricsMaxConns and MetricsMaxConnsPerSource cap the metrics
	// listener's connections.
	MetricsMaxConns          int `json:"metricsMaxConns"`
	MetricsMaxConnsPerSource int `json:"metricsMaxConnsPerSource"`
	// DNSNames and IPs go into the serving certificate.
	DNSNames []string `json:"dnsNames"`
	IPs      []string `json:"ips"`
	// SimDir selects the simulated TEE: the simulated CA directory. Empty:
	// real SEV-SNP hardware.
	SimDir string `json:"simDir"`
	// SimName is the simulated node the control plane runs as (its chip ID
	// and VCEK key are kept under SimDir/nodes/SimName).
	SimName string `json:"simName"`
	// SimMeasurement is the simulated launch measurement, 96 hex digits
	// (all zero when empty).
	SimMeasurement string `json:"simMeasurement"`
	// SimDebug launches the simulated guest with the debug policy bit.
	SimDebug bool `json:"simDebug"`
	// KDSCache, when set, lets the verifier fetch missing VCEKs from AMD's
	// key distribution service, cached in this directory.
	KDSCache string `json:"kdsCache"`
	// LogFormat is json or text; LogLevel debug, info, warn or error.
	LogFormat string `json:"logFormat"`
	LogLevel  string `json:"logLevel"`
}

// Default returns the settings used when neither file nor flag sets them.
func Default() Config {
	return Config{
		StateDir:       DefaultStateDir,
		Store:          DefaultStore,
		StoreNamespace: DefaultStoreNamespace,
		Listen:         DefaultListen,
		AdminSocket:    DefaultAdminSocket,
		MetricsListen:  DefaultMetricsListen,
		ClusterCIDR:    controlplane.DefaultClusterCIDR,
		NodePrefixLen:  controlplane.DefaultNodePrefixLen,
		MTUHint:        controlplane.DefaultMTUHint,
		SVIDTTL:        Duration(controlplane.DefaultSVIDTTL),
		WorkloadTTL:    Duration(controlplane.DefaultWorkloadTTL),
		SweepInterval:  Duration(controlplane.DefaultSweepInterval),
		SourceRate:     controlplane.DefaultSourceRate,
		SourceBurst:    controlplane.DefaultSourceBurst,

		HandshakeTimeout:           Duration(controlplane.DefaultHandshakeTimeout),
		UnauthenticatedIdleTimeout: Duration(controlplane.DefaultIdleTimeout),
		MaxConnsPerSource:          controlplane.DefaultMaxConnsPerSource,
		MaxConns:                   controlplane.DefaultMaxConns,
		MaxUnauthenticatedConns:    controlplane.DefaultMaxUnauthenticatedConns,
		MaxConcurrentStreams:       controlplane.DefaultMaxConcurrentStreams,
		KeepaliveTime:              Duration(controlplane.DefaultKeepaliveTime),
		KeepaliveTimeout:           Duration(controlplane.DefaultKeepaliveTimeout),
		KeepaliveMinTime:           Duration(controlplane.DefaultKeepaliveMinTime),
		MetricsMaxConns:            controlplane.DefaultMetricsMaxConns,
		MetricsMaxConnsPerSource:   controlplane.DefaultMetricsMaxConnsPerSource,
		SimName:                    DefaultSimName,
		LogFormat:                  DefaultLogFormat,
		LogLevel:                   DefaultLogLevel,
	}
}

// Load reads a YAML config file over the defaults. Decoding is strict: an
// unknown or duplicated key is an error naming it. Relative paths in the
// file (policy, stateDir, adminSocket, simDir, kdsCache) are relative to the
// file's directory, not to the working directory. Load does not validate;
// call Validate once flags are applied.
func Load(path string) (Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	base := filepath.Dir(path)
	for _, p := range []*string{&c.Policy, &c.StateDir, &c.AdminSocket, &c.SimDir, &c.KDSCache, &c.Kubeconfig} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return c, nil
}

// Validate checks every setting and reports all problems at once, each
// naming the flag and the config key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(flag, key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s (%s): %s", flag, key, fmt.Sprintf(format, args...)))
	}
	if c.Policy == "" {
		bad("policy", "policy", "required: the attestation policy file")
	}
	if c.StateDir == "" {
		bad("state-dir", "stateDir", "must not be empty")
	}
	switch c.Store {
	case StoreBolt:
		if c.Kubeconfig != "" {
			bad("kubeconfig", "kubeconfig", "configures the kubernetes store and needs --store=kubernetes")
		}
	case StoreKubernetes:
		if errs := validation.IsDNS1123Label(c.StoreNamespace); len(errs) > 0 {
			bad("store-namespace", "storeNamespace", "%q is not a namespace name: %s", c.StoreNamespace, strings.Join(errs, "; "))
		}
	default:
		bad("store", "store", "%q: want %s (a bbolt file in the state directory) or %s (the Kubernetes API)", c.Store, StoreBolt, StoreKubernetes)
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen", "listen", "%q: want host:port: %v", c.Listen, err)
	}
	if c.AdminSocket == "" {
		bad("admin-socket", "adminSocket", "must not be empty")
	}
	if c.MetricsListen != "" {
		if _, _, err := net.SplitHostPort(c.MetricsListen); err != nil {
			bad("metrics-listen", "metricsListen", "%q: want host:port (or empty to disable): %v", c.MetricsListen, err)
		}
	}
	if _, err := ipam.New(c.ClusterCIDR, c.NodePrefixLen); err != nil {
		bad("cluster-cidr/--node-prefix-len", "clusterCIDR/nodePrefixLen", "%v", err)
	}
	if c.MTUHint < 576 || c.MTUHint > 65535 {
		bad("mtu-hint", "mtuHint", "%d is not between 576 and 65535", c.MTUHint)
	}
	if time.Duration(c.SVIDTTL) < MinTTL {
		bad("svid-ttl", "svidTTL", "%s is shorter than %s", time.Duration(c.SVIDTTL), MinTTL)
	}
	if time.Duration(c.WorkloadTTL) < MinTTL {
		bad("workload-ttl", "workloadTTL", "%s is shorter than %s", time.Duration(c.WorkloadTTL), MinTTL)
	}
	if time.Duration(c.SweepInterval) < MinSweepInterval {
		bad("sweep-interval", "sweepInterval", "%s is shorter than %s", time.Duration(c.SweepInterval), MinSweepInterval)
	}
	if !(c.SourceRate > 0 && c.SourceRate <= MaxSourceRate) {
		bad("source-rate", "sourceRate", "%g is not between 0 (exclusive) and %d calls per second", c.SourceRate, MaxSourceRate)
	}
	if c.SourceBurst < 1 || c.SourceBurst > MaxSourceBurst {
		bad("source-burst", "sourceBurst", "%d is not between 1 and %d", c.SourceBurst, MaxSourceBurst)
	}
	c.validateLimits(bad)
	for _, n := range c.DNSNames {
		if n == "" || strings.ContainsAny(n, " /:@") {
			bad("dns-name", "dnsNames", "%q is not a DNS name", n)
		}
	}
	for _, s := range c.IPs {
		if net.ParseIP(s) == nil {
			bad("ip", "ips", "%q is not an IP address", s)
		}
	}
	if c.SimDir == "" {
		if c.SimMeasurement != "" {
			bad("sim-measurement", "simMeasurement", "configures the simulated TEE and needs --sim-dir (simDir)")
		}
		if c.SimDebug {
			bad("sim-debug", "simDebug", "configures the simulated TEE and needs --sim-dir (simDir)")
		}
		if c.SimName != DefaultSimName && c.SimName != "" {
			bad("sim-name", "simName", "configures the simulated TEE and needs --sim-dir (simDir)")
		}
	} else {
		if c.SimName == "" || filepath.Base(c.SimName) != c.SimName || c.SimName == "." || c.SimName == ".." {
			bad("sim-name", "simName", "%q must be a plain file name", c.SimName)
		}
		if _, err := c.SimMeasurementBytes(); err != nil {
			bad("sim-measurement", "simMeasurement", "%v", err)
		}
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		bad("log-format", "logFormat", "%q: want json or text", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		bad("log-level", "logLevel", "%q: want debug, info, warn or error", c.LogLevel)
	}
	return errors.Join(errs...)
}

// validateLimits checks the connection limits: durations within
// [MinLimitDuration, MaxLimitDuration], counts within [1, MaxLimitConns],
// no cap above the total.
func (c *Config) validateLimits(bad func(flag, key, format string, args ...any)) {
	for _, d := range []struct {
		flag, key string
		v         Duration
	}{
		{"handshake-timeout", "handshakeTimeout", c.HandshakeTimeout},
		{"unauthenticated-idle-timeout", "unauthenticatedIdleTimeout", c.UnauthenticatedIdleTimeout},
		{"keepalive-time", "keepaliveTime", c.KeepaliveTime},
		{"keepalive-timeout", "keepaliveTimeout", c.KeepaliveTimeout},
		{"keepalive-min-time", "keepaliveMinTime", c.KeepaliveMinTime},
	} {
		if v := time.Duration(d.v); v < MinLimitDuration || v > MaxLimitDuration {
			bad(d.flag, d.key, "%s is not between %s and %s", v, MinLimitDuration, MaxLimitDuration)
		}
	}
	for _, n := range []struct {
		flag, key string
		v         int
	}{
		{"max-conns-per-source", "maxConnsPerSource", c.MaxConnsPerSource},
		{"max-conns", "maxConns", c.MaxConns},
		{"max-unauthenticated-conns", "maxUnauthenticatedConns", c.MaxUnauthenticatedConns},
		{"max-concurrent-streams", "maxConcurrentStreams", c.MaxConcurrentStreams},
		{"metrics-max-conns", "metricsMaxConns", c.MetricsMaxConns},
		{"metrics-max-conns-per-source", "metricsMaxConnsPerSource", c.MetricsMaxConnsPerSource},
	} {
		if n.v < 1 || n.v > MaxLimitConns {
			bad(n.flag, n.key, "%d is not between 1 and %d", n.v, MaxLimitConns)
		}
	}
	if c.MaxConnsPerSource > c.MaxConns {
		bad("max-conns-per-source", "maxConnsPerSource", "%d is above --max-conns %d", c.MaxConnsPerSource, c.MaxConns)
	}
	if c.MaxUnauthenticatedConns > c.MaxConns {
		bad("max-unauthenticated-conns", "maxUnauthenticatedConns", "%d is above --max-conns %d", c.MaxUnauthenticatedConns, c.MaxConns)
	}
	if c.MetricsMaxConnsPerSource > c.MetricsMaxConns {
		bad("metrics-max-conns-per-source", "metricsMaxConnsPerSource", "%d is above --metrics-max-conns %d", c.MetricsMaxConnsPerSource, c.MetricsMaxConns)
	}
}

// Limits are the agent listener's connection limits.
func (c *Config) Limits() controlplane.Limits {
	return controlplane.Limits{
		HandshakeTimeout: time.Duration(c.HandshakeTimeout), IdleTimeout: time.Duration(c.UnauthenticatedIdleTimeout),
		MaxConnsPerSource: c.MaxConnsPerSource, MaxConns: c.MaxConns, MaxUnauthenticatedConns: c.MaxUnauthenticatedConns,
		MaxConcurrentStreams: c.MaxConcurrentStreams,
		KeepaliveTime:        time.Duration(c.KeepaliveTime), KeepaliveTimeout: time.Duration(c.KeepaliveTimeout),
		KeepaliveMinTime: time.Duration(c.KeepaliveMinTime),
	}
}

// StatePath is the bbolt file.
func (c *Config) StatePath() string { return filepath.Join(c.StateDir, StateFile) }

// AdminDir is where the admin credential is written.
func (c *Config) AdminDir() string { return filepath.Join(c.StateDir, AdminDirName) }

// IPAddresses parses IPs (Validate has checked them).
func (c *Config) IPAddresses() []net.IP {
	var out []net.IP
	for _, s := range c.IPs {
		if ip := net.ParseIP(s); ip != nil {
			out = append(out, ip)
		}
	}
	return out
}

// SimMeasurementBytes decodes SimMeasurement: nil when empty, else exactly
// 48 bytes of hex (either case, optional 0x prefix).
func (c *Config) SimMeasurementBytes() ([]byte, error) {
	if c.SimMeasurement == "" {
		return nil, nil
	}
	s := strings.TrimPrefix(strings.TrimSpace(c.SimMeasurement), "0x")
	b, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("not hex: %v", err)
	}
	if len(b) != abi.MeasurementSize {
		return nil, fmt.Errorf("%d bytes, want %d (%d hex digits)", len(b), abi.MeasurementSize, 2*abi.MeasurementSize)
	}
	return b, nil
}

// Duration is a time.Duration written as a Go duration string ("1h30m").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"1h\" or \"15s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// String renders the duration.
func (d Duration) String() string { return time.Duration(d).String() }
