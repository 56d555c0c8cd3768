//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

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

// BuildConfmesh builds ./cmd/confmesh of the module at root into
// dir/confmesh (`go build -o`) and returns the binary's path.
func BuildConfmesh(root, dir string) (string, error) {
	bin := filepath.Join(dir, "confmesh")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/confmesh")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/confmesh: %v\n%s", err, out)
	}
	return bin, nil
}

// BuildCNI builds ./cmd/confmesh-cni of the module at root, static
// (CGO_ENABLED=0, as docs/cni.md says it ships), into dir/confmesh-cni and
// returns the binary's path.
func BuildCNI(root, dir string) (string, error) {
	bin := filepath.Join(dir, "confmesh-cni")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/confmesh-cni")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/confmesh-cni: %v\n%s", err, out)
	}
	return bin, nil
}
