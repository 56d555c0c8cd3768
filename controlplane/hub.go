package controlplane

import (
	"sync"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// encodedMsg is a message already in its protobuf wire form, the
// concatenation of parts: wireCodec sends the parts as they are, so one
// encoding serves every watcher and a snapshot is assembled from the
// peers' cached encodings without copying them.
type encodedMsg struct{ parts [][]byte }

// wireCodec is the agent service's codec: protobuf, except that an
// *encodedMsg goes out as its parts (read-only, shared by every stream).
type wireCodec struct{ encoding.CodecV2 }

func newWireCodec() wireCodec { return wireCodec{encoding.GetCodecV2(grpcproto.Name)} }

func (c wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*encodedMsg); ok {
		out := make(mem.BufferSlice, len(m.parts))
		for i, p := range m.parts {
			out[i] = mem.SliceBuffer(p)
		}
		return out, nil
	}
	return c.CodecV2.Marshal(v)
}

// hubEvent is one delta, encoded at most once however many watchers it
// goes to: with N watchers every join is N sends of the same bytes.
type hubEvent struct {
	ev   *cpv1.WatchEvent
	once sync.Once
	wire *encodedMsg // set at creation for snapshots, else on first use
	err  error
}

func newHubEvent(ev *cpv1.WatchEvent) *hubEvent { return &hubEvent{ev: ev} }

// newSnapshotEvent is a snapshot at rev made of peers already encoded as
// Snapshot.peers fields (see peerField; nodeCache keeps one per node), so a
// watcher's snapshot costs neither encoding every peer again nor copying
// them into one buffer. Its ev carries the revision only.
func newSnapshotEvent(rev uint64, peerFields [][]byte) *hubEvent {
	size := 0
	for _, p := range peerFields {
		size += len(p)
	}
	var head []byte
	if rev != 0 {
		head = protowire.AppendTag(head, 1, protowire.VarintType) // WatchEvent.revision
		head = protowire.AppendVarint(head, rev)
	}
	head = protowire.AppendTag(head, 2, protowire.BytesType) // WatchEvent.snapshot
	head = protowire.AppendVarint(head, uint64(size))
	return &hubEvent{
		ev:   &cpv1.WatchEvent{Revision: rev, Event: &cpv1.WatchEvent_Snapshot{Snapshot: &cpv1.Snapshot{}}},
		wire: &encodedMsg{parts: append([][]byte{head}, peerFields...)},
	}
}

// peerField is p encoded as a Snapshot.peers field (tag, length, message).
func peerField(p *cpv1.Peer) ([]byte, error) {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(proto.Size(p)))
	return proto.MarshalOptions{}.MarshalAppend(b, p)
}

// encoded returns the event's wire form, shared by every stream.
func (e *hubEvent) encoded() (*encodedMsg, error) {
	e.once.Do(func() {
		if e.wire != nil {
			return
		}
		b, err := proto.Marshal(e.ev)
		e.wire, e.err = &encodedMsg{parts: [][]byte{b}}, err
	})
	return e.wire, e.err
}

const (
	// deltaLogSize is how many recent deltas are kept for resuming watches.
	deltaLogSize = 1024
	// subscriberBuffer is how far a watcher may fall behind before it is
	// cut off (it then reconnects and resumes or takes a snapshot).
	subscriberBuffer = 256
)

// hub fans peer-set deltas out to watchers and keeps a short log of them
// so a reconnecting agent resumes from its revision. Revisions increase
// strictly but need not be consecutive (a shared store's are not): the log
// is complete since revision since, that is, it holds every delta after
// since, and serves any from in [since, rev].
type hub struct {
	mu    sync.Mutex
	rev   uint64
	since uint64
	log   []*hubEvent // ascending revisions, all after since
	subs  map[*subscriber]struct{}
}

type subscriber struct {
	node string
	ch   chan *hubEvent
	// reason is why the hub closed ch, set before it closes; empty when
	// the watcher fell behind.
	reason string
}

func newHub(rev uint64) *hub {
	return &hub{rev: rev, since: rev, subs: map[*subscriber]struct{}{}}
}

// send delivers ev to every subscriber; one whose buffer is full is
// dropped (its channel closes). The caller holds h.mu.
func (h *hub) sendLocked(ev *hubEvent) {
	for s := range h.subs {
		select {
		case s.ch <- ev:
		default:
			close(s.ch)
			delete(h.subs, s)
		}
	}
}

// publish records ev (whose Revision the caller set, above every earlier
// one) and delivers it.
func (h *hub) publish(msg *cpv1.WatchEvent) {
	ev := newHubEvent(msg)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rev = msg.Revision
	h.log = append(h.log, ev)
	if len(h.log) > deltaLogSize {
		drop := len(h.log) - deltaLogSize
		h.since = h.log[drop-1].ev.Revision
		h.log = h.log[drop:]
	}
	h.sendLocked(ev)
}

// reset moves the hub to revision rev after the store was listed again
// (the changes between the old revision and rev are not known one by
// one): connected watchers get diff, the deltas that take the old peer
// set to the new one, each carrying the old revision, and then a marker
// at rev; the log starts afresh at rev. A watcher cut off halfway through
// diff has not moved past the old revision, so it resumes from a revision
// this hub answers with a snapshot and another replica with its deltas.
func (h *hub) reset(rev uint64, diff []*cpv1.WatchEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	old := h.rev
	for _, d := range diff {
		d.Revision = old
		h.sendLocked(newHubEvent(d))
	}
	h.sendLocked(newHubEvent(&cpv1.WatchEvent{Revision: rev}))
	h.rev, h.since, h.log = rev, rev, nil
}

// closeAll ends every watcher's channel with reason.
func (h *hub) closeAll(reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.reason = reason
		close(s.ch)
		delete(h.subs, s)
	}
}

// subscribe registers a watcher. It returns what the watcher must receive
// first: nothing when from is the current revision, the deltas after from
// when the log holds them all (from at or after since), else (from 0,
// older than the log, or newer than this hub) a snapshot of the encoded
// peers snap returns. The caller must hold the server's state lock so no
// change lands between the snapshot and the subscription.
func (h *hub) subscribe(node string, from uint64, snap func() [][]byte) ([]*hubEvent, *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &subscriber{node: node, ch: make(chan *hubEvent, subscriberBuffer)}
	h.subs[s] = struct{}{}
	switch {
	case from == h.rev && from > 0:
		return nil, s
	case from > 0 && from >= h.since && from < h.rev:
		var out []*hubEvent
		for _, ev := range h.log {
			if ev.ev.Revision > from {
				out = append(out, ev)
			}
		}
		return out, s
	default:
		return []*hubEvent{newSnapshotEvent(h.rev, snap())}, s
	}
}

// revision returns the hub's current revision.
func (h *hub) revision() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}

func (h *hub) watchers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}
