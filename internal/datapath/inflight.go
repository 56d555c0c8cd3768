package datapath

import (
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultMaxInflight is how many packets the datapath lets wireguard-go hold
// in each direction, between reading them (from the TUN device, or from the
// UDP socket) and writing them out on the other side, when
// Config.MaxInflight is zero.
//
// wireguard-go reads as fast as it can and queues without bound (on Linux
// its buffer pools have no cap), giving every packet its own 64 KiB buffer.
// A sender's TCP keeps growing its window while nothing is lost, so with a
// few streams thousands of packets wait inside the datapath for their
// turn: hundreds of MiB of buffers, which under the memory limit make the
// collector run back to back (and empty the buffer pools each time).
// Bounding the queues moves the backlog back to the kernel (TCP small
// queues for a local sender, the TUN or socket queue for forwarded pod
// traffic), where TCP reacts to it. 1024 packets is about 7 ms of traffic
// at 2 Gbit/s, eight of wireguard-go's 128-packet batches: enough to keep
// the crypto workers busy. docs/benchmarks.md has the measurements.
const DefaultMaxInflight = 1024

// inflightStall is how long a read waits at the bound without any packet
// leaving before it gives up waiting and counts afresh: packets that
// wireguard-go drops after reading them never leave, so the count can only
// over-estimate, and it must never stop the device.
const inflightStall = 20 * time.Millisecond

// inflightIdle is how long a read may block in the kernel (no traffic) for
// the count to restart from zero when it returns: after an idle spell
// whatever was read before has left or been dropped.
const inflightIdle = 100 * time.Millisecond

// inflight counts packets read on one side of the datapath (the TUN device,
// or the UDP socket) and not yet written out on the other, and makes the
// readers wait while there are max of them.
type inflight struct {
	max      int
	resume   int // a waiting reader goes on once no more than this many are in flight
	now      func() time.Time
	mu       sync.Mutex
	n        int
	waiting  bool
	progress bool          // packets left since the waiting reader last looked
	wake     chan struct{} // closed, and replaced, when the count falls to resume while a reader waits
}

func newInflight(limit int) *inflight {
	return &inflight{max: limit, resume: limit - limit/4, now: time.Now, wake: make(chan struct{})}
}

// count returns the packets currently counted in flight.
func (f *inflight) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// wait returns at once while fewer than max packets are in flight. At the
// bound it waits until the count is down to resume (a quarter of the bound
// below it, so the reader wakes once per several batches sent rather than
// once per batch), or until none has left for stall (then the count
// restarts at zero).
func (f *inflight) wait(stall time.Duration) {
	f.mu.Lock()
	if f.n < f.max {
		f.mu.Unlock()
		return
	}
	f.waiting = true
	wake := f.wake
	f.mu.Unlock()
	timer := time.NewTimer(stall)
	defer timer.Stop()
	for {
		select {
		case <-wake:
			return
		case <-timer.C:
		}
		f.mu.Lock()
		if f.progress {
			// Packets left, not yet enough: keep waiting.
			f.progress = false
			wake = f.wake
			f.mu.Unlock()
			timer.Reset(stall)
			continue
		}
		f.n, f.waiting = 0, false
		f.mu.Unlock()
		return
	}
}

// read adds k packets that a read returned after blocking for blocked.
func (f *inflight) read(k int, blocked time.Duration) {
	f.mu.Lock()
	if blocked >= inflightIdle {
		f.n = 0
	}
	f.n += k
	f.mu.Unlock()
}

// left removes k packets written out. Keepalives and handshake messages
// are sent without having been read from the TUN device, so the count
// stops at zero.
func (f *inflight) left(k int) {
	f.mu.Lock()
	f.n = max(0, f.n-k)
	if f.waiting {
		f.progress = true
		if f.n <= f.resume {
			close(f.wake)
			f.wake, f.waiting, f.progress = make(chan struct{}), false, false
		}
	}
	f.mu.Unlock()
}

// boundedTUN is the TUN device as wireguard-go sees it: reads wait while
// the send side is at its bound, and writes release packets of the
// receive side.
type boundedTUN struct {
	tun.Device
	tx, rx *inflight
}

func (t *boundedTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.tx.wait(inflightStall)
	start := t.tx.now()
	n, err := t.Device.Read(bufs, sizes, offset)
	t.tx.read(n, t.tx.now().Sub(start))
	return n, err
}

func (t *boundedTUN) Write(bufs [][]byte, offset int) (int, error) {
	n, err := t.Device.Write(bufs, offset)
	t.rx.left(len(bufs))
	return n, err
}

// boundedBind is the UDP bind as wireguard-go sees it: sends release
// packets of the send side, and receives wait while the receive side is at
// its bound.
type boundedBind struct {
	conn.Bind
	tx, rx *inflight
}

func (b *boundedBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	err := b.Bind.Send(bufs, ep)
	b.tx.left(len(bufs))
	return err
}

func (b *boundedBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	for i, fn := range fns {
		fns[i] = func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
			b.rx.wait(inflightStall)
			start := b.rx.now()
			n, err := fn(packets, sizes, eps)
			b.rx.read(n, b.rx.now().Sub(start))
			return n, err
		}
	}
	return fns, actual, err
}

// bound wraps a TUN device and a bind so that at most limit packets are
// between the TUN and the socket in each direction (read from one, not yet
// written to the other); limit <= 0 returns them unchanged.
//
// What is counted is an upper bound of what wireguard-go holds: packets it
// drops after reading them (no peer for the destination, a failed
// decryption, handshake messages and keepalives, which never reach the
// TUN) stay counted until the count restarts, after inflightStall without
// progress at the bound or after inflightIdle without traffic.
func bound(dev tun.Device, bind conn.Bind, limit int) (tun.Device, conn.Bind) {
	if limit <= 0 {
		return dev, bind
	}
	tx, rx := newInflight(limit), newInflight(limit)
	return &boundedTUN{Device: dev, tx: tx, rx: rx}, &boundedBind{Bind: bind, tx: tx, rx: rx}
}
