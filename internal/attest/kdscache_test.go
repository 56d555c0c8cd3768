package attest_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

// fakeKDS serves the VCEK of known chips, or fails when down. No network.
type fakeKDS struct {
	mu    sync.Mutex
	certs map[string][]byte // chip ID hex -> DER
	down  bool
	calls int
}

func (k *fakeKDS) Get(url string) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	if k.down {
		return nil, errors.New("connection refused")
	}
	for chip, der := range k.certs {
		if strings.Contains(url, chip) {
			return der, nil
		}
	}
	return nil, fmt.Errorf("404 for %s", url)
}

func TestVerifierFetchesMissingVCEKThroughCache(t *testing.T) {
	f := getFixture(t)
	now := time.Now()
	n := f.node(t, sim.NodeConfig{})
	kds := &fakeKDS{certs: map[string][]byte{hex.EncodeToString(n.ChipID()): n.VCEK().Raw}}
	clock := now
	cache := &attest.CachingFetcher{Upstream: kds, Dir: t.TempDir(), TTL: time.Hour, Now: func() time.Time { return clock }}

	bd := newBound(t, now)
	ev := f.evidence(t, n, bd, now)
	ev.Chain = nil // the host shipped no certificates

	// Without a fetcher the missing chain is an error.
	if _, err := f.verifier(t, f.simPolicy(), now).Verify(ev, bd.want); !errors.Is(err, attest.ErrMissingChain) {
		t.Fatalf("no fetcher: err = %v, want ErrMissingChain", err)
	}

	newV := func() *attest.Verifier {
		v, err := attest.NewVerifier(f.simPolicy(), attest.Options{Fetcher: cache, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if _, err := newV().Verify(ev, bd.want); err != nil {
		t.Fatalf("with fetcher: %v", err)
	}
	if kds.calls != 1 {
		t.Fatalf("KDS calls = %d, want 1", kds.calls)
	}
	// Fresh cache: no second call.
	if _, err := newV().Verify(ev, bd.want); err != nil || kds.calls != 1 {
		t.Fatalf("fresh cache: err %v, calls %d (want 1)", err, kds.calls)
	}
	// Stale cache and the KDS down: the stale entry is served.
	clock = now.Add(2 * time.Hour)
	kds.down = true
	if _, err := newV().Verify(ev, bd.want); err != nil {
		t.Fatalf("stale cache with KDS down: %v", err)
	}
	if kds.calls != 2 {
		t.Fatalf("KDS calls = %d, want 2 (a refresh attempt)", kds.calls)
	}
	// A chip never seen, KDS down: nothing to serve.
	other := f.node(t, sim.NodeConfig{})
	bd2 := newBound(t, now)
	ev2 := f.evidence(t, other, bd2, now)
	ev2.Chain = nil
	if _, err := newV().Verify(ev2, bd2.want); !errors.Is(err, attest.ErrMissingChain) {
		t.Fatalf("unknown chip, KDS down: err = %v, want ErrMissingChain", err)
	}
}
