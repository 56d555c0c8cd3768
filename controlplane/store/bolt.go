package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

// openTimeout bounds how long OpenBolt waits for the file lock held by another
// process (or another open handle) before failing.
var openTimeout = 2 * time.Second

var (
	bucketNodes       = []byte("nodes")
	bucketRevocations = []byte("revocations")
	bucketPods        = []byte("pods")
	bucketSecrets     = []byte("secrets")
	bucketMeta        = []byte("meta")

	keyRevision = []byte("revision")

	allBuckets = [][]byte{bucketNodes, bucketRevocations, bucketPods, bucketSecrets, bucketMeta}
)

// Bolt is a Store backed by a single bbolt file.
//
// Layout: buckets nodes (name -> JSON NodeRecord), revocations (8-byte
// big-endian revision of the revoke -> JSON Revocation, so iteration order is
// revocation order), pods (UID -> JSON PodRecord), secrets (name -> raw bytes)
// and meta ("revision" -> 8-byte big-endian counter).
type Bolt struct {
	db   *bolt.DB
	path string
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens (creating if missing) the store at path. A missing parent
// directory is created 0700 and a missing file 0600. If another process holds
// the file, OpenBolt fails after a short timeout with an error naming the file.
func OpenBolt(path string) (*Bolt, error) {
	if path == "" {
		return nil, errors.New("store: path is empty")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("store: create directory for %s: %w", path, err)
		}
	}
	opts := *bolt.DefaultOptions
	opts.Timeout = openTimeout
	db, err := bolt.Open(path, 0o600, &opts)
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("store: open %s: file is locked by another process or open handle (waited %s): %w", path, openTimeout, err)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return fmt.Errorf("create bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: init %s: %w", path, err)
	}
	return &Bolt{db: db, path: path}, nil
}

// Path returns the file the store was opened from.
func (s *Bolt) Path() string { return s.path }

var _ Prober = (*Bolt)(nil)

// keyProbe is the meta key Probe writes (nothing reads it).
var keyProbe = []byte("probe")

// Probe implements Prober: a write transaction (bbolt syncs the file at
// commit) that stores the time in the meta bucket. It does not return
// while the file's disk does not complete writes.
func (s *Bolt) Probe() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keyProbe, u64(uint64(time.Now().UnixNano())))
	})
	if err != nil {
		return fmt.Errorf("store: probe %s: %w", s.path, err)
	}
	return nil
}

// Close closes the underlying file.
func (s *Bolt) Close() error { return s.db.Close() }

// ---- helpers ----

// get returns the value stored under key and whether the key exists (a
// zero-length value exists; a nested bucket does not count).
func get(b *bolt.Bucket, key []byte) ([]byte, bool) {
	if len(key) == 0 {
		return nil, false
	}
	k, v := b.Cursor().Seek(key)
	if k == nil || !bytes.Equal(k, key) || v == nil && b.Bucket(key) != nil {
		return nil, false
	}
	return v, true
}

