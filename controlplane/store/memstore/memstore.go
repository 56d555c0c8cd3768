// Package memstore is an in-memory store.Shared: one Backend (the shared
// state, standing in for the Kubernetes API) and any number of Stores (one
// per control-plane replica) that read and write it at once. It exists to
// test replicas without an API server, so it is deliberately unkind:
// revisions increase strictly but skip values (every node change steps by
// 2 to 5, and pod and secret writes bump the revision too, as resourceVersions
// do), watch events reach each replica asynchronously, a replica that falls
// behind loses its watch, and tests may cut one replica off the backend
// (Cut) or break its watch (BreakWatch).
//
// Record semantics are bolt's (store.Bolt is the reference): see store.Store.
package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/confmesh/confmesh/controlplane/store"
)

// ErrUnreachable is returned (wrapped) by every call of a Store that a test
// cut off (Cut) or that was closed.
var ErrUnreachable = errors.New("memstore: store unreachable")

// errWatchBroken ends a watch that BreakWatch or Cut broke.
var errWatchBroken = errors.New("memstore: watch broken")

// errWatchBehind ends a watch whose consumer did not keep up.
var errWatchBehind = errors.New("memstore: watch fell behind (too many undelivered changes)")

// watchBuffer is how many changes a watch may have undelivered before it is
// broken (the consumer relists).
const watchBuffer = 4096

// Backend is the shared state several Stores read and write.
type Backend struct {
	mu          sync.Mutex
	rev         uint64
	nodes       map[string]*store.NodeRecord
	revocations []*store.Revocation // revocation order
	pods        map[string]*store.PodRecord
	secrets     map[string][]byte
	watches     map[*watch]struct{}

	leader  *Store        // holder of the leader lease, nil when free
	changed chan struct{} // closed and replaced when the lease or a cut changes
}

// New returns an empty backend at revision 0.
func New() *Backend {
	return &Backend{
		nodes: map[string]*store.NodeRecord{}, pods: map[string]*store.PodRecord{},
		secrets: map[string][]byte{}, watches: map[*watch]struct{}{}, changed: make(chan struct{}),
	}
}

// Open returns a new client of the backend: one replica's store.
func (b *Backend) Open() *Store {
	return &Store{b: b}
}

// Leader returns the store holding the leader lease, or nil.
func (b *Backend) Leader() *Store {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.leader
}

// notifyLocked wakes every Lead waiting for the lease or a cut to change.
func (b *Backend) notifyLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// bumpLocked advances the revision by a step of 2 to 5, so consumers that
// assume consecutive revisions fail.
func (b *Backend) bumpLocked() uint64 {
	b.rev += 2 + uint64(rand.IntN(4))
	return b.rev
}

// emitLocked delivers c to every watch in revision order; a watch whose
// buffer is full is broken (its consumer relists).
func (b *Backend) emitLocked(c store.Change) {
	for w := range b.watches {
		select {
		case w.ch <- c:
		default:
			w.breakWith(errWatchBehind)
			delete(b.watches, w)
		}
	}
}

type watch struct {
	owner  *Store
	ch     chan store.Change
	broken chan struct{}
	once   sync.Once
	err    error
}

func (w *watch) breakWith(err error) {
	w.once.Do(func() { w.err = err; close(w.broken) })
}

// Store is one replica's client of a Backend. It implements store.Shared.
type Store struct {
	b *Backend
	// guarded by b.mu
	cut    bool
	closed bool
	lease  context.CancelFunc // cancels fn's context while this store leads
	held   chan struct{}      // non-nil while HoldWatch holds deliveries; closed on release
}

var _ store.Shared = (*Store)(nil)

// checkLocked fails when the store is cut off or closed.
func (s *Store) checkLocked() error {
	switch {
	case s.closed:
		return fmt.Errorf("%w: closed", ErrUnreachable)
	case s.cut:
		return fmt.Errorf("%w: cut off by the test", ErrUnreachable)
	}
	return nil
}

