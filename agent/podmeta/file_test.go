package podmeta_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/agent/podmeta"
)

func writeMeta(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "pods.yaml")
	err := podmeta.WriteFile(path, []podmeta.Entry{
		{Namespace: "shop", Name: "frontend", ServiceAccount: "frontend"},
		{Namespace: "shop", Name: "payments", UID: "uid-pay", ServiceAccount: "payments"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// privateDir is a fresh directory only this user can write (t.TempDir's
// parent is; its mode is 0700 or 0755 on Linux).
func privateDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestFileLookup(t *testing.T) {
	src := podmeta.File{Path: writeMeta(t, privateDir(t))}
	ctx := context.Background()
	md, err := src.Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "frontend", UID: "any"})
	if err != nil || md.ServiceAccount != "frontend" {
		t.Fatalf("frontend: %+v, %v; want sa frontend", md, err)
	}
	md, err = src.Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "payments", UID: "uid-pay"})
	if err != nil || md.ServiceAccount != "payments" {
		t.Fatalf("payments: %+v, %v; want sa payments", md, err)
	}
	for _, tc := range []struct {
		name string
		pod  podmeta.Pod
		want string
	}{
		{"unlisted pod", podmeta.Pod{Namespace: "shop", Name: "intruder", UID: "u"}, "does not list pod shop/intruder"},
		{"same name, other namespace", podmeta.Pod{Namespace: "dev", Name: "frontend", UID: "u"}, "does not list pod dev/frontend"},
		{"listed UID differs (a new pod under an old name)", podmeta.Pod{Namespace: "shop", Name: "payments", UID: "uid-other"}, "with UID uid-pay"},
	} {
		md, err := src.Lookup(ctx, tc.pod)
		if !errors.Is(err, podmeta.ErrUnknown) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %+v, %v; want ErrUnknown naming %q", tc.name, md, err, tc.want)
		}
	}
	missing := podmeta.File{Path: filepath.Join(privateDir(t), "none.yaml")}
	if _, err := missing.Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "frontend"}); !errors.Is(err, podmeta.ErrUnknown) {
		t.Errorf("missing file: %v, want ErrUnknown", err)
	}
	if _, err := (podmeta.None{}).Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "frontend"}); !errors.Is(err, podmeta.ErrUnknown) {
		t.Errorf("no source: %v, want ErrUnknown", err)
	}
}

// TestFileRefusesWhatOthersCanWrite: a metadata file that someone other
// than root could have written names no service account, whatever it says.
func TestFileRefusesWhatOthersCanWrite(t *testing.T) {
	ctx := context.Background()
	frontend := podmeta.Pod{Namespace: "shop", Name: "frontend"}

	dir := privateDir(t)
	path := writeMeta(t, dir)
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	if md, err := (podmeta.File{Path: path}).Lookup(ctx, frontend); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("world-writable file: %+v, %v; want a refusal naming the mode", md, err)
	}

	dir = privateDir(t)
	path = writeMeta(t, dir)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if md, err := (podmeta.File{Path: path}).Lookup(ctx, frontend); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("file in a world-writable directory: %+v, %v; want a refusal", md, err)
	}

	dir = privateDir(t)
	path = writeMeta(t, dir)
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if md, err := (podmeta.File{Path: link}).Lookup(ctx, frontend); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("symbolic link: %+v, %v; want a refusal", md, err)
	}

	if os.Geteuid() == 0 {
		dir = privateDir(t)
		path = writeMeta(t, dir)
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if md, err := (podmeta.File{Path: path}).Lookup(ctx, frontend); err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
			t.Errorf("file owned by nobody: %+v, %v; want a refusal naming the owner", md, err)
		}
	}

	if _, err := (podmeta.File{Path: "pods.yaml"}).Lookup(ctx, frontend); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative path: %v; want a refusal", err)
	}
}

func TestFileBadContent(t *testing.T) {
	ctx := context.Background()
	for name, content := range map[string]string{
		"no service account": "pods:\n  - namespace: shop\n    name: frontend\n",
		"listed twice":       "pods:\n  - {namespace: shop, name: a, serviceAccount: x}\n  - {namespace: shop, name: a, serviceAccount: y}\n",
		"unknown field":      "pods:\n  - {namespace: shop, name: a, serviceAccount: x, sa: other}\n",
		"not YAML":           "pods: [",
	} {
		path := filepath.Join(privateDir(t), "pods.yaml")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if md, err := (podmeta.File{Path: path}).Lookup(ctx, podmeta.Pod{Namespace: "shop", Name: "a"}); err == nil || errors.Is(err, podmeta.ErrUnknown) {
			t.Errorf("%s: %+v, %v; want an error naming the file's problem", name, md, err)
		} else if !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v does not name the file", name, err)
		}
	}
}
