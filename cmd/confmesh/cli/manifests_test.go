package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"sigs.k8s.io/yaml"
)

// TestManifestsMatchTheCLI keeps manifests/ honest: every YAML document
// parses, the policy parses, and every flag a container passes exists on
// the confmesh command it runs.
func TestManifestsMatchTheCLI(t *testing.T) {
	dir := filepath.Join("..", "..", "..", "manifests", "base")
	// As shipped the policy holds the all-zero placeholder, refused under the
	// AMD roots; with the operator's measurements in its place it is valid.
	shipped, err := os.ReadFile(filepath.Join(dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParsePolicy(shipped); err == nil || !strings.Contains(err.Error(), "all-zero placeholder") {
		t.Fatalf("shipped manifests policy: err = %v, want the placeholder refused", err)
	}
	filled := strings.ReplaceAll(string(shipped), strings.Repeat("00", 48), strings.Repeat("5e", 48))
	if _, err := attest.ParsePolicy([]byte(filled)); err != nil {
		t.Fatalf("manifests policy with measurements filled in: %v", err)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) < 4 {
		t.Fatalf("manifests: %v %v", files, err)
	}
	root := NewRoot(&bytes.Buffer{}, &bytes.Buffer{})
	checked := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range strings.Split(string(data), "\n---\n") {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatalf("%s document %d: %v", f, i, err)
			}
			spec, _ := dig(obj, "spec", "template", "spec").(map[string]any)
			containers, _ := spec["containers"].([]any)
			for _, c := range containers {
				args := toStrings(c.(map[string]any)["args"])
				if len(args) == 0 {
					continue
				}
				cmd, _, err := root.Find(args[:1])
				if err != nil || cmd == root {
					t.Errorf("%s: container runs unknown command %q", f, args[0])
					continue
				}
				for _, a := range args[1:] {
					name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
					if cmd.Flags().Lookup(name) == nil {
						t.Errorf("%s: %s has no flag --%s", f, cmd.CommandPath(), name)
					}
					checked++
				}
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d flags checked; the manifests were not read", checked)
	}
}

func dig(m map[string]any, keys ...string) any {
	var v any = m
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}
