package controlplane

import (
	"sync"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc"
)

// hubEvent is one delta, encoded at most once however many watchers it
// goes to: with N watchers every join is N sends of the same message.
type hubEvent struct {
	ev       *cpv1.WatchEvent
	once     sync.Once
	prepared *grpc.PreparedMsg
	err      error
}

func newHubEvent(ev *cpv1.WatchEvent) *hubEvent { return &hubEvent{ev: ev} }

// encoded returns the event marshalled with stream's codec, shared by every
// stream (they all use the same codec and no compression).
func (e *hubEvent) encoded(stream grpc.ServerStream) (*grpc.PreparedMsg, error) {
	e.once.Do(func() {
		p := &grpc.PreparedMsg{}
		e.err = p.Encode(stream, e.ev)
		e.prepared = p
	})
	return e.prepared, e.err
}

const (
	// deltaLogSize is how many recent deltas are kept for resuming watches.
	deltaLogSize = 1024
	// subscriberBuffer is how far a watcher may fall behind before it is
	// cut off (it then reconnects and resumes or takes a snapshot).
	subscriberBuffer = 256
)

// hub fans peer-set deltas out to watchers and keeps a short log of them
// so a reconnecting agent resumes from its revision.
type hub struct {
	mu   sync.Mutex
	rev  uint64
	log  []*hubEvent // ascending revisions
	subs map[*subscriber]struct{}
}

type subscriber struct {
	node string
	ch   chan *hubEvent
}

func newHub(rev uint64) *hub {
	return &hub{rev: rev, subs: map[*subscriber]struct{}{}}
}

// publish records ev (whose Revision the caller set) and delivers it. A
// subscriber whose buffer is full is dropped: its channel closes.
func (h *hub) publish(msg *cpv1.WatchEvent) {
	ev := newHubEvent(msg)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rev = msg.Revision
	h.log = append(h.log, ev)
	if len(h.log) > deltaLogSize {
		h.log = h.log[len(h.log)-deltaLogSize:]
	}
	for s := range h.subs {
		select {
		case s.ch <- ev:
		default:
			close(s.ch)
			delete(h.subs, s)
		}
	}
}

// subscribe registers a watcher. It returns what the watcher must receive
// first: the deltas after from when the log still holds them all, else a
// snapshot (built by snap). The caller must hold the server's state lock
// so no change lands between the snapshot and the subscription.
func (h *hub) subscribe(node string, from uint64, snap func() []*cpv1.Peer) ([]*hubEvent, *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &subscriber{node: node, ch: make(chan *hubEvent, subscriberBuffer)}
	h.subs[s] = struct{}{}
	switch {
	case from == h.rev && from > 0:
		return nil, s
	case from > 0 && from < h.rev && len(h.log) > 0 && h.log[0].ev.Revision <= from+1:
		var out []*hubEvent
		for _, ev := range h.log {
			if ev.ev.Revision > from {
				out = append(out, ev)
			}
		}
		return out, s
	default:
		return []*hubEvent{newHubEvent(&cpv1.WatchEvent{Revision: h.rev, Event: &cpv1.WatchEvent_Snapshot{Snapshot: &cpv1.Snapshot{Peers: snap()}}})}, s
	}
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
