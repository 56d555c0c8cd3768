package attest_test

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

// fixture is shared by the tests of this package: building RSA roots is
// the slow part, so two simulated CAs are made once.
type fixture struct {
	ca, otherCA         *sim.CA
	rootFile, otherRoot string
	measurement         []byte
}

var (
	fixOnce sync.Once
	fix     fixture
	fixErr  error
)

func getFixture(t testing.TB) *fixture {
	t.Helper()
	fixOnce.Do(func() {
		dir, err := os.MkdirTemp("", "confmesh-attest-test-")
		if err != nil {
			fixErr = err
			return
		}
		if fix.ca, fixErr = sim.NewTestCA(""); fixErr != nil {
			return
		}
		if fix.otherCA, fixErr = sim.NewTestCA(""); fixErr != nil {
			return
		}
		if fixErr = fix.ca.Save(filepath.Join(dir, "ca")); fixErr != nil {
			return
		}
		if fixErr = fix.otherCA.Save(filepath.Join(dir, "other")); fixErr != nil {
			return
		}
		fix.rootFile, fix.otherRoot = fix.ca.RootPath(), fix.otherCA.RootPath()
		fix.measurement = bytes.Repeat([]byte{0xa5}, 48)
	})
	if fixErr != nil {
		t.Fatalf("test fixture: %v", fixErr)
	}
	return &fix
}

// simPolicy returns a policy trusting the fixture's simulated root and
// accepting its measurement; edit it before building a verifier.
func (f *fixture) simPolicy() *attest.Policy {
	return &attest.Policy{
		TrustDomain:    "test.local",
		Measurements:   []attest.HexBytes{f.measurement},
		AllowedVMPLs:   []uint32{0},
		MaxEvidenceAge: attest.Duration(10 * time.Minute),
		TrustedRoots:   []attest.RootRef{{Kind: attest.RootSimulated, File: f.rootFile}},
	}
}

func (f *fixture) verifier(t testing.TB, p *attest.Policy, now time.Time) *attest.Verifier {
	t.Helper()
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

func (f *fixture) node(t testing.TB, cfg sim.NodeConfig) *sim.Node {
	t.Helper()
	if cfg.Measurement == nil {
		cfg.Measurement = f.measurement
	}
	n, err := f.ca.NewNode(cfg)
	if err != nil {
		t.Fatalf("NewNode: %v", err)
	}
	return n
}

// bound is one binding and the expectation that matches it.
type bound struct {
	b    attest.Binding
	want attest.Expect
}

func newBound(t testing.TB, issued time.Time) bound {
	t.Helper()
	ch, err := attest.NewChallenge(issued)
	if err != nil {
		t.Fatal(err)
	}
	key, idh := randBytes(t, 32), randBytes(t, 32)
	return bound{
		b:    attest.Binding{Purpose: attest.PurposeJoin, Challenge: ch, IdentityKeyHash: idh, Name: "node-a", Key: key},
		want: attest.Expect{Purpose: attest.PurposeJoin, Key: key, IdentityKeyHash: idh, Name: "node-a", Challenge: ch},
	}
}

func (f *fixture) evidence(t testing.TB, n *sim.Node, bd bound, now time.Time) *attestv1.Evidence {
	t.Helper()
	ev, err := attest.Attest(n, bd.b, now)
	if err != nil {
		t.Fatalf("Attest: %v", err)
	}
	return ev
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// verifyVia attests through provider and verifies the evidence under p
// through the verifier's real path (Attest, then Verifier.Verify with the
// binding).
func verifyVia(t testing.TB, provider attest.Provider, p *attest.Policy) (*attest.Claims, error) {
	t.Helper()
	now := time.Now()
	v, err := attest.NewVerifier(p, attest.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	bd := newBound(t, now)
	ev, err := attest.Attest(provider, bd.b, now)
	if err != nil {
		t.Fatal(err)
	}
	return v.Verify(ev, bd.want)
}
