// Package ociimage builds a single-layer OCI image from files on disk and
// writes it as an OCI image-layout tarball (what `ctr images import`,
// `podman load` and `skopeo copy oci-archive:` read), offline and
// reproducibly: the same files give the same bytes and the same digest,
// whatever their timestamps or owners on disk. It uses go-containerregistry
// for the image model and the layout; no Docker daemon is involved.
package ociimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one file of the image.
type File struct {
	// Source is the file on disk.
	Source string
	// Dest is its absolute path in the image.
	Dest string
	// Mode is its permission bits in the image (0755 when zero).
	Mode int64
}

// Spec describes an image.
type Spec struct {
	Files      []File
	Entrypoint []string
	Env        []string
	// Architecture and OS of the binaries (amd64, linux when empty).
	Architecture, OS string
}

// epoch is the timestamp of everything in the image: reproducible builds
// carry no build time.
var epoch = time.Unix(0, 0).UTC()

// Build assembles the image.
func Build(s Spec) (v1.Image, error) {
	if len(s.Files) == 0 {
		return nil, fmt.Errorf("image: no files")
	}
	layerTar, err := layerTar(s.Files)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image layer: %w", err)
	}
	arch, osName := s.Architecture, s.OS
	if arch == "" {
		arch = "amd64"
	}
	if osName == "" {
		osName = "linux"
	}
	env := s.Env
	if env == nil {
		env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	}
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	base = mutate.ConfigMediaType(base, types.OCIConfigJSON)
	base, err = mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: arch, OS: osName, Created: v1.Time{Time: epoch},
		Config: v1.Config{Entrypoint: s.Entrypoint, Env: env},
		RootFS: v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, err
	}
	return mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		History:   v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "confmesh make image"},
		MediaType: types.OCILayer,
	})
}

// layerTar is the layer: the parent directories, then the files, sorted,
// owned by root, dated at the epoch.
func layerTar(files []File) ([]byte, error) {
	dirs := map[string]bool{}
	byDest := map[string]File{}
	for _, f := range files {
		if !path.IsAbs(f.Dest) || path.Clean(f.Dest) != f.Dest || f.Dest == "/" {
			return nil, fmt.Errorf("image file %q: the destination must be a clean absolute path", f.Dest)
		}
		if _, dup := byDest[f.Dest]; dup {
			return nil, fmt.Errorf("image file %q is listed twice", f.Dest)
		}
		byDest[f.Dest] = f
		for d := path.Dir(f.Dest); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	var names []string
	for d := range dirs {
		names = append(names, d+"/")
	}
	for d := range byDest {
		names = append(names, d)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		hdr := &tar.Header{Name: strings.TrimPrefix(n, "/"), ModTime: epoch, Format: tar.FormatPAX}
		if strings.HasSuffix(n, "/") {
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
			if err := tw.WriteHeader(hdr); err != nil {
				return nil, err
			}
			continue
		}
		f := byDest[n]
		data, err := os.ReadFile(f.Source)
		if err != nil {
			return nil, fmt.Errorf("image file %s: %w", f.Dest, err)
		}
		hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, f.Mode, int64(len(data))
		if hdr.Mode == 0 {
			hdr.Mode = 0o755
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteArchive writes img as an OCI image-layout tarball named ref (e.g.
// docker.io/library/confmesh:dev; containerd's import reads the name from
// the index's io.containerd.image.name annotation, other tools from
// org.opencontainers.image.ref.name).
func WriteArchive(out string, img v1.Image, ref string) error {
	dir, err := os.MkdirTemp("", "ociimage-*")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref,
		"io.containerd.image.name":          ref,
	})); err != nil {
		return fmt.Errorf("image layout: %w", err)
	}
	return tarDir(dir, out)
}

// tarDir writes dir's regular files and directories into a tarball at out,
// sorted and dated at the epoch.
func tarDir(dir, out string) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tmp, err := os.CreateTemp(filepath.Dir(out), ".ociimage-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	for _, p := range names {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch, Mode: 0o644, Format: tar.FormatPAX}
		if fi.IsDir() {
			hdr.Name += "/"
			hdr.Typeflag, hdr.Mode = tar.TypeDir, 0o755
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			continue
		}
		hdr.Typeflag, hdr.Size = tar.TypeReg, fi.Size()
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		_, err = io.Copy(tw, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), out)
}
