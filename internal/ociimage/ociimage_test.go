package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}

// readTar returns the archive's entries by name.
func readTar(t *testing.T, data []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[h.Name] = b
	}
}

// TestReproducible: the same files give the same archive, byte for byte,
// even when their timestamps and modes on disk differ.
func TestReproducible(t *testing.T) {
	build := func(touch time.Time) []byte {
		dir := t.TempDir()
		a := writeFile(t, dir, "confmesh", "agent binary")
		b := writeFile(t, dir, "confmesh-cni", "plugin binary")
		for _, p := range []string{a, b} {
			if err := os.Chtimes(p, touch, touch); err != nil {
				t.Fatal(err)
			}
		}
		img, err := Build(Spec{Entrypoint: []string{"/usr/local/bin/confmesh"}, Files: []File{
			{Source: a, Dest: "/usr/local/bin/confmesh"}, {Source: b, Dest: "/usr/local/bin/confmesh-cni"},
		}})
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "image.tar")
		if err := WriteArchive(out, img, "docker.io/library/confmesh:dev"); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	first := build(time.Now())
	second := build(time.Now().Add(-48 * time.Hour))
	if !bytes.Equal(first, second) {
		t.Fatal("two builds of the same files differ")
	}
	entries := readTar(t, first)
	var index struct {
		Manifests []struct {
			Digest      string            `json:"digest"`
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}
	if err := json.Unmarshal(entries["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %s, %v", entries["index.json"], err)
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "docker.io/library/confmesh:dev" {
		t.Errorf("image name annotation %q", got)
	}
	if _, ok := entries["oci-layout"]; !ok {
		t.Error("no oci-layout file: not an OCI image layout")
	}
	var manifest struct {
		Config struct{ Digest string }   `json:"config"`
		Layers []struct{ Digest string } `json:"layers"`
	}
	if err := json.Unmarshal(entries["blobs/sha256/"+strings.TrimPrefix(index.Manifests[0].Digest, "sha256:")], &manifest); err != nil || len(manifest.Layers) != 1 {
		t.Fatalf("manifest: %v %+v", err, manifest)
	}
	var cfg struct {
		Created string                        `json:"created"`
		Config  struct{ Entrypoint []string } `json:"config"`
	}
	if err := json.Unmarshal(entries["blobs/sha256/"+strings.TrimPrefix(manifest.Config.Digest, "sha256:")], &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Created != "1970-01-01T00:00:00Z" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/confmesh" {
		t.Errorf("config: %+v", cfg)
	}
}

func TestLayerLayout(t *testing.T) {
	dir := t.TempDir()
	a := writeFile(t, dir, "a", "A")
	data, err := layerTar([]File{{Source: a, Dest: "/usr/local/bin/confmesh"}})
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(bytes.NewReader(data))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v; want root and the epoch", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		names = append(names, h.Name)
		if h.Name == "usr/local/bin/confmesh" && h.Mode != 0o755 {
			t.Errorf("binary mode %o, want 755", h.Mode)
		}
	}
	if got := strings.Join(names, " "); got != "usr/ usr/local/ usr/local/bin/ usr/local/bin/confmesh" {
		t.Errorf("layer entries %q", got)
	}
	for _, bad := range [][]File{
		{{Source: a, Dest: "relative/path"}},
		{{Source: a, Dest: "/x/../y"}},
		{{Source: a, Dest: "/x"}, {Source: a, Dest: "/x"}},
		{{Source: filepath.Join(dir, "missing"), Dest: "/x"}},
	} {
		if _, err := layerTar(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}
