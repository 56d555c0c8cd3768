//go:build linux

package throughput

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/confmesh/confmesh/netlab"
)

// Path is one way through the lab: TCP from network namespace From to
// address To, which lives in namespace ToNS. PIDs are the tunnel processes
// on the way (none for plaintext), whose CPU time is charged to it.
type Path struct {
	Variant string
	From    string
	ToNS    string
	To      netip.Addr
	PIDs    []int
}

// Load is what one bounded load moved.
type Load struct {
	Bytes   int64
	Elapsed time.Duration
	CPU     float64 // CPU seconds of the path's tunnel processes meanwhile
}

// Gbps is the load's throughput.
func (l Load) Gbps() float64 { return Gbps(l.Bytes, l.Elapsed) }

// Generator drives TCP load over a path for a bounded time.
type Generator interface {
	// Streams runs streams parallel TCP connections for d and reports the
	// bytes received.
	Streams(ctx context.Context, p Path, port, streams int, d time.Duration) (Load, error)
	// Name says which generator it is.
	Name() string
}

const (
	dialTimeout = 5 * time.Second
	// warmup is left out of a built-in load's measurement (TCP slow start).
	warmup   = 250 * time.Millisecond
	writeBuf = 128 << 10
	readBuf  = 256 << 10
)

// GoGenerator is the built-in load generator: streams connections from
// the sending namespace, each writing as fast as it can, read and
// discarded in the receiving one; throughput is counted at the receiver
// over d after a short warm-up.
type GoGenerator struct{}

// Name implements Generator.
func (GoGenerator) Name() string { return "built-in (Go, one process both ends)" }

// Streams implements Generator.
func (GoGenerator) Streams(ctx context.Context, p Path, port, streams int, d time.Duration) (Load, error) {
	if streams < 1 || d <= 0 {
		return Load{}, fmt.Errorf("streams %d, duration %s: both must be positive", streams, d)
	}
	addr := net.JoinHostPort(p.To.String(), strconv.Itoa(port))
	var ln net.Listener
	if err := netlab.InNS(p.ToNS, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		return Load{}, fmt.Errorf("%s: listen on %s: %w", p.Variant, addr, err)
	}
	defer ln.Close()
	var (
		received atomic.Int64
		mu       sync.Mutex
		conns    []net.Conn
		wg       sync.WaitGroup
	)
	closeAll := func() {
		ln.Close() // ends the accept loop
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}
	defer wg.Wait()
	defer closeAll()
	accepted := make(chan struct{}, streams)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			accepted <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, readBuf)
				for {
					n, err := c.Read(buf)
					received.Add(int64(n))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	var dialer net.Dialer
	dialer.Timeout = dialTimeout
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	defer halt()
	for range streams {
		var c net.Conn
		err := netlab.InNS(p.From, func() (err error) { c, err = dialer.DialContext(ctx, "tcp4", addr); return err })
		if err != nil {
			return Load{}, fmt.Errorf("%s: connect to %s: %w", p.Variant, addr, err)
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, writeBuf)
			// Bounded even if nobody closes the connection.
			_ = c.SetWriteDeadline(time.Now().Add(warmup + d + 10*time.Second))
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
	for range streams {
		select {
		case <-accepted:
		case <-time.After(dialTimeout):
			return Load{}, fmt.Errorf("%s: %s accepted fewer than %d connections", p.Variant, addr, streams)
		case <-ctx.Done():
			return Load{}, context.Cause(ctx)
		}
	}
	if err := sleepCtx(ctx, warmup); err != nil {
		return Load{}, err
	}
	cpu0, err := CPUSum(p.PIDs)
	if err != nil {
		return Load{}, fmt.Errorf("%s: tunnel process CPU: %w", p.Variant, err)
	}
	b0, t0 := received.Load(), time.Now()
	if err := sleepCtx(ctx, d); err != nil {
		return Load{}, err
	}
	b1, t1 := received.Load(), time.Now()
	cpu1, err := CPUSum(p.PIDs)
	if err != nil {
		return Load{}, fmt.Errorf("%s: tunnel process CPU: %w", p.Variant, err)
	}
	halt()
	return Load{Bytes: b1 - b0, Elapsed: t1.Sub(t0), CPU: cpu1 - cpu0}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// rrSize is the request and the response size of a round trip.
const rrSize = 64

// RoundTrips measures TCP request/response latency on one connection
// (TCP_NODELAY, rrSize bytes each way) for at most d or max round trips,
// and returns every round trip's time.
func RoundTrips(ctx context.Context, p Path, port int, d time.Duration, maxTrips int) ([]time.Duration, error) {
	addr := net.JoinHostPort(p.To.String(), strconv.Itoa(port))
	var ln net.Listener
	if err := netlab.InNS(p.ToNS, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		return nil, fmt.Errorf("%s: listen on %s: %w", p.Variant, addr, err)
	}
	defer ln.Close()
	deadline := time.Now().Add(d + dialTimeout + 5*time.Second)
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(deadline)
		buf := make([]byte, rrSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				served <- err
				return
			}
			if _, err := c.Write(buf); err != nil {
				served <- err
				return
			}
		}
	}()
	var c net.Conn
	dialer := net.Dialer{Timeout: dialTimeout}
	if err := netlab.InNS(p.From, func() (err error) { c, err = dialer.DialContext(ctx, "tcp4", addr); return err }); err != nil {
		return nil, fmt.Errorf("%s: connect to %s: %w", p.Variant, addr, err)
	}
	_ = c.SetDeadline(deadline)
	buf := make([]byte, rrSize)
	trips := make([]time.Duration, 0, min(maxTrips, 1<<16))
	end := time.Now().Add(d)
	for len(trips) < maxTrips && time.Now().Before(end) && ctx.Err() == nil {
		t0 := time.Now()
		if _, err := c.Write(buf); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: round trip: %w", p.Variant, err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: round trip: %w", p.Variant, err)
		}
		trips = append(trips, time.Since(t0))
	}
	c.Close()
	if err := <-served; err != nil {
		return nil, fmt.Errorf("%s: echo server: %w", p.Variant, err)
	}
	if len(trips) == 0 {
		return nil, fmt.Errorf("%s: no round trip completed", p.Variant)
	}
	return trips, ctx.Err()
}
