package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// TestChallengesStateless: issuing stores nothing; a challenge is refused
// when forged, tampered with, expired or used; only a use is remembered,
// and only until the challenge expires.
func TestChallengesStateless(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	c, err := newChallenges(60*time.Second, 3)
	if err != nil {
		t.Fatal(err)
	}
	var issued [][]byte
	for i := 0; i < 1000; i++ {
		ch, err := c.issue(now)
		if err != nil {
			t.Fatal(err)
		}
		issued = append(issued, ch)
	}
	if n := c.remembered(); n != 0 {
		t.Fatalf("issuing 1000 challenges stored %d entries", n)
	}
	ch := issued[0]
	if got, _ := attest.ChallengeTime(ch); !got.Equal(now) {
		t.Fatalf("challenge time %s, want %s (DESIGN: 8 bytes big-endian Unix time first)", got, now)
	}
	if err := c.check(ch, now.Add(59*time.Second)); err != nil {
		t.Fatalf("fresh challenge: %v", err)
	}
	other, _ := newChallenges(60*time.Second, 3)
	foreign, _ := other.issue(now)
	tampered := append([]byte(nil), ch...)
	tampered[9] ^= 1
	backdated := append([]byte(nil), ch...)
	backdated[7]--
	random, _ := attest.NewChallenge(now)
	for name, tc := range map[string]struct {
		ch   []byte
		at   time.Time
		want error
	}{
		"another process's": {foreign, now, errChallengeForged},
		"tampered random":   {tampered, now, errChallengeForged},
		"tampered time":     {backdated, now, errChallengeForged},
		"never issued":      {random, now, errChallengeForged},
		"short":             {ch[:31], now, errChallengeMalformed},
		"expired":           {ch, now.Add(60 * time.Second), errChallengeExpired},
		"from the future":   {ch, now.Add(-2 * time.Second), errChallengeExpired},
	} {
		if err := c.check(tc.ch, tc.at); !errors.Is(err, tc.want) {
			t.Errorf("%s: check = %v, want %v", name, err, tc.want)
		}
	}
	if err := c.consume(ch, now); err != nil {
		t.Fatal(err)
	}
	if err := c.check(ch, now); !errors.Is(err, errChallengeReplayed) {
		t.Fatalf("used challenge: check = %v", err)
	}
	if err := c.consume(ch, now); !errors.Is(err, errChallengeReplayed) {
		t.Fatalf("used challenge: consume = %v", err)
	}
	// The bound: max remembered, then refusal; expiry frees room.
	c.consume(issued[1], now)
	c.consume(issued[2], now)
	if err := c.consume(issued[3], now); !errors.Is(err, errChallengesFull) {
		t.Fatalf("over max: consume = %v", err)
	}
	later := now.Add(62 * time.Second)
	fresh, _ := c.issue(later)
	if err := c.consume(fresh, later); err != nil {
		t.Fatalf("after the remembered ones expired: %v", err)
	}
	if n := c.remembered(); n != 1 {
		t.Fatalf("%d remembered after expiry, want 1", n)
	}
}

// TestSourceLimiterBounded: a source gets its burst then its rate; the
// map never exceeds max; beyond it new sources share one overflow bucket,
// and idle (refilled) buckets make room.
func TestSourceLimiterBounded(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	l := newSourceLimiter(10, 5, 3, clock)
	for i := 0; i < 5; i++ {
		if !l.allow("ip:a") {
			t.Fatalf("call %d within the burst refused", i)
		}
	}
	if l.allow("ip:a") {
		t.Fatal("call over the burst allowed")
	}
	now = now.Add(100 * time.Millisecond)
	if !l.allow("ip:a") || l.allow("ip:a") {
		t.Fatal("want exactly one token after 100 ms at 10/s")
	}
	l.allow("ip:b")
	l.allow("ip:c")
	allowed := 0
	for i := 0; i < 1000; i++ {
		if l.allow("ip:many-" + string(rune('A'+i%50))) {
			allowed++
		}
	}
	if n := l.sources(); n != 3 {
		t.Fatalf("%d buckets, max 3", n)
	}
	if allowed != 5 {
		t.Fatalf("sources beyond the map got %d calls, want the overflow bucket's burst of 5", allowed)
	}
	// b and c refill after 0.5 s idle and are dropped for newcomers.
	now = now.Add(time.Second)
	if !l.allow("ip:new") {
		t.Fatal("a new source was refused once idle buckets could be dropped")
	}
	if n := l.sources(); n > 3 {
		t.Fatalf("%d buckets, max 3", n)
	}
}

