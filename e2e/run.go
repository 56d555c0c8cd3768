//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// Runs is the e2e family of lab runs: every name starts with "cme2e-" and
// a 4-hex-digit run ID; a live run holds /run/cme2e/<run ID>.lock.
var Runs = netlab.Runs{NamePrefix: "cme2e-", LockDir: "/run/cme2e", ClusterIDWidth: 2}

// The run (one per test binary), taken on first use.
var (
	runOnce sync.Once
	run     *netlab.Run
	runErr  error
)

// Run returns this test binary's run; the first call takes its lock.
func Run() (*netlab.Run, error) {
	runOnce.Do(func() { run, runErr = Runs.Start() })
	return run, runErr
}

// The confmesh binary, built once per test binary.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	cniPath string
	binErr  error
	binTook time.Duration
)

// Binary returns the path of a confmesh binary built from this module,
// building it and the confmesh-cni plugin (CNIBinary) on first use (go build -o into a temporary directory named
// with the run prefix, so that the sweep removes it if the run dies).
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		start := time.Now()
		root, err := netlab.ModuleRoot()
		if err != nil {
			binErr = err
			return
		}
		r, err := Run()
		if err != nil {
			binErr = err
			return
		}
		if binDir, binErr = r.TempDir("bin"); binErr != nil {
			return
		}
		if binPath, binErr = netlab.BuildConfmesh(root, binDir); binErr != nil {
			return
		}
		if cniPath, binErr = netlab.BuildCNI(root, binDir); binErr != nil {
			return
		}
		binTook = time.Since(start)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// finishRun removes the binary and releases the run (TestMain, at exit).
func finishRun() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	run.Release()
}

// logDir is where CME2E_LOG_DIR asks the logs of the test t to go.
func logDir(t testing.TB) string {
	dir := os.Getenv(LogDirEnv)
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, sanitize(t.Name()))
}

// CNIBinary returns the path of the confmesh-cni plugin built next to the
// confmesh binary (static, CGO_ENABLED=0).
func CNIBinary(t testing.TB) string {
	t.Helper()
	Binary(t)
	return cniPath
}
