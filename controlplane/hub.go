package controlplane

import (
	"sync"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
)

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
	log  []*cpv1.WatchEvent // ascending revisions, all > rev-len(log)
	subs map[*subscriber]struct{}
}

type subscriber struct {
	node string
	ch   chan *cpv1.WatchEvent
}

func newHub(rev uint64) *hub {
	return &hub{rev: rev, subs: map[*subscriber]struct{}{}}
}

// publish records ev (whose Revision the caller set) and delivers it. A
// subscriber whose buffer is full is dropped: its channel closes.
func (h *hub) publish(ev *cpv1.WatchEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rev = ev.Revision
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
func (h *hub) subscribe(node string, from uint64, snap func() []*cpv1.Peer) ([]*cpv1.WatchEvent, *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := &subscriber{node: node, ch: make(chan *cpv1.WatchEvent, subscriberBuffer)}
	h.subs[s] = struct{}{}
	switch {
	case from == h.rev && from > 0:
		return nil, s
	case from > 0 && from < h.rev && len(h.log) > 0 && h.log[0].Revision <= from+1:
		var out []*cpv1.WatchEvent
		for _, ev := range h.log {
			if ev.Revision > from {
				out = append(out, ev)
			}
		}
		return out, s
	default:
		return []*cpv1.WatchEvent{{Revision: h.rev, Event: &cpv1.WatchEvent_Snapshot{Snapshot: &cpv1.Snapshot{Peers: snap()}}}}, s
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
