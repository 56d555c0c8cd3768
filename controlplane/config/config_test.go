package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/confmesh/confmesh/controlplane"
)

func write(t *testing.T, dir, name, data string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadStrictAndRelativePaths(t *testing.T) {
	dir := t.TempDir()
	p := write(t, dir, "cp.yaml", `
policy: policy.yaml
stateDir: state
adminSocket: /run/x.sock
svidTTL: 2h
sweepInterval: 5s
dnsNames: [cp.example.com]
ips: ["10.0.0.1"]
simDir: sim
`)
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Policy != filepath.Join(dir, "policy.yaml") || c.StateDir != filepath.Join(dir, "state") || c.SimDir != filepath.Join(dir, "sim") {
		t.Fatalf("relative paths not resolved against the file: %+v", c)
	}
	if c.AdminSocket != "/run/x.sock" {
		t.Fatalf("absolute path changed: %s", c.AdminSocket)
	}
	if time.Duration(c.SVIDTTL) != 2*time.Hour || time.Duration(c.SweepInterval) != 5*time.Second {
		t.Fatalf("durations: %+v", c)
	}
	// Unset keys keep their defaults.
	if c.Listen != DefaultListen || c.MTUHint != 1440 || c.SimName != DefaultSimName || time.Duration(c.WorkloadTTL) != time.Hour {
		t.Fatalf("defaults lost: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if ips := c.IPAddresses(); len(ips) != 1 || ips[0].String() != "10.0.0.1" {
		t.Fatalf("IPs %v", ips)
	}

	for _, tc := range []struct{ body, want string }{
		{"policy: p\nbogus: 1\n", `unknown field "bogus"`},
		{"policy: p\npolicy: q\n", "already set"},
		{"svidTTL: 5\n", "duration string"},
		{"svidTTL: soon\n", "invalid duration"},
		{"nodePrefixLen: x\n", "nodePrefixLen"},
	} {
		_, err := Load(write(t, dir, "bad.yaml", tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.body, err, tc.want)
		}
	}
	k, err := Load(write(t, dir, "kube.yaml", "policy: p\nstore: kubernetes\nkubeconfig: kc\nstoreNamespace: cm\n"))
	if err != nil || k.Store != StoreKubernetes || k.Kubeconfig != filepath.Join(dir, "kc") || k.StoreNamespace != "cm" || k.Validate() != nil {
		t.Fatalf("kubernetes store keys: %+v, %v", k, err)
	}
	if c.Store != StoreBolt || c.StoreNamespace != DefaultStoreNamespace {
		t.Fatalf("store defaults: %q %q", c.Store, c.StoreNamespace)
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file loaded")
	}
}

func TestValidate(t *testing.T) {
	ok := Default()
	ok.Policy = "/p.yaml"
	if err := ok.Validate(); err != nil {
		t.Fatalf("defaults with a policy: %v", err)
	}
	cases := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no policy", func(c *Config) { c.Policy = "" }, "--policy (policy): required"},
		{"listen", func(c *Config) { c.Listen = "7443" }, "--listen"},
		{"metrics", func(c *Config) { c.MetricsListen = "nope" }, "--metrics-listen"},
		{"cidr", func(c *Config) { c.ClusterCIDR = "10.244.0.1/16" }, "host bits"},
		{"prefix", func(c *Config) { c.NodePrefixLen = 8 }, "node prefix length"},
		{"mtu", func(c *Config) { c.MTUHint = 100 }, "--mtu-hint"},
		{"svid ttl", func(c *Config) { c.SVIDTTL = Duration(time.Minute) }, "--svid-ttl"},
		{"workload ttl", func(c *Config) { c.WorkloadTTL = 0 }, "--workload-ttl"},
		{"sweep", func(c *Config) { c.SweepInterval = 0 }, "--sweep-interval"},
		{"source rate zero", func(c *Config) { c.SourceRate = 0 }, "--source-rate (sourceRate)"},
		{"source rate huge", func(c *Config) { c.SourceRate = 1e9 }, "--source-rate"},
		{"source burst", func(c *Config) { c.SourceBurst = 0 }, "--source-burst (sourceBurst)"},
		{"handshake timeout", func(c *Config) { c.HandshakeTimeout = 0 }, "--handshake-timeout (handshakeTimeout): 0s is not between 1s and 1h0m0s"},
		{"idle timeout", func(c *Config) { c.UnauthenticatedIdleTimeout = Duration(2 * time.Hour) }, "--unauthenticated-idle-timeout (unauthenticatedIdleTimeout)"},
		{"keepalive time", func(c *Config) { c.KeepaliveTime = Duration(time.Millisecond) }, "--keepalive-time (keepaliveTime)"},
		{"keepalive timeout", func(c *Config) { c.KeepaliveTimeout = -1 }, "--keepalive-timeout (keepaliveTimeout)"},
		{"keepalive min time", func(c *Config) { c.KeepaliveMinTime = 0 }, "--keepalive-min-time (keepaliveMinTime)"},
		{"per source", func(c *Config) { c.MaxConnsPerSource = 0 }, "--max-conns-per-source (maxConnsPerSource): 0 is not between 1"},
		{"per source above total", func(c *Config) { c.MaxConnsPerSource, c.MaxConns = 100, 50 }, "--max-conns-per-source (maxConnsPerSource): 100 is above --max-conns 50"},
		{"unauth above total", func(c *Config) { c.MaxUnauthenticatedConns, c.MaxConns = 4096, 2048 }, "--max-unauthenticated-conns (maxUnauthenticatedConns): 4096 is above --max-conns 2048"},
		{"max conns", func(c *Config) { c.MaxConns = 1 << 30 }, "--max-conns (maxConns)"},
		{"streams", func(c *Config) { c.MaxConcurrentStreams = -3 }, "--max-concurrent-streams (maxConcurrentStreams)"},
		{"metrics conns", func(c *Config) { c.MetricsMaxConns = 0 }, "--metrics-max-conns (metricsMaxConns)"},
		{"metrics per source", func(c *Config) { c.MetricsMaxConnsPerSource = 100 }, "--metrics-max-conns-per-source (metricsMaxConnsPerSource): 100 is above --metrics-max-conns 64"},
		{"ip", func(c *Config) { c.IPs = []string{"300.1.1.1"} }, "not an IP address"},
		{"dns", func(c *Config) { c.DNSNames = []string{"a b"} }, "not a DNS name"},
		{"store", func(c *Config) { c.Store = "etcd" }, "--store (store): \"etcd\": want bolt"},
		{"kubeconfig with bolt", func(c *Config) { c.Kubeconfig = "k" }, "--kubeconfig (kubeconfig): configures the kubernetes store"},
		{"store namespace", func(c *Config) { c.Store, c.StoreNamespace = StoreKubernetes, "" }, "--store-namespace (storeNamespace)"},
		{"sim measurement without dir", func(c *Config) { c.SimMeasurement = "00" }, "needs --sim-dir"},
		{"sim debug without dir", func(c *Config) { c.SimDebug = true }, "needs --sim-dir"},
		{"sim name without dir", func(c *Config) { c.SimName = "x" }, "needs --sim-dir"},
		{"sim name path", func(c *Config) { c.SimDir = "/s"; c.SimName = "../x" }, "plain file name"},
		{"sim measurement short", func(c *Config) { c.SimDir = "/s"; c.SimMeasurement = "abcd" }, "want 48"},
		{"sim measurement hex", func(c *Config) { c.SimDir = "/s"; c.SimMeasurement = "zz" }, "not hex"},
		{"log format", func(c *Config) { c.LogFormat = "xml" }, "--log-format"},
		{"log level", func(c *Config) { c.LogLevel = "loud" }, "--log-level"},
	}
	for _, tc := range cases {
		c := ok
		tc.mod(&c)
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
	// Every problem is reported, not just the first.
	c := ok
	c.Policy, c.MTUHint = "", 1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--policy") || !strings.Contains(err.Error(), "--mtu-hint") {
		t.Errorf("want both problems, got %v", err)
	}
	c = ok
	c.SimDir, c.SimMeasurement = "/s", "0x"+strings.Repeat("AB", 48)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if m, _ := c.SimMeasurementBytes(); len(m) != 48 || m[0] != 0xab {
		t.Fatalf("measurement %x", m)
	}
	if c.StatePath() != filepath.Join(DefaultStateDir, "state.db") || c.AdminDir() != filepath.Join(DefaultStateDir, "admin") {
		t.Fatal(c.StatePath(), c.AdminDir())
	}
}

// TestDocsExample loads the config file example in docs/controlplane.md.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "controlplane.md"))
	if err != nil {
		t.Fatal(err)
	}
	const start = "```yaml\n# confmesh controlplane config\n"
	_, rest, ok := strings.Cut(string(doc), start)
	if !ok {
		t.Fatal("docs/controlplane.md has no config example")
	}
	body, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("config example not closed")
	}
	c, err := Load(write(t, t.TempDir(), "cp.yaml", body))
	if err != nil {
		t.Fatalf("docs example: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("docs example: %v", err)
	}
	if c.Policy != "/etc/confmesh/policy.yaml" || c.KDSCache != "/var/cache/confmesh/kds" || len(c.DNSNames) != 1 {
		t.Fatalf("docs example read as %+v", c)
	}
}

