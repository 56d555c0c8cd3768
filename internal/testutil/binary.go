// Package testutil holds helpers shared by the tests of several packages:
// building the confmesh binary once per test binary, and (on Linux) network
// namespaces that are removed when the test ends. It is for tests only;
// only _test.go files should import it.
package testutil

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
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
		binPath = filepath.Join(binDir, "confmesh")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/confmesh")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/confmesh: %v\n%s", err, out)
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
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or any parent")
		}
		dir = parent
	}
}