// TestSelfEvidencePerEpoch: however many concurrent callers, the TEE is
// asked once per epoch; a failure is remembered for a second.
func TestSelfEvidencePerEpoch(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var produced atomic.Int64
	var fail atomic.Bool
	release := make(chan struct{})
	e := &selfEvidence{epoch: 30 * time.Second, now: clock, counted: func(error) {},
		produce: func(ch []byte, _ time.Time) (*attestv1.Evidence, error) {
			produced.Add(1)
			<-release
			if fail.Load() {
				return nil, errors.New("TEE busy")
			}
			return &attestv1.Evidence{Binding: &attestv1.Binding{Challenge: ch}}, nil
		}}
	var wg sync.WaitGroup
	evs := make([]*attestv1.Evidence, 200)
	for i := range evs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ev, err := e.get(context.Background())
			if err != nil {
				t.Error(err)
			}
			evs[i] = ev
		}(i)
	}
	time.Sleep(50 * time.Millisecond) // let the callers pile up on the generation in flight
	close(release)
	wg.Wait()
	if n := produced.Load(); n != 1 {
		t.Fatalf("200 concurrent callers made %d reports, want 1", n)
	}
	for _, ev := range evs {
		if ev != evs[0] {
			t.Fatal("callers in one epoch got different evidence")
		}
	}
	advance(29 * time.Second)
	e.get(context.Background())
	if n := produced.Load(); n != 1 {
		t.Fatalf("within the epoch: %d reports", n)
	}
	advance(2 * time.Second)
	ev, _ := e.get(context.Background())
	if n := produced.Load(); n != 2 || ev == evs[0] {
		t.Fatalf("after the epoch: %d reports, new evidence %v", n, ev != evs[0])
	}
	// A failing TEE is asked at most once a second.
	advance(31 * time.Second)
	fail.Store(true)
	for i := 0; i < 50; i++ {
		if _, err := e.get(context.Background()); err == nil {
			t.Fatal("failure not reported")
		}
	}
	if n := produced.Load(); n != 3 {
		t.Fatalf("failing TEE asked %d times, want once", n-2)
	}
	// A caller that gives up does not wait for a stuck TEE.
	advance(2 * time.Second)
	fail.Store(false)
	unstick := make(chan struct{})
	t.Cleanup(func() { close(unstick) })
	stuck := &selfEvidence{epoch: time.Second, now: clock, counted: func(error) {},
		produce: func([]byte, time.Time) (*attestv1.Evidence, error) { <-unstick; return nil, errors.New("stopped") }}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := stuck.get(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stuck TEE: err = %v", err)
	}
}

// TestSourceOf: a verified client certificate is its SPIFFE ID (joined
// nodes never share a budget); otherwise the IP address, IPv6 by its /64.
func TestSourceOf(t *testing.T) {
	at := func(addr string, chains [][]*x509.Certificate) context.Context {
		return peer.NewContext(context.Background(), &peer.Peer{
			Addr:     net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr)),
			AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{VerifiedChains: chains}},
		})
	}
	id, _ := url.Parse("spiffe://cluster.test/confmesh/node/node-a")
	node := [][]*x509.Certificate{{{URIs: []*url.URL{id}}}}
	for _, tc := range []struct {
		ctx  context.Context
		want string
	}{
		{at("127.0.0.5:4000", nil), "ip:127.0.0.5"},
		{at("[::ffff:198.18.0.7]:4000", nil), "ip:198.18.0.7"},
		{at("[2001:db8:1:2:aaaa::1]:4000", nil), "net:2001:db8:1:2::/64"},
		{at("[2001:db8:1:2:bbbb::9]:4001", nil), "net:2001:db8:1:2::/64"},
		{at("127.0.0.5:4000", node), "id:spiffe://cluster.test/confmesh/node/node-a"},
		{context.Background(), "unknown"},
	} {
		if got := sourceOf(tc.ctx); got != tc.want {
			t.Errorf("sourceOf = %q, want %q", got, tc.want)
		}
	}
}