// TestLimitsDefaults: the config's defaults are the control plane's, and
// every limit setting reaches controlplane.Limits.
func TestLimitsDefaults(t *testing.T) {
	c := Default()
	if got, want := c.Limits(), controlplane.DefaultLimits(); got != want {
		t.Fatalf("config defaults give limits %+v, the control plane's are %+v", got, want)
	}
	c.HandshakeTimeout, c.UnauthenticatedIdleTimeout = Duration(time.Second), Duration(2*time.Second)
	c.MaxConnsPerSource, c.MaxConns, c.MaxUnauthenticatedConns, c.MaxConcurrentStreams = 3, 4, 5, 6
	c.KeepaliveTime, c.KeepaliveTimeout, c.KeepaliveMinTime = Duration(7*time.Second), Duration(8*time.Second), Duration(9*time.Second)
	want := controlplane.Limits{HandshakeTimeout: time.Second, IdleTimeout: 2 * time.Second, MaxConnsPerSource: 3, MaxConns: 4,
		MaxUnauthenticatedConns: 5, MaxConcurrentStreams: 6, KeepaliveTime: 7 * time.Second, KeepaliveTimeout: 8 * time.Second, KeepaliveMinTime: 9 * time.Second}
	if got := c.Limits(); got != want {
		t.Fatalf("Limits() = %+v, want %+v", got, want)
	}
}
