package controlplane

import (
	"sort"
	"sync"
	"time"
)

// Bounds of the refusal record: Join is unauthenticated, so whoever can
// reach the control plane chooses the names it is refused under. The
// record keeps at most maxRefusalNames names (the least recently refused
// goes first) and at most maxRefusalMessage bytes of each message.
const (
	maxRefusalNames   = 256
	maxRefusalMessage = 512
)

// refusedJoin is the latest refused join under one claimed node name.
type refusedJoin struct {
	Name    string
	Reason  string // the refusal label (joins_total reason)
	Message string // what the node was told
	First   time.Time
	Last    time.Time
	Count   uint32
}

// refusalLog remembers recent refused joins per claimed name, in memory
// and bounded, for `confmesh nodes --all`. It is not state the control
// plane acts on: a restart forgets it.
type refusalLog struct {
	mu     sync.Mutex
	max    int
	byName map[string]*refusedJoin
}

func newRefusalLog(max int) *refusalLog {
	return &refusalLog{max: max, byName: map[string]*refusedJoin{}}
}

// add records a refused join of name at t.
func (l *refusalLog) add(name, reason, message string, t time.Time) {
	if len(message) > maxRefusalMessage {
		message = message[:maxRefusalMessage] + "…"
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.byName[name]
	if !ok {
		if len(l.byName) >= l.max {
			l.evictOldestLocked()
		}
		r = &refusedJoin{Name: name, First: t}
		l.byName[name] = r
	}
	r.Reason, r.Message, r.Last = reason, message, t
	if r.Count < ^uint32(0) {
		r.Count++
	}
}

func (l *refusalLog) evictOldestLocked() {
	var oldest *refusedJoin
	for _, r := range l.byName {
		if oldest == nil || r.Last.Before(oldest.Last) {
			oldest = r
		}
	}
	if oldest != nil {
		delete(l.byName, oldest.Name)
	}
}

// forget drops name's record: a join under it was admitted.
func (l *refusalLog) forget(name string) {
	l.mu.Lock()
	delete(l.byName, name)
	l.mu.Unlock()
}

// list returns copies of the records sorted by name.
func (l *refusalLog) list() []refusedJoin {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]refusedJoin, 0, len(l.byName))
	for _, r := range l.byName {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (l *refusalLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byName)
}
