package datapath

import (
	"os"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// fakeTUN returns batch packets per Read and tells reads on reads.
type fakeTUN struct {
	batch int
	reads chan int
}

func (d *fakeTUN) File() *os.File { return nil }
func (d *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for i := range d.batch {
		sizes[i] = 100
	}
	d.reads <- d.batch
	return d.batch, nil
}
func (d *fakeTUN) Write(bufs [][]byte, offset int) (int, error) { return len(bufs), nil }
func (d *fakeTUN) MTU() (int, error)                            { return 1420, nil }
func (d *fakeTUN) Name() (string, error)                        { return "fake0", nil }
func (d *fakeTUN) Events() <-chan tun.Event                     { return nil }
func (d *fakeTUN) Close() error                                 { return nil }
func (d *fakeTUN) BatchSize() int                               { return 128 }

// fakeBind's one receive function returns batch packets per call and tells
// calls on receives.
type fakeBind struct {
	batch    int
	receives chan int
	sent     int
}

func (b *fakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fn := func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		b.receives <- b.batch
		return b.batch, nil
	}
	return []conn.ReceiveFunc{fn}, port, nil
}
func (b *fakeBind) Close() error                                  { return nil }
func (b *fakeBind) SetMark(uint32) error                          { return nil }
func (b *fakeBind) Send(bufs [][]byte, ep conn.Endpoint) error    { b.sent += len(bufs); return nil }
func (b *fakeBind) ParseEndpoint(s string) (conn.Endpoint, error) { return nil, nil }
func (b *fakeBind) BatchSize() int                                { return 128 }

func bufs(n int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, 200)
	}
	return b
}

func (f *inflight) isWaiting() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waiting
}

func TestBoundedTUNReadWaitsForSends(t *testing.T) {
	dev := &fakeTUN{batch: 8, reads: make(chan int, 10)}
	fb := &fakeBind{}
	btun, bbind := bound(dev, fb, 8)
	bt := btun.(*boundedTUN)
	if _, err := btun.Read(bufs(8), make([]int, 8), 0); err != nil {
		t.Fatal(err)
	}
	<-dev.reads
	if got := bt.tx.count(); got != 8 {
		t.Fatalf("in flight after reading 8: %d", got)
	}

	done := make(chan error, 1)
	go func() {
		_, err := btun.Read(bufs(8), make([]int, 8), 0)
		done <- err
	}()
	waitFor(t, "the second read waits at the bound", bt.tx.isWaiting)

	// One packet out: 7 in flight, above the resume mark (6): still waiting.
	if err := bbind.Send(bufs(1), nil); err != nil {
		t.Fatal(err)
	}
	if !bt.tx.isWaiting() {
		t.Fatal("the reader was released with 7 of 8 still in flight")
	}
	select {
	case n := <-dev.reads:
		t.Fatalf("the device was read (%d packets) while at the bound", n)
	default:
	}

	// Two more out: 5 in flight, at or below the resume mark: released.
	if err := bbind.Send(bufs(2), nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-dev.reads:
	case <-time.After(5 * time.Second):
		t.Fatal("the reader stayed blocked after the count fell to the resume mark")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := bt.tx.count(); got != 5+8 {
		t.Errorf("in flight: %d, want 13", got)
	}
	if fb.sent != 3 {
		t.Errorf("the bind sent %d packets, want 3", fb.sent)
	}
}

func TestBoundedBindReceiveWaitsForTUNWrites(t *testing.T) {
	dev := &fakeTUN{batch: 1, reads: make(chan int, 10)}
	fb := &fakeBind{batch: 4, receives: make(chan int, 10)}
	btun, bbind := bound(dev, fb, 4)
	rx := btun.(*boundedTUN).rx
	fns, _, err := bbind.Open(51820)
	if err != nil || len(fns) != 1 {
		t.Fatalf("open: %d functions, %v", len(fns), err)
	}
	recv := func() (int, error) { return fns[0](bufs(4), make([]int, 4), make([]conn.Endpoint, 4)) }
	if n, err := recv(); n != 4 || err != nil {
		t.Fatalf("first receive: %d, %v", n, err)
	}
	<-fb.receives

	done := make(chan error, 1)
	go func() {
		_, err := recv()
		done <- err
	}()
	waitFor(t, "the second receive waits at the bound", rx.isWaiting)
	select {
	case <-fb.receives:
		t.Fatal("the socket was read while at the bound")
	default:
	}
	// Decrypted packets written to the TUN release the receive side.
	if _, err := btun.Write(bufs(2), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-fb.receives:
	case <-time.After(5 * time.Second):
		t.Fatal("the receive stayed blocked after packets were written to the TUN")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := rx.count(); got != 2+4 {
		t.Errorf("in flight: %d, want 6", got)
	}
}

func TestInflightStallRestartsCount(t *testing.T) {
	f := newInflight(4)
	f.read(4, 0)
	start := time.Now()
	f.wait(time.Millisecond) // nothing leaves: gives up after the stall
	if got := f.count(); got != 0 {
		t.Errorf("count after a stall: %d, want 0", got)
	}
	if f.isWaiting() {
		t.Error("still marked waiting after the stall")
	}
	if el := time.Since(start); el < time.Millisecond {
		t.Errorf("returned after %s, before the stall", el)
	}
}

func TestInflightIdleRestartsCount(t *testing.T) {
	f := newInflight(100)
	f.read(60, 0)
	f.read(10, inflightIdle-time.Millisecond)
	if got := f.count(); got != 70 {
		t.Errorf("count: %d, want 70", got)
	}
	f.read(10, inflightIdle)
	if got := f.count(); got != 10 {
		t.Errorf("count after an idle read: %d, want 10 (the packets of that read)", got)
	}
}

func TestInflightLeftStopsAtZero(t *testing.T) {
	f := newInflight(10)
	f.read(2, 0)
	f.left(5) // keepalives and handshakes are sent without being read
	if got := f.count(); got != 0 {
		t.Errorf("count: %d, want 0", got)
	}
	f.read(3, 0)
	if got := f.count(); got != 3 {
		t.Errorf("count: %d, want 3", got)
	}
}

func TestBoundOffReturnsDevicesUnchanged(t *testing.T) {
	dev, b := &fakeTUN{}, &fakeBind{}
	for _, limit := range []int{0, -1} {
		d2, b2 := bound(dev, b, limit)
		if d2 != tun.Device(dev) || b2 != conn.Bind(b) {
			t.Errorf("limit %d: wrapped", limit)
		}
	}
	d2, b2 := bound(dev, b, 3)
	if _, ok := d2.(*boundedTUN); !ok {
		t.Errorf("limit 3: TUN %T not bounded", d2)
	}
	if _, ok := b2.(*boundedBind); !ok {
		t.Errorf("limit 3: bind %T not bounded", b2)
	}
}

func TestMaxInflightDefault(t *testing.T) {
	c, err := Config{Iface: "cm0"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxInflight != DefaultMaxInflight {
		t.Errorf("MaxInflight %d, want %d", c.MaxInflight, DefaultMaxInflight)
	}
	c, err = Config{Iface: "cm0", MaxInflight: -1}.withDefaults()
	if err != nil || c.MaxInflight != -1 {
		t.Errorf("MaxInflight -1 became %d (%v)", c.MaxInflight, err)
	}
}