// lock takes the backend lock and fails when the store is unreachable.
func (s *Store) lock() error {
	s.b.mu.Lock()
	if err := s.checkLocked(); err != nil {
		s.b.mu.Unlock()
		return err
	}
	return nil
}

// Cut makes every call of this store fail with ErrUnreachable, breaks its
// watches and drops its leader lease (as losing the API would) until
// Restore. Other stores of the backend are unaffected.
func (s *Store) Cut() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.cut = true
	s.dropLocked(errWatchBroken)
}

// Restore undoes Cut.
func (s *Store) Restore() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.cut = false
	s.b.notifyLocked()
}

// BreakWatch ends this store's running watches with an error (the store
// stays reachable): the consumer's next WatchNodes relists.
func (s *Store) BreakWatch() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	for w := range s.b.watches {
		if w.owner == s {
			w.breakWith(errWatchBroken)
			delete(s.b.watches, w)
		}
	}
}

// HoldWatch stops delivering changes and progress to this store's watches
// (changes queue, up to the watch buffer), and a WatchNodes called
// meanwhile lists only after ReleaseWatch: a replica whose watch lags, or
// whose connection to the store went silent.
func (s *Store) HoldWatch() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.held == nil {
		s.held = make(chan struct{})
	}
}

// ReleaseWatch resumes deliveries HoldWatch held.
func (s *Store) ReleaseWatch() {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.held != nil {
		close(s.held)
		s.held = nil
	}
}

// dropLocked breaks this store's watches and ends its lease's context.
func (s *Store) dropLocked(err error) {
	for w := range s.b.watches {
		if w.owner == s {
			w.breakWith(err)
			delete(s.b.watches, w)
		}
	}
	if s.lease != nil {
		s.lease()
	}
	s.b.notifyLocked()
}

// Close implements store.Store: this client stops working; the backend and
// its other clients go on.
func (s *Store) Close() error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	s.closed = true
	s.dropLocked(fmt.Errorf("%w: closed", ErrUnreachable))
	return nil
}

// ---- nodes ----

func cloneNode(n *store.NodeRecord) *store.NodeRecord {
	c := *n
	c.WireGuardKey = bytes.Clone(n.WireGuardKey)
	c.ChipID = bytes.Clone(n.ChipID)
	c.Measurement = bytes.Clone(n.Measurement)
	c.Evidence = bytes.Clone(n.Evidence)
	if n.SVID != nil {
		c.SVID = make([][]byte, len(n.SVID))
		for i, b := range n.SVID {
			c.SVID[i] = bytes.Clone(b)
		}
	}
	return &c
}

func cloneRevocation(r *store.Revocation) *store.Revocation {
	c := *r
	c.ChipID, c.WireGuardKey = bytes.Clone(r.ChipID), bytes.Clone(r.WireGuardKey)
	return &c
}

// GetNode implements store.Store.
func (s *Store) GetNode(name string) (*store.NodeRecord, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	n, ok := s.b.nodes[name]
	if !ok {
		return nil, fmt.Errorf("memstore: node %q: %w", name, store.ErrNotFound)
	}
	return cloneNode(n), nil
}

// ListNodes implements store.Store.
func (s *Store) ListNodes() ([]*store.NodeRecord, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	return s.b.listLocked(), nil
}

