package controlplane_test

// Attack: a stranger opens many TLS connections to the control plane from
// many source addresses, completes the TLS and HTTP/2 handshakes, sends no
// client certificate and no RPC, and holds them (reopening any the server
// closes). Before connection limits the control plane kept every one
// (8,000 raised its RSS from 60 MB to 390 MB; 20,000 reached its file
// limit and honest agents could not connect). Meanwhile honest nodes must
// join, renew and watch, and the control plane must stay within its memory
// limit.
//
// The flood runs in a child process (this test binary, re-executed), so the
// RSS measured here is the control plane's (and the few honest agents'),
// not the attacker's. The CI size is 3,000 connections from 100 loopback
// addresses against small limits; CONFMESH_CONNFLOOD_FULL=1 (make bench)
// runs 20,000 connections from 1,000 addresses against the default limits.

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

const (
	floodChildEnv = "CONFMESH_TEST_CONNFLOOD_CHILD" // "addr,conns,sources,hold"
	floodFullEnv  = "CONFMESH_CONNFLOOD_FULL"
	// memoryLimit is the control plane's limit in manifests/base.
	memoryLimit = 512 << 20
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(floodChildEnv); spec != "" {
		os.Exit(floodChild(spec))
	}
	os.Exit(m.Run())
}

// floodReport is what the flooding child prints when it is done.
type floodReport struct {
	Attempts    int64 // dials, including redials
	Established int64 // TLS and HTTP/2 preface completed
	Refused     int64 // dial or TLS handshake failed
	Closed      int64 // established, then closed by the server
	MaxOpen     int64 // most established connections open at once
	// LongLived counts connections the server left open for longer than
	// the lifetime given to the child (closed by it or still open at the
	// end); MaxLifetime is the longest.
	LongLived   int64
	MaxLifetime time.Duration
}

// raiseNoFile lifts RLIMIT_NOFILE to at least n (we run as root).
func raiseNoFile(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return nil
	}
	if lim.Max < n {
		lim.Max = n
	}
	lim.Cur = n
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// h2Preface is an HTTP/2 client's connection preface and an empty SETTINGS
// frame: after it the server's HTTP/2 transport is up and waits for streams.
var h2Preface = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)

// floodChild holds conns idle connections to addr from sources loopback
// addresses (127.1.x.y) for hold, redialing each one the server closes or
// refuses, and prints a floodReport. It prints "ready" once every slot has
// made its first attempt. maxLife is the lifetime beyond which a
// connection counts as long-lived.
func floodChild(spec string) int {
	var addr string
	var conns, sources int
	var hold, maxLife time.Duration
	f := strings.Split(spec, ",")
	if len(f) != 5 {
		fmt.Fprintln(os.Stderr, "bad flood spec", spec)
		return 2
	}
	addr = f[0]
	conns, _ = strconv.Atoi(f[1])
	sources, _ = strconv.Atoi(f[2])
	hold, _ = time.ParseDuration(f[3])
	maxLife, _ = time.ParseDuration(f[4])
	if err := raiseNoFile(uint64(conns) + 4096); err != nil {
		fmt.Fprintln(os.Stderr, "raise RLIMIT_NOFILE:", err)
		return 1
	}
	var rep floodReport
	var open, maxLifeNs atomic.Int64
	var attempts, established, refused, closed, longLived atomic.Int64
	end := time.Now().Add(hold)
	sem := make(chan struct{}, 64) // handshakes in flight
	var first, all sync.WaitGroup
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"h2"}}
	dial := func(src net.IP) (net.Conn, error) {
		sem <- struct{}{}
		defer func() { <-sem }()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
		raw, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, tlsCfg)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, err
		}
		if _, err := tc.Write(h2Preface); err != nil {
			raw.Close()
			return nil, err
		}
		return tc, nil
	}
	for i := 0; i < conns; i++ {
		s := i % sources
		src := net.IPv4(127, 1, byte(s>>8), byte(s&0xff)+1)
		first.Add(1)
		all.Add(1)
		go func() {
			defer all.Done()
			once := sync.OnceFunc(first.Done)
			defer once()
			for time.Now().Before(end) {
				attempts.Add(1)
				c, err := dial(src)
				once()
				if err != nil {
					refused.Add(1)
					time.Sleep(time.Until(minTime(end, time.Now().Add(5*time.Second))))
					continue
				}
				t0 := time.Now()
				established.Add(1)
				if o := open.Add(1); o > 0 {
					for m := rep.MaxOpen; ; m = atomic.LoadInt64(&rep.MaxOpen) {
						if o <= m || atomic.CompareAndSwapInt64(&rep.MaxOpen, m, o) {
							break
						}
					}
				}
				// Read (and drop) whatever the server sends, until it
				// closes the connection or the flood ends.
				c.SetReadDeadline(end)
				_, err = io.Copy(io.Discard, c)
				open.Add(-1)
				life := time.Since(t0)
				if life > maxLife {
					longLived.Add(1)
				}
				for m := maxLifeNs.Load(); int64(life) > m && !maxLifeNs.CompareAndSwap(m, int64(life)); m = maxLifeNs.Load() {
				}
				c.Close()
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break // the flood is over
				}
				closed.Add(1)
				time.Sleep(time.Until(minTime(end, time.Now().Add(time.Second))))
			}
		}()
	}
	first.Wait()
	fmt.Println("ready")
	all.Wait()
	rep.Attempts, rep.Established, rep.Refused, rep.Closed = attempts.Load(), established.Load(), refused.Load(), closed.Load()
	rep.LongLived, rep.MaxLifetime = longLived.Load(), time.Duration(maxLifeNs.Load())
	out, _ := json.Marshal(rep)
	fmt.Println(string(out))
	return 0
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// rss is this process's resident set size in bytes.
func rss(t testing.TB) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func TestIdleConnectionFloodHonestNodesProceed(t *testing.T) {
	full := os.Getenv(floodFullEnv) != ""
	conns, sources, hold := 3000, 100, 15*time.Second
	if full {
		conns, sources, hold = 20000, 1000, 75*time.Second
	}
	lim := floodLimits(full)
	if err := raiseNoFile(uint64(conns) + 4096); err != nil {
		t.Fatal(err)
	}
	c := cptest.Start(t, cptest.Options{Tune: lim.tune})

	// An honest node watching since before the flood, and one that renews.
	watcherNode := cptest.NewAgent(t, "watcher", cptest.SimNode(t, sim.NodeConfig{}), nil)
	watcherNode.Join(t, c)
	w := watch(t, watcherNode.MTLS(t, c), 0)
	w.waitFor(t, "the watcher's snapshot", func(evs []*cpv1.WatchEvent, err error) bool { return len(evs) > 0 })
	renewer := cptest.NewAgent(t, "renewer", cptest.SimNode(t, sim.NodeConfig{}), nil)
	renewer.Join(t, c)
	base := rss(t)

	// The flood, in a child process.
	lifetime := lim.idle + 5*time.Second // the longest an idle flood connection may live
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d,%s,%s", floodChildEnv, c.Addr, conns, sources, hold, lifetime))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()

	// Sample this process's RSS until the flood ends.
	var peak atomic.Int64
	peak.Store(base)
	sampling, stopSampling := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampling)
		for {
			if r := rss(t); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()

	select {
	case l := <-lines:
		if l != "ready" {
			t.Fatalf("flood child: %q", l)
		}
	case <-time.After(hold):
		t.Fatalf("the flood child did not make its %d connections within %s", conns, hold)
	}
	t.Logf("flood of %d connections from %d addresses opened in %s", conns, sources, time.Since(t0).Round(time.Millisecond))

	// Honest work during the flood: new nodes join (the watcher must see
	// each), the renewer renews, the watcher reconnects.
	lat := latencies{}
	timed := func(kind string, op func() error) {
		t1 := time.Now()
		if err := op(); err != nil {
			t.Errorf("honest %s failed under the flood after %s: %v", kind, time.Since(t1).Round(time.Millisecond), err)
			return
		}
		lat[kind] = append(lat[kind], time.Since(t1))
	}
	for i := 0; time.Since(t0) < hold-2*time.Second || i < 3; i++ {
		a := cptest.NewAgent(t, fmt.Sprintf("honest-%d", i), cptest.SimNode(t, sim.NodeConfig{}), nil)
		timed("join", func() error { _, err := a.TryJoin(t, c); return err })
		timed("renew", func() error {
			conn, err := renewer.Dial(t, c)
			if err != nil {
				return err
			}
			defer conn.Close()
			key := make([]byte, 32)
			rand.Read(key)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := conn.Renew(ctx, renewer.NodeSpec(), key)
			if err != nil {
				return err
			}
			renewer.WGKey, renewer.SVID = key, resp.Svid
			return nil
		})
		timed("reconnect", func() error {
			conn, err := watcherNode.Dial(t, c)
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			stream, err := conn.Client.Watch(ctx, &cpv1.WatchRequest{})
			if err != nil {
				return err
			}
			_, err = stream.Recv()
			return err
		})
		if a.Joined != nil {
			name := a.Name
			w.waitFor(t, "the watcher to see "+name, func(evs []*cpv1.WatchEvent, err error) bool { return peers(evs)[name] != nil || err != nil })
		}
		time.Sleep(time.Second)
	}
	lat.report(t, "under flood")

	var rep floodReport
	select {
	case l, ok := <-lines:
		if !ok || json.Unmarshal([]byte(l), &rep) != nil {
			t.Fatalf("flood child ended without a report (%q)", l)
		}
	case <-time.After(hold + time.Minute):
		t.Fatal("the flood child did not end")
	}
	close(stopSampling)
	<-sampling
	t.Logf("flood: %+v", rep)
	t.Logf("RSS: %d MiB before the flood, peak %d MiB during it (limit %d MiB)", base>>20, peak.Load()>>20, memoryLimit>>20)
	lim.report(t, c)

	// The watch opened before the flood is still open: the idle timeout
	// leaves authenticated streams alone.
	w.mu.Lock()
	werr := w.err
	w.mu.Unlock()
	if werr != nil {
		t.Errorf("the honest watch ended during the flood: %v", werr)
	}
	if rep.Established == 0 {
		t.Fatal("the flood established no connection: it tested nothing")
	}
	if rep.MaxOpen > int64(lim.unauth) {
		t.Errorf("the control plane held %d idle unauthenticated connections at once; want at most %d", rep.MaxOpen, lim.unauth)
	}
	if rep.LongLived > 0 {
		t.Errorf("%d idle connections without an RPC stayed open longer than %s (longest %s); want them closed after %s idle",
			rep.LongLived, lifetime, rep.MaxLifetime.Round(time.Millisecond), lim.idle)
	}
	if p := peak.Load(); p > memoryLimit || p-base > lim.memBudget {
		t.Errorf("RSS rose from %d MiB to %d MiB under the flood; want at most %d MiB more and under %d MiB",
			base>>20, p>>20, lim.memBudget>>20, memoryLimit>>20)
	}
}
