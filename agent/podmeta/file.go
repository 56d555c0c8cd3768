package podmeta

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"sigs.k8s.io/yaml"
)

// File is the standalone source: a YAML file that only root may write,
//
//	pods:
//	  - namespace: shop
//	    name: frontend
//	    uid: 9f3c...        # optional; when given it must match the runtime's
//	    serviceAccount: frontend
//
// It is read on every lookup (pods are few and lookups rare: one per CNI
// ADD and per Workload API caller), so edits apply at once. The file and
// every directory above it must be owned by root (or by the agent's own
// user) and not writable by group or others (a directory with the sticky
// bit, such as /tmp, is allowed above a root-owned directory), and the file
// must not be a symbolic link: otherwise a non-root user could name a pod's
// service account, and Lookup refuses to answer. A missing file knows no
// pod.
type File struct {
	Path string
}

// fileFormat is the file's schema.
type fileFormat struct {
	Pods []Entry `json:"pods"`
}

func (f File) String() string { return "file " + f.Path }

// Lookup finds p in the file.
func (f File) Lookup(_ context.Context, p Pod) (Metadata, error) {
	entries, err := f.read()
	if errors.Is(err, fs.ErrNotExist) {
		return Metadata{}, fmt.Errorf("%w: %s does not exist", ErrUnknown, f.Path)
	}
	if err != nil {
		return Metadata{}, err
	}
	for _, e := range entries {
		if e.Namespace != p.Namespace || e.Name != p.Name {
			continue
		}
		if e.UID != "" && e.UID != p.UID {
			return Metadata{}, fmt.Errorf("%w: %s lists pod %s/%s with UID %s, the runtime's is %s", ErrUnknown, f.Path, p.Namespace, p.Name, e.UID, p.UID)
		}
		return Metadata{ServiceAccount: e.ServiceAccount}, nil
	}
	return Metadata{}, fmt.Errorf("%w: %s does not list pod %s/%s", ErrUnknown, f.Path, p.Namespace, p.Name)
}

// read checks who can write the file, then parses it.
func (f File) read() ([]Entry, error) {
	if !filepath.IsAbs(f.Path) {
		return nil, fmt.Errorf("pod metadata file %q: the path must be absolute", f.Path)
	}
	if err := CheckRootOnly(f.Path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(f.Path)
	if err != nil {
		return nil, err
	}
	var ff fileFormat
	if err := yaml.UnmarshalStrict(data, &ff); err != nil {
		return nil, fmt.Errorf("pod metadata file %s: %w", f.Path, err)
	}
	seen := map[string]bool{}
	for i, e := range ff.Pods {
		if e.Namespace == "" || e.Name == "" || e.ServiceAccount == "" {
			return nil, fmt.Errorf("pod metadata file %s: entry %d: namespace, name and serviceAccount are required", f.Path, i+1)
		}
		k := e.Namespace + "/" + e.Name
		if seen[k] {
			return nil, fmt.Errorf("pod metadata file %s: pod %s is listed twice", f.Path, k)
		}
		seen[k] = true
	}
	return ff.Pods, nil
}

// CheckRootOnly reports an error unless path (not a symbolic link) and
// every directory above it are owned by root or by this process's user and
// are not writable by group or others; a directory with the sticky bit may
// be writable by others as long as what lies below it in the path is ours.
// A path that does not exist returns an error wrapping fs.ErrNotExist.
func CheckRootOnly(path string) error {
	me := uint32(os.Geteuid())
	fi, err := os.Lstat(path)
	if err != nil {
		return err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		return fmt.Errorf("pod metadata file %s is a symbolic link: refusing it (name the file itself)", path)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("pod metadata file %s is not a regular file", path)
	}
	check := func(p string, fi fs.FileInfo, dir bool) error {
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("pod metadata: cannot read the owner of %s", p)
		}
		if st.Uid != 0 && st.Uid != me {
			return fmt.Errorf("pod metadata: %s is owned by uid %d, not root: anyone with that uid could name pods' service accounts; refusing it", p, st.Uid)
		}
		if fi.Mode().Perm()&0o022 != 0 && !(dir && fi.Mode()&fs.ModeSticky != 0) {
			return fmt.Errorf("pod metadata: %s is writable by group or others (mode %v): only root may name pods' service accounts; refusing it", p, fi.Mode().Perm())
		}
		return nil
	}
	if err := check(path, fi, false); err != nil {
		return err
	}
	for dir := filepath.Dir(filepath.Clean(path)); ; dir = filepath.Dir(dir) {
		di, err := os.Stat(dir)
		if err != nil {
			return err
		}
		if err := check(dir, di, true); err != nil {
			return err
		}
		if dir == "/" {
			return nil
		}
	}
}

// WriteFile writes entries to path (0600, atomically) in File's format, for
// tools and tests that prepare a standalone node. It does not check the
// directory's owner: Lookup does.
func WriteFile(path string, pods []Entry) error {
	data, err := yaml.Marshal(fileFormat{Pods: pods})
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".podmeta-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Entry is one pod of a File.
type Entry struct {
	Namespace      string `json:"namespace"`
	Name           string `json:"name"`
	UID            string `json:"uid,omitempty"`
	ServiceAccount string `json:"serviceAccount"`
}