func (b *Backend) listLocked() []*store.NodeRecord {
	out := make([]*store.NodeRecord, 0, len(b.nodes))
	for _, n := range b.nodes {
		out = append(out, cloneNode(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// checkNodeRecord refuses a record no store could keep.
func checkNodeRecord(n *store.NodeRecord) error {
	if n == nil {
		return errors.New("memstore: put node: record is nil")
	}
	if n.Name == "" {
		return errors.New("memstore: put node: Name is empty")
	}
	return nil
}

// PutNode implements store.Store.
func (s *Store) PutNode(n *store.NodeRecord) (uint64, error) {
	if err := checkNodeRecord(n); err != nil {
		return 0, err
	}
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.b.mu.Unlock()
	return s.b.putNodeLocked(n), nil
}

// PutNodeIf implements store.Store. Like the Kubernetes API store it keeps
// pod CIDRs unique across replicas: another node's CIDR is refused with
// store.ErrPodCIDRTaken.
func (s *Store) PutNodeIf(n *store.NodeRecord, prevRevision uint64) (uint64, error) {
	if err := checkNodeRecord(n); err != nil {
		return 0, err
	}
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.b.mu.Unlock()
	var have uint64
	if old, ok := s.b.nodes[n.Name]; ok {
		have = old.Revision
	}
	if have != prevRevision {
		return 0, fmt.Errorf("memstore: put node %q: stored revision is %d, not %d: %w", n.Name, have, prevRevision, store.ErrConflict)
	}
	if n.PodCIDR != "" {
		for _, o := range s.b.nodes {
			if o.Name != n.Name && o.PodCIDR == n.PodCIDR {
				return 0, fmt.Errorf("memstore: put node %q: pod CIDR %s belongs to node %q: %w", n.Name, n.PodCIDR, o.Name, store.ErrPodCIDRTaken)
			}
		}
	}
	return s.b.putNodeLocked(n), nil
}

func (b *Backend) putNodeLocked(n *store.NodeRecord) uint64 {
	rev := b.bumpLocked()
	rec := cloneNode(n)
	rec.Revision = rev
	b.nodes[n.Name] = rec
	n.Revision = rev
	b.emitLocked(store.Change{Revision: rev, Node: cloneNode(rec)})
	return rev
}

// deleteNodeLocked removes the node and its pods and emits the deletion.
func (b *Backend) deleteNodeLocked(name string) uint64 {
	delete(b.nodes, name)
	for uid, p := range b.pods {
		if p.Node == name {
			delete(b.pods, uid)
		}
	}
	rev := b.bumpLocked()
	b.emitLocked(store.Change{Revision: rev, Deleted: name})
	return rev
}

// DeleteNode implements store.Store.
func (s *Store) DeleteNode(name string) (uint64, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.b.mu.Unlock()
	if _, ok := s.b.nodes[name]; !ok {
		return 0, fmt.Errorf("memstore: delete node %q: %w", name, store.ErrNotFound)
	}
	return s.b.deleteNodeLocked(name), nil
}

// RevokeNode implements store.Store.
func (s *Store) RevokeNode(name string, at time.Time) (*store.Revocation, uint64, error) {
	if err := s.lock(); err != nil {
		return nil, 0, err
	}
	defer s.b.mu.Unlock()
	n, ok := s.b.nodes[name]
	if !ok {
		return nil, 0, fmt.Errorf("memstore: revoke: node %q: %w", name, store.ErrNotFound)
	}
	r := &store.Revocation{Name: n.Name, ChipID: bytes.Clone(n.ChipID), WireGuardKey: bytes.Clone(n.WireGuardKey), RevokedAt: at}
	rev := s.b.deleteNodeLocked(name)
	s.b.revocations = append(s.b.revocations, r)
	return cloneRevocation(r), rev, nil
}

// Revision implements store.Store: the backend's revision, which pod and
// secret writes advance too (as a resourceVersion does).
func (s *Store) Revision() (uint64, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.b.mu.Unlock()
	return s.b.rev, nil
}

// ---- revocations ----

func (s *Store) findRevocation(match func(*store.Revocation) bool) (*store.Revocation, bool, error) {
	if err := s.lock(); err != nil {
		return nil, false, err
	}
	defer s.b.mu.Unlock()
	for _, r := range s.b.revocations {
		if match(r) {
			return cloneRevocation(r), true, nil
		}
	}
	return nil, false, nil
}

// Revoked implements store.Store.
func (s *Store) Revoked(chipID []byte) (*store.Revocation, bool, error) {
	if len(chipID) == 0 {
		return nil, false, nil
	}
	return s.findRevocation(func(r *store.Revocation) bool { return bytes.Equal(r.ChipID, chipID) })
}

// RevokedKey implements store.Store.
func (s *Store) RevokedKey(wireguardKey []byte) (*store.Revocation, bool, error) {
	if len(wireguardKey) == 0 {
		return nil, false, nil
	}
	return s.findRevocation(func(r *store.Revocation) bool { return bytes.Equal(r.WireGuardKey, wireguardKey) })
}

// ListRevocations implements store.Store.
func (s *Store) ListRevocations() ([]*store.Revocation, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	out := make([]*store.Revocation, 0, len(s.b.revocations))
	for _, r := range s.b.revocations {
		out = append(out, cloneRevocation(r))
	}
	return out, nil
}

// ---- pods ----

// PutPod implements store.Store.
func (s *Store) PutPod(p *store.PodRecord) error {
	if p == nil {
		return errors.New("memstore: put pod: record is nil")
	}
	if p.UID == "" {
		return errors.New("memstore: put pod: UID is empty")
	}
	if p.Node == "" {
		return fmt.Errorf("memstore: put pod %q: Node is empty", p.UID)
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.b.mu.Unlock()
	if _, ok := s.b.nodes[p.Node]; !ok {
		return fmt.Errorf("memstore: put pod %q: node %q: %w", p.UID, p.Node, store.ErrNotFound)
	}
	if old, ok := s.b.pods[p.UID]; ok && old.Node != p.Node {
		return fmt.Errorf("memstore: put pod %q: already registered by node %q, not %q", p.UID, old.Node, p.Node)
	}
	c := *p
	s.b.pods[p.UID] = &c
	s.b.bumpLocked()
	return nil
}

// GetPod implements store.Store.
func (s *Store) GetPod(uid string) (*store.PodRecord, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	p, ok := s.b.pods[uid]
	if !ok {
		return nil, fmt.Errorf("memstore: pod %q: %w", uid, store.ErrNotFound)
	}
	c := *p
	return &c, nil
}

// DeletePod implements store.Store.
func (s *Store) DeletePod(uid string) error {
	if uid == "" {
		return errors.New("memstore: delete pod: UID is empty")
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.b.mu.Unlock()
	if _, ok := s.b.pods[uid]; ok {
		delete(s.b.pods, uid)
		s.b.bumpLocked()
	}
	return nil
}

// ListPods implements store.Store.
func (s *Store) ListPods(node string) ([]*store.PodRecord, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	out := []*store.PodRecord{}
	for _, p := range s.b.pods {
		if node == "" || p.Node == node {
			c := *p
			out = append(out, &c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out, nil
}

// ---- secrets ----

// GetSecret implements store.Store.
func (s *Store) GetSecret(name string) ([]byte, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	v, ok := s.b.secrets[name]
	if !ok {
		return nil, fmt.Errorf("memstore: secret %q: %w", name, store.ErrNotFound)
	}
	return append([]byte{}, v...), nil
}

// PutSecret implements store.Store.
func (s *Store) PutSecret(name string, value []byte) error {
	if name == "" {
		return errors.New("memstore: put secret: name is empty")
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.b.mu.Unlock()
	s.b.secrets[name] = append([]byte{}, value...)
	s.b.bumpLocked()
	return nil
}

// CreateSecrets implements store.Store.
func (s *Store) CreateSecrets(values map[string][]byte) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, errors.New("memstore: create secrets: no secrets given")
	}
	for name := range values {
		if name == "" {
			return nil, errors.New("memstore: create secrets: a name is empty")
		}
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.b.mu.Unlock()
	out := map[string][]byte{}
	for name := range values {
		if v, ok := s.b.secrets[name]; ok {
			out[name] = append([]byte{}, v...)
		}
	}
	switch {
	case len(out) == len(values):
		return out, nil
	case len(out) > 0:
		return nil, fmt.Errorf("memstore: create secrets: %d of %d already exist: %w", len(out), len(values), store.ErrPartialSecrets)
	}
	for name, v := range values {
		s.b.secrets[name] = append([]byte{}, v...)
		out[name] = append([]byte{}, v...)
	}
	s.b.bumpLocked()
	return out, nil
}

// ---- Shared ----

// WatchNodes implements store.Shared. Changes reach the consumer through a
// buffer of watchBuffer changes; one that falls further behind loses the
// watch (the call returns an error) and relists by calling again. An idle
// watch reports progress every progressTick; a held one (HoldWatch) is
// silent: neither a list, nor changes, nor progress until ReleaseWatch.
func (s *Store) WatchNodes(ctx context.Context, sync func(nodes []*store.NodeRecord, rev uint64), change func(store.Change), progress func(uint64)) error {
	if held := s.holding(); held != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-held:
		}
	}
	if err := s.lock(); err != nil {
		return err
	}
	nodes, rev := s.b.listLocked(), s.b.rev
	w := &watch{owner: s, ch: make(chan store.Change, watchBuffer), broken: make(chan struct{})}
	s.b.watches[w] = struct{}{}
	s.b.mu.Unlock()
	defer func() {
		s.b.mu.Lock()
		delete(s.b.watches, w)
		s.b.mu.Unlock()
	}()
	sync(nodes, rev)
	tick := time.NewTicker(progressTick)
	defer tick.Stop()
	for {
		// A broken watch ends before anything still buffered is delivered:
		// the consumer relists, as after a watch the API server ended.
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.broken:
			return w.err
		default:
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w.broken:
			return w.err
		case <-tick.C:
			if held := s.holding(); held != nil {
				if err := s.waitHeld(ctx, w, held); err != nil {
					return err
				}
			}
			progress(rev)
		case c := <-w.ch:
			if held := s.holding(); held != nil { // HoldWatch: deliver c only after ReleaseWatch
				if err := s.waitHeld(ctx, w, held); err != nil {
					return err
				}
			}
			change(c)
			rev = c.Revision
		}
	}
}

// progressTick is how often an idle memstore watch reports progress.
const progressTick = store.ProgressInterval / 3

// holding returns the channel HoldWatch's release closes, nil when not held.
func (s *Store) holding() chan struct{} {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.held
}

// waitHeld waits for ReleaseWatch (nil) or the watch's end (its error).
func (s *Store) waitHeld(ctx context.Context, w *watch, held chan struct{}) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-w.broken:
		return w.err
	case <-held:
		return nil
	}
}

// Lead implements store.Shared. The lease is free when no store holds it;
// a cut-off or closed store loses it at once (fn's context ends) and
// another store takes it only after that fn returned, so two fns never
// run at once. When fn returns while its store still holds the lease, the
// lease is released and taken again (fn runs again) as long as ctx lasts.
func (s *Store) Lead(ctx context.Context, fn func(ctx context.Context)) error {
	for {
		s.b.mu.Lock()
		for s.b.leader != nil || s.cut || s.closed {
			if s.closed {
				s.b.mu.Unlock()
				return fmt.Errorf("%w: closed", ErrUnreachable)
			}
			ch := s.b.changed
			s.b.mu.Unlock()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-ch:
			}
			s.b.mu.Lock()
		}
		if ctx.Err() != nil {
			s.b.mu.Unlock()
			return ctx.Err()
		}
		lctx, cancel := context.WithCancel(ctx)
		s.b.leader, s.lease = s, cancel
		s.b.mu.Unlock()

		fn(lctx)
		cancel()

		s.b.mu.Lock()
		s.b.leader, s.lease = nil, nil
		s.b.notifyLocked()
		s.b.mu.Unlock()
	}
}
