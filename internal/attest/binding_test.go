package attest_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

// TestNonceLayout recomputes nonce32 and REPORT_DATA from DESIGN.md's
// layout, spelled out byte by byte.
func TestNonceLayout(t *testing.T) {
	challenge := bytes.Repeat([]byte{7}, 32)
	idh := bytes.Repeat([]byte{9}, 32)
	key := bytes.Repeat([]byte{3}, 32)
	nonce, err := attest.Nonce(attest.PurposeRenew, challenge, idh, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	var in []byte
	in = append(in, "confmesh/v1/renew"...)
	in = append(in, 0)
	in = append(in, challenge...)
	in = append(in, idh...)
	in = append(in, "node-a"...)
	if want := sha256.Sum256(in); nonce != want {
		t.Fatalf("nonce = %x, want %x", nonce, want)
	}
	rd, err := attest.ReportData(nonce[:], key)
	if err != nil {
		t.Fatal(err)
	}
	if want := sha512.Sum512(append(nonce[:], key...)); rd != want {
		t.Fatalf("report data = %x, want %x", rd, want)
	}
	// Every input changes the nonce.
	for name, other := range map[string]func() ([32]byte, error){
		"purpose":   func() ([32]byte, error) { return attest.Nonce(attest.PurposeJoin, challenge, idh, "node-a") },
		"challenge": func() ([32]byte, error) { return attest.Nonce(attest.PurposeRenew, idh, idh, "node-a") },
		"identity":  func() ([32]byte, error) { return attest.Nonce(attest.PurposeRenew, challenge, challenge, "node-a") },
		"name":      func() ([32]byte, error) { return attest.Nonce(attest.PurposeRenew, challenge, idh, "node-b") },
	} {
		n2, err := other()
		if err != nil {
			t.Fatal(err)
		}
		if n2 == nonce {
			t.Errorf("changing the %s does not change the nonce", name)
		}
	}
}

func TestBindingInputErrors(t *testing.T) {
	c32 := make([]byte, 32)
	for name, f := range map[string]func() error{
		"unknown purpose": func() error { _, err := attest.Nonce("login", c32, c32, "n"); return err },
		"short challenge": func() error { _, err := attest.Nonce(attest.PurposeJoin, c32[:31], c32, "n"); return err },
		"short key hash":  func() error { _, err := attest.Nonce(attest.PurposeJoin, c32, c32[:20], "n"); return err },
		"empty name":      func() error { _, err := attest.Nonce(attest.PurposeJoin, c32, c32, ""); return err },
		"short key":       func() error { _, err := attest.ReportData(c32, c32[:31]); return err },
		"long nonce":      func() error { _, err := attest.ReportData(make([]byte, 33), c32); return err },
	} {
		if err := f(); !errors.Is(err, attest.ErrMalformedBinding) {
			t.Errorf("%s: err = %v, want ErrMalformedBinding", name, err)
		}
	}
}

func TestChallengeFreshness(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ch, err := attest.NewChallenge(now)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := attest.ChallengeTime(ch); !got.Equal(now) {
		t.Fatalf("ChallengeTime = %v, want %v", got, now)
	}
	ch2, _ := attest.NewChallenge(now)
	if bytes.Equal(ch, ch2) {
		t.Fatal("two challenges at the same second are equal: random part missing")
	}
	for _, c := range []struct {
		skew time.Duration
		ok   bool
	}{{0, true}, {59 * time.Second, true}, {-59 * time.Second, true}, {61 * time.Second, false}, {-61 * time.Second, false}} {
		err := attest.CheckChallengeFresh(ch, now.Add(c.skew))
		if c.ok != (err == nil) || (!c.ok && !errors.Is(err, attest.ErrStaleChallenge)) {
			t.Errorf("skew %v: err = %v, want ok=%v", c.skew, err, c.ok)
		}
	}
}

// TestAttestRefusesStaleChallenge: the attesting side never answers a
// challenge more than 60 s away from its clock, and produces nothing.
func TestAttestRefusesStaleChallenge(t *testing.T) {
	f := getFixture(t)
	n := f.node(t, sim.NodeConfig{})
	now := time.Now()
	bd := newBound(t, now.Add(-2*time.Minute))
	ev, err := attest.Attest(n, bd.b, now)
	if !errors.Is(err, attest.ErrStaleChallenge) || ev != nil {
		t.Fatalf("Attest with a 2-minute-old challenge: ev=%v err=%v", ev, err)
	}
}
