// Package connlimit bounds the connections a server holds open: in total
// and per caller (a key the server derives from the connection: its
// source address, its peer credentials). A connection over a cap is closed
// as soon as it is accepted and counted, so a flood consumes neither file
// descriptors nor memory beyond the caps, and the server's accept loop
// never sees it.
//
// The total may also follow the process's file-descriptor limit
// (Config.FDShare): the listener then never holds more than that share of
// RLIMIT_NOFILE, whatever the limit is set to, and leaves the rest to the
// work the process exists for.
package connlimit

import (
	"math"
	"net"
	"sort"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reasons a connection is refused (Stats.Refused keys).
const (
	ReasonPerKey = "per-caller" // the caller holds Config.PerKey connections
	ReasonTotal  = "total"      // the listener holds its total cap
)

// Config bounds a Listener. Zero caps are unlimited.
type Config struct {
	// Key names the caller behind a connection; nil puts every connection
	// under the same key. It runs in the accept loop, on the raw
	// connection, before anything is read from it.
	Key func(net.Conn) string
	// PerKey is the most connections one key may hold open.
	PerKey int
	// Total is the most connections the listener holds open.
	Total int
	// FDShare (0 < FDShare <= 1) lowers Total to this share of the
	// process's RLIMIT_NOFILE soft limit, read at every accept.
	FDShare float64
	// OnRefuse, if set, is called after a refused connection is closed.
	OnRefuse func(key, reason string)
}

// Listener is a net.Listener that enforces Config. Its connections
// implement syscall.Conn when the accepted ones do.
type Listener struct {
	net.Listener
	cfg Config

	mu      sync.Mutex
	perKey  map[string]int
	total   int
	refused map[string]uint64
}

// New wraps l.
func New(l net.Listener, cfg Config) *Listener {
	return &Listener{Listener: l, cfg: cfg, perKey: map[string]int{}, refused: map[string]uint64{}}
}

// Accept returns the next connection within the caps; connections over a
// cap are closed and counted meanwhile. Errors are the wrapped
// listener's.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := ""
		if l.cfg.Key != nil {
			key = l.cfg.Key(c)
		}
		if reason := l.admit(key); reason != "" {
			c.Close()
			if l.cfg.OnRefuse != nil {
				l.cfg.OnRefuse(key, reason)
			}
			continue
		}
		return &conn{Conn: c, l: l, key: key}, nil
	}
}

// admit takes a slot for key, or says which cap refuses it.
func (l *Listener) admit(key string) string {
	total := TotalCap(l.cfg.Total, l.cfg.FDShare, fdLimit())
	l.mu.Lock()
	defer l.mu.Unlock()
	reason := ""
	switch {
	case l.cfg.PerKey > 0 && l.perKey[key] >= l.cfg.PerKey:
		reason = ReasonPerKey
	case total > 0 && l.total >= total:
		reason = ReasonTotal
	}
	if reason != "" {
		l.refused[reason]++
		return reason
	}
	l.perKey[key]++
	l.total++
	return ""
}

func (l *Listener) release(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.total--
	if l.perKey[key]--; l.perKey[key] <= 0 {
		delete(l.perKey, key)
	}
}

// TotalCap is the total cap in force: total, lowered to share of the
// file-descriptor limit fdLimit when share > 0 (at least 1). 0 means
// unlimited; an fdLimit of 0 is unknown and ignored.
func TotalCap(total int, share float64, fdLimit uint64) int {
	if share <= 0 || fdLimit == 0 {
		return total
	}
	byFD := math.Floor(float64(fdLimit) * math.Min(share, 1))
	if byFD < 1 {
		byFD = 1
	}
	if total > 0 && float64(total) <= byFD {
		return total
	}
	if byFD > math.MaxInt32 {
		return total
	}
	return int(byFD)
}

// fdLimit is the process's RLIMIT_NOFILE soft limit (0: unknown).
func fdLimit() uint64 {
	var r unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &r); err != nil || r.Cur == unix.RLIM_INFINITY {
		return 0
	}
	return r.Cur
}

// Stats is a snapshot of a Listener.
type Stats struct {
	Open    int               // connections open
	Keys    int               // distinct keys holding them
	MaxKey  int               // most connections any one key holds
	Refused map[string]uint64 // refusals since New, by reason
	Cap     int               // the total cap in force (0: none)
}

// Stats returns the listener's current counts.
func (l *Listener) Stats() Stats {
	total := TotalCap(l.cfg.Total, l.cfg.FDShare, fdLimit())
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Stats{Open: l.total, Keys: len(l.perKey), Refused: make(map[string]uint64, len(l.refused)), Cap: total}
	for _, n := range l.perKey {
		s.MaxKey = max(s.MaxKey, n)
	}
	for r, n := range l.refused {
		s.Refused[r] = n
	}
	return s
}

// OpenByKey lists the keys holding connections and how many each holds,
// most first (for status pages and tests).
func (l *Listener) OpenByKey() []KeyCount {
	l.mu.Lock()
	out := make([]KeyCount, 0, len(l.perKey))
	for k, n := range l.perKey {
		out = append(out, KeyCount{Key: k, Open: n})
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Open != out[j].Open {
			return out[i].Open > out[j].Open
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// KeyCount is one key's open connections.
type KeyCount struct {
	Key  string
	Open int
}

// conn gives its slot back once, on the first Close.
type conn struct {
	net.Conn
	l    *Listener
	key  string
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// SyscallConn exposes the raw connection (for SO_PEERCRED and the like).
func (c *conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}

// Unwrap returns the accepted connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }
