// Package connpool bounds the connections a server holds that have not yet
// authenticated: a wrapping net.Listener (put it over internal/connlimit's,
// which caps connections per source and in total at accept) that keeps
// unauthenticated connections in a pool of bounded size, where a newcomer
// from a light source displaces the oldest connection of the heaviest
// source (so a flood from many addresses gets an equal share and cannot
// lock out a source that holds few), and closes an unauthenticated
// connection that stays idle too long.
//
// What "authenticated" means is the server's business: it calls
// Authenticated with the connection's addresses once a call on it passed
// its authentication, and Touch when a call starts on it. An authenticated
// connection is never closed for idleness nor evicted here: long-lived
// streams of honest clients (and keepalive for dead peers) are the
// server's to judge.
package connpool

import (
	"container/list"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/confmesh/confmesh/internal/connlimit"
)

// Reasons passed to Config.Refused and Config.Closed.
const (
	// RefusedUnauthenticated: the unauthenticated pool is full and the
	// newcomer's source holds at least as many of it as any other.
	RefusedUnauthenticated = "unauthenticated_full"
	// ClosedIdle: an unauthenticated connection had no call for IdleTimeout.
	ClosedIdle = "idle"
	// ClosedEvicted: an unauthenticated connection made room for a
	// newcomer from a source holding fewer.
	ClosedEvicted = "evicted"
)

// Config sets the limits; a zero limit is no limit.
type Config struct {
	// MaxUnauthenticated bounds the connections not yet authenticated. A
	// source is an IPv4 address or an IPv6 /64 (connlimit.Source).
	MaxUnauthenticated int
	// IdleTimeout closes an unauthenticated connection on which no call
	// started for this long (since accept or the last Touch).
	IdleTimeout time.Duration
	// Refused and Closed, when set, are told every refusal and every
	// connection this package closes, with the reason (for metrics). They
	// run with no lock held.
	Refused func(reason string)
	Closed  func(reason string)
}

// Validate reports a negative limit.
func (c Config) Validate() error {
	if c.MaxUnauthenticated < 0 || c.IdleTimeout < 0 {
		return fmt.Errorf("unauthenticated connection pool: size %d, idle timeout %s: want values of at least 0 (0: no limit)",
			c.MaxUnauthenticated, c.IdleTimeout)
	}
	return nil
}

// Listener is a net.Listener enforcing Config.
type Listener struct {
	net.Listener
	cfg Config
	now func() time.Time

	mu      sync.Mutex
	total   int
	unauth  map[string]*list.List // unauthenticated connections by source, oldest first
	nUnauth int
	byAddr  map[connKey]*Conn
}

type connKey struct{ remote, local string }

// New wraps lis.
func New(lis net.Listener, cfg Config) (*Listener, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Listener{
		Listener: lis, cfg: cfg, now: time.Now,
		unauth: map[string]*list.List{}, byAddr: map[connKey]*Conn{},
	}, nil
}

// Accept returns the next connection the pool has room for. Others are
// closed at once (the client sees the connection closed before any byte)
// and reported to Config.Refused.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c, evicted, reason := l.admit(raw)
		if evicted != nil {
			evicted.close(ClosedEvicted)
		}
		if c == nil {
			raw.Close()
			if l.cfg.Refused != nil {
				l.cfg.Refused(reason)
			}
			continue
		}
		return c, nil
	}
}

// admit registers raw or says why not; it may pick an unauthenticated
// connection to evict (the caller closes it, outside the lock).
func (l *Listener) admit(raw net.Conn) (c *Conn, evicted *Conn, reason string) {
	src := connlimit.Source(raw.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.MaxUnauthenticated > 0 && l.nUnauth >= l.cfg.MaxUnauthenticated {
		heavy, n := l.heaviestLocked()
		mine := 0
		if q := l.unauth[src]; q != nil {
			mine = q.Len()
		}
		if mine+1 >= n {
			// Taking one of heavy's would leave heavy no lighter than
			// this source: the newcomer is the flood.
			return nil, nil, RefusedUnauthenticated
		}
		evicted = l.unauth[heavy].Front().Value.(*Conn)
		l.forgetLocked(evicted) // its slot is the newcomer's now
	}
	c = &Conn{Conn: raw, l: l, src: src, key: connKey{raw.RemoteAddr().String(), raw.LocalAddr().String()}, last: l.now()}
	l.total++
	q := l.unauth[src]
	if q == nil {
		q = list.New()
		l.unauth[src] = q
	}
	c.elem = q.PushBack(c)
	l.nUnauth++
	l.byAddr[c.key] = c
	if l.cfg.IdleTimeout > 0 {
		c.timer = time.AfterFunc(l.cfg.IdleTimeout, c.idleCheck)
	}
	return c, evicted, ""
}

// heaviestLocked is the source holding the most unauthenticated
// connections (the one with the oldest connection among equals, so a
// tie does not always fall on the same source).
func (l *Listener) heaviestLocked() (string, int) {
	var best string
	n := 0
	var oldest time.Time
	for src, q := range l.unauth {
		front := q.Front().Value.(*Conn)
		if q.Len() > n || (q.Len() == n && front.last.Before(oldest)) {
			best, n, oldest = src, q.Len(), front.last
		}
	}
	return best, n
}

// forgetLocked removes c from every table (idempotent).
func (l *Listener) forgetLocked(c *Conn) {
	if c.gone {
		return
	}
	c.gone = true
	l.total--
	l.leavePoolLocked(c)
	if l.byAddr[c.key] == c {
		delete(l.byAddr, c.key)
	}
	if c.timer != nil {
		c.timer.Stop()
	}
}

// leavePoolLocked takes c out of the unauthenticated pool, if it is in it.
func (l *Listener) leavePoolLocked(c *Conn) {
	if c.elem == nil {
		return
	}
	q := l.unauth[c.src]
	q.Remove(c.elem)
	c.elem = nil
	l.nUnauth--
	if q.Len() == 0 {
		delete(l.unauth, c.src)
	}
}

// lookup finds the open connection with these addresses.
func (l *Listener) lookupLocked(remote, local net.Addr) *Conn {
	if remote == nil || local == nil {
		return nil
	}
	return l.byAddr[connKey{remote.String(), local.String()}]
}

// Touch records that a call started on the connection with these
// addresses (the remote and local address as the server sees them),
// restarting its idle clock.
func (l *Listener) Touch(remote, local net.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.lookupLocked(remote, local); c != nil {
		c.last = l.now()
	}
}

// Authenticated moves the connection with these addresses out of the
// unauthenticated pool: it is no longer closed for idleness nor evicted. It
// reports whether such a connection is open.
func (l *Listener) Authenticated(remote, local net.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.lookupLocked(remote, local)
	if c == nil {
		return false
	}
	if c.elem != nil {
		l.leavePoolLocked(c)
		if c.timer != nil {
			c.timer.Stop()
		}
	}
	return true
}

// Stats are the connections held: all that passed through the pool and
// are open, those still unauthenticated, and the sources of those.
type Stats struct {
	Total, Unauthenticated, Sources int
}

// Stats returns the connections held now.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{Total: l.total, Unauthenticated: l.nUnauth, Sources: len(l.unauth)}
}

// Conn is an accepted connection; closing it frees its place.
type Conn struct {
	net.Conn
	l    *Listener
	src  string
	key  connKey
	once sync.Once

	// guarded by l.mu
	last  time.Time     // accept or last Touch
	elem  *list.Element // in l.unauth[src] while unauthenticated
	timer *time.Timer
	gone  bool
}

// Close closes the connection and frees its place in the limits.
func (c *Conn) Close() error {
	c.l.mu.Lock()
	c.l.forgetLocked(c)
	c.l.mu.Unlock()
	var err error
	c.once.Do(func() { err = c.Conn.Close() })
	return err
}

// close is Close on the listener's initiative, reported to Config.Closed
// unless the connection was closed already (an evicted one is forgotten
// by admit before it is closed here).
func (c *Conn) close(reason string) {
	c.l.mu.Lock()
	was := c.gone
	c.l.forgetLocked(c)
	c.l.mu.Unlock()
	if was && reason != ClosedEvicted {
		return
	}
	c.once.Do(func() { _ = c.Conn.Close() })
	if c.l.cfg.Closed != nil {
		c.l.cfg.Closed(reason)
	}
}

// idleCheck runs when the idle timer fires: it closes the connection if it
// is still unauthenticated and no call started within IdleTimeout, else
// waits for the rest.
func (c *Conn) idleCheck() {
	l := c.l
	l.mu.Lock()
	if c.gone || c.elem == nil {
		l.mu.Unlock()
		return
	}
	if rest := l.cfg.IdleTimeout - l.now().Sub(c.last); rest > 0 {
		c.timer.Reset(rest)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	c.close(ClosedIdle)
}