func readRevision(tx *bolt.Tx) (uint64, error) {
	v, ok := get(tx.Bucket(bucketMeta), keyRevision)
	if !ok {
		return 0, nil
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("store: corrupt revision (%d bytes)", len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

func bumpRevision(tx *bolt.Tx) (uint64, error) {
	rev, err := readRevision(tx)
	if err != nil {
		return 0, err
	}
	rev++
	if err := tx.Bucket(bucketMeta).Put(keyRevision, u64(rev)); err != nil {
		return 0, fmt.Errorf("store: write revision: %w", err)
	}
	return rev, nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func decode[T any](what string, key, v []byte) (*T, error) {
	out := new(T)
	if err := json.Unmarshal(v, out); err != nil {
		return nil, fmt.Errorf("store: decode %s %q: %w", what, key, err)
	}
	return out, nil
}

func put(b *bolt.Bucket, what string, key []byte, rec any) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("store: encode %s %q: %w", what, key, err)
	}
	if err := b.Put(key, v); err != nil {
		return fmt.Errorf("store: write %s %q: %w", what, key, err)
	}
	return nil
}

func getNode(tx *bolt.Tx, name string) (*NodeRecord, error) {
	v, ok := get(tx.Bucket(bucketNodes), []byte(name))
	if !ok {
		return nil, fmt.Errorf("store: node %q: %w", name, ErrNotFound)
	}
	return decode[NodeRecord]("node", []byte(name), v)
}

// deletePodsOf removes every pod registered by node.
func deletePodsOf(tx *bolt.Tx, node string) error {
	b := tx.Bucket(bucketPods)
	var uids [][]byte
	err := b.ForEach(func(k, v []byte) error {
		p, err := decode[PodRecord]("pod", k, v)
		if err != nil {
			return err
		}
		if p.Node == node {
			uids = append(uids, bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range uids {
		if err := b.Delete(k); err != nil {
			return fmt.Errorf("store: delete pod %q: %w", k, err)
		}
	}
	return nil
}

// ---- nodes ----

// GetNode implements Store.
func (s *Bolt) GetNode(name string) (*NodeRecord, error) {
	var n *NodeRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = getNode(tx, name)
		return err
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// ListNodes implements Store. bbolt iterates keys in byte order, so the result
// is sorted by name.
func (s *Bolt) ListNodes() ([]*NodeRecord, error) {
	out := []*NodeRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			n, err := decode[NodeRecord]("node", k, v)
			if err != nil {
				return err
			}
			out = append(out, n)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutNode implements Store.
func (s *Bolt) PutNode(n *NodeRecord) (uint64, error) { return s.putNode(n, nil) }

// putNode writes n; with prev set only if the stored revision is *prev (0:
// the node must not exist).
func (s *Bolt) putNode(n *NodeRecord, prev *uint64) (uint64, error) {
	if n == nil {
		return 0, errors.New("store: put node: record is nil")
	}
	if n.Name == "" {
		return 0, errors.New("store: put node: Name is empty")
	}
	var rev uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		if prev != nil {
			var have uint64
			old, err := getNode(tx, n.Name)
			switch {
			case err == nil:
				have = old.Revision
			case !errors.Is(err, ErrNotFound):
				return err
			}
			if have != *prev {
				return fmt.Errorf("store: put node %q: stored revision is %d, not %d: %w", n.Name, have, *prev, ErrConflict)
			}
		}
		var err error
		if rev, err = bumpRevision(tx); err != nil {
			return err
		}
		rec := *n
		rec.Revision = rev
		return put(tx.Bucket(bucketNodes), "node", []byte(n.Name), &rec)
	})
	if err != nil {
		return 0, err
	}
	n.Revision = rev
	return rev, nil
}

// PutNodeIf implements Store. One process writes a bolt file, so pod CIDR
// uniqueness is left to the server's allocator (it holds its lock).
func (s *Bolt) PutNodeIf(n *NodeRecord, prevRevision uint64) (uint64, error) {
	return s.putNode(n, &prevRevision)
}

// DeleteNode implements Store.
func (s *Bolt) DeleteNode(name string) (uint64, error) {
	var rev uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		if _, ok := get(tx.Bucket(bucketNodes), []byte(name)); !ok {
			return fmt.Errorf("store: delete node %q: %w", name, ErrNotFound)
		}
		if err := tx.Bucket(bucketNodes).Delete([]byte(name)); err != nil {
			return fmt.Errorf("store: delete node %q: %w", name, err)
		}
		if err := deletePodsOf(tx, name); err != nil {
			return err
		}
		var err error
		rev, err = bumpRevision(tx)
		return err
	})
	if err != nil {
		return 0, err
	}
	return rev, nil
}

// RevokeNode implements Store.
func (s *Bolt) RevokeNode(name string, at time.Time) (*Revocation, uint64, error) {
	var (
		rev uint64
		r   *Revocation
	)
	err := s.db.Update(func(tx *bolt.Tx) error {
		n, err := getNode(tx, name)
		if err != nil {
			return fmt.Errorf("store: revoke: %w", err)
		}
		if err := tx.Bucket(bucketNodes).Delete([]byte(name)); err != nil {
			return fmt.Errorf("store: revoke node %q: %w", name, err)
		}
		if err := deletePodsOf(tx, name); err != nil {
			return err
		}
		if rev, err = bumpRevision(tx); err != nil {
			return err
		}
		r = &Revocation{Name: n.Name, ChipID: n.ChipID, WireGuardKey: n.WireGuardKey, RevokedAt: at}
		return put(tx.Bucket(bucketRevocations), "revocation", u64(rev), r)
	})
	if err != nil {
		return nil, 0, err
	}
	return r, rev, nil
}

// Revision implements Store.
func (s *Bolt) Revision() (uint64, error) {
	var rev uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		rev, err = readRevision(tx)
		return err
	})
	return rev, err
}

// ---- revocations ----

// findRevocation returns the first revocation for which match is true.
func (s *Bolt) findRevocation(match func(*Revocation) bool) (*Revocation, bool, error) {
	var found *Revocation
	errStop := errors.New("stop")
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			r, err := decode[Revocation]("revocation", k, v)
			if err != nil {
				return err
			}
			if match(r) {
				found = r
				return errStop
			}
			return nil
		})
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, false, err
	}
	return found, found != nil, nil
}

// Revoked implements Store.
func (s *Bolt) Revoked(chipID []byte) (*Revocation, bool, error) {
	if len(chipID) == 0 {
		return nil, false, nil
	}
	return s.findRevocation(func(r *Revocation) bool { return bytes.Equal(r.ChipID, chipID) })
}

// RevokedKey implements Store.
func (s *Bolt) RevokedKey(wireguardKey []byte) (*Revocation, bool, error) {
	if len(wireguardKey) == 0 {
		return nil, false, nil
	}
	return s.findRevocation(func(r *Revocation) bool { return bytes.Equal(r.WireGuardKey, wireguardKey) })
}

// ListRevocations implements Store.
func (s *Bolt) ListRevocations() ([]*Revocation, error) {
	out := []*Revocation{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRevocations).ForEach(func(k, v []byte) error {
			r, err := decode[Revocation]("revocation", k, v)
			if err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ---- pods ----

// PutPod implements Store.
func (s *Bolt) PutPod(p *PodRecord) error {
	if p == nil {
		return errors.New("store: put pod: record is nil")
	}
	if p.UID == "" {
		return errors.New("store: put pod: UID is empty")
	}
	if p.Node == "" {
		return fmt.Errorf("store: put pod %q: Node is empty", p.UID)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if _, ok := get(tx.Bucket(bucketNodes), []byte(p.Node)); !ok {
			return fmt.Errorf("store: put pod %q: node %q: %w", p.UID, p.Node, ErrNotFound)
		}
		b := tx.Bucket(bucketPods)
		if v, ok := get(b, []byte(p.UID)); ok {
			old, err := decode[PodRecord]("pod", []byte(p.UID), v)
			if err != nil {
				return err
			}
			if old.Node != p.Node {
				return fmt.Errorf("store: put pod %q: already registered by node %q, not %q", p.UID, old.Node, p.Node)
			}
		}
		return put(b, "pod", []byte(p.UID), p)
	})
}

// GetPod implements Store.
func (s *Bolt) GetPod(uid string) (*PodRecord, error) {
	var p *PodRecord
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := get(tx.Bucket(bucketPods), []byte(uid))
		if !ok {
			return fmt.Errorf("store: pod %q: %w", uid, ErrNotFound)
		}
		var err error
		p, err = decode[PodRecord]("pod", []byte(uid), v)
		return err
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// DeletePod implements Store.
func (s *Bolt) DeletePod(uid string) error {
	if uid == "" {
		return errors.New("store: delete pod: UID is empty")
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketPods).Delete([]byte(uid)); err != nil {
			return fmt.Errorf("store: delete pod %q: %w", uid, err)
		}
		return nil
	})
}

// ListPods implements Store. bbolt iterates keys in byte order, so the result
// is sorted by UID.
func (s *Bolt) ListPods(node string) ([]*PodRecord, error) {
	out := []*PodRecord{}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPods).ForEach(func(k, v []byte) error {
			p, err := decode[PodRecord]("pod", k, v)
			if err != nil {
				return err
			}
			if node == "" || p.Node == node {
				out = append(out, p)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ---- secrets ----

// GetSecret implements Store.
func (s *Bolt) GetSecret(name string) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		v, ok := get(tx.Bucket(bucketSecrets), []byte(name))
		if !ok {
			return fmt.Errorf("store: secret %q: %w", name, ErrNotFound)
		}
		out = append([]byte{}, v...) // v is only valid inside the transaction
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutSecret implements Store.
func (s *Bolt) PutSecret(name string, value []byte) error {
	if name == "" {
		return errors.New("store: put secret: name is empty")
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketSecrets).Put([]byte(name), append([]byte{}, value...)); err != nil {
			return fmt.Errorf("store: write secret %q: %w", name, err)
		}
		return nil
	})
}

// CreateSecrets implements Store.
func (s *Bolt) CreateSecrets(values map[string][]byte) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, errors.New("store: create secrets: no secrets given")
	}
	for name := range values {
		if name == "" {
			return nil, errors.New("store: create secrets: a name is empty")
		}
	}
	out := map[string][]byte{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSecrets)
		found := 0
		for name := range values {
			if v, ok := get(b, []byte(name)); ok {
				out[name] = append([]byte{}, v...)
				found++
			}
		}
		switch {
		case found == len(values):
			return nil
		case found > 0:
			return fmt.Errorf("store: create secrets: %d of %d already exist: %w", found, len(values), ErrPartialSecrets)
		}
		for name, v := range values {
			if err := b.Put([]byte(name), append([]byte{}, v...)); err != nil {
				return fmt.Errorf("store: write secret %q: %w", name, err)
			}
			out[name] = append([]byte{}, v...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
