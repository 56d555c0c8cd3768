//go:build linux

package e2e

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
	binTook time.Duration
)

// Binary returns the path of a confmesh binary built from this module,
// building it on first use (go build -o into a temporary directory).
func Binary(t testing.TB) string {
	t.Helper()
	binOnce.Do(func() {
		start := time.Now()
		root, err := ModuleRoot()
		if err != nil {
			binErr = err
			return
		}
		prefix, err := RunPrefix()
		if err != nil {
			binErr = err
			return
		}
		// Named with the run prefix: the sweep removes it if the run dies.
		if binDir, binErr = os.MkdirTemp("", prefix+"bin-"); binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "confmesh")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/confmesh")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/confmesh: %v\n%s", err, out)
			return
		}
		binTook = time.Since(start)
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// removeBinary deletes the build directory (TestMain, at exit).
func removeBinary() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// ModuleRoot walks up from the working directory to the directory holding go.mod.
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
