// Package testutil holds helpers shared by the tests of several packages:
// building the confmesh binary once per test binary, and (on Linux) network
// namespaces that are removed when the test ends. It is for tests only;
// only _test.go files should import it.
package testutil

import (
	"os"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/gobuild"
)

// The confmesh binary, built once per test binary.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

// BuildConfmesh returns the path of a confmesh binary built from this
// module's ./cmd/confmesh, building it on the first call in this test binary
// (go build -o into a temporary directory). Call RemoveConfmesh from TestMain
// after m.Run to delete it.
func BuildConfmesh(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		start := time.Now()
		root, err := ModuleRoot()
		if err != nil {
			binErr = err
			return
		}
		if binDir, binErr = os.MkdirTemp("", "confmesh-testbin-"); binErr != nil {
			return
		}
		if binPath, binErr = gobuild.Build(root, binDir, "./cmd/confmesh"); binErr != nil {
			return
		}
		t.Logf("built %s in %s", binPath, time.Since(start).Round(time.Millisecond))
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// RemoveConfmesh deletes the binary BuildConfmesh built, if it built one.
func RemoveConfmesh() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// ModuleRoot walks up from the working directory to the directory holding
// go.mod.
func ModuleRoot() (string, error) { return gobuild.ModuleRoot() }
