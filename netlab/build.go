//go:build linux

package netlab

import "github.com/confmesh/confmesh/internal/gobuild"

// ModuleRoot walks up from the working directory to the directory holding go.mod.
func ModuleRoot() (string, error) { return gobuild.ModuleRoot() }

// BuildConfmesh builds ./cmd/confmesh of the module at root into
// dir/confmesh (`go build -o`) and returns the binary's path.
func BuildConfmesh(root, dir string) (string, error) {
	return gobuild.Build(root, dir, "./cmd/confmesh")
}

// BuildCNI builds ./cmd/confmesh-cni of the module at root, static
// (CGO_ENABLED=0, as docs/cni.md says it ships), into dir/confmesh-cni and
// returns the binary's path.
func BuildCNI(root, dir string) (string, error) {
	return gobuild.Build(root, dir, "./cmd/confmesh-cni", "CGO_ENABLED=0")
}

// BuildBinaries builds confmesh and, next to it, confmesh-cni (where the
// demo and the benches look for the plugin) from the module this package
// belongs to into dir, and returns both paths.
func BuildBinaries(dir string) (confmesh, cni string, err error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", "", err
	}
	if confmesh, err = BuildConfmesh(root, dir); err != nil {
		return "", "", err
	}
	if cni, err = BuildCNI(root, dir); err != nil {
		return "", "", err
	}
	return confmesh, cni, nil
}
