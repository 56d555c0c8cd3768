package simtdx_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
	tdxabi "github.com/google/go-tdx-guest/abi"
	tdxverify "github.com/google/go-tdx-guest/verify"
)

var (
	mrtd  = bytes.Repeat([]byte{0x5a}, 48)
	quiet = slog.New(slog.DiscardHandler)
)

func setup(t *testing.T) (*simtdx.CA, string) {
	t.Helper()
	ca, err := simtdx.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	return ca, ca.RootPath()
}

func policy(t *testing.T, root, extra string) *attest.Policy {
	t.Helper()
	y := "trustedRoots: [{kind: simulated-tdx, file: " + root + "}]\ntdx:\n  mrtds: [\"" + strings.Repeat("5a", 48) + "\"]\n" + extra
	p, err := attest.ParsePolicy([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func verifier(t *testing.T, p *attest.Policy, coll *attest.Collateral) *attest.Verifier {
	t.Helper()
	opts := attest.Options{}
	if coll != nil {
		opts.TDXCollateral = coll.Source()
	}
	v, err := attest.NewVerifier(p, opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func bound(t testing.TB, n attest.Provider) (*attestv1.Evidence, attest.Expect) {
	t.Helper()
	ch, err := attest.NewChallenge(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key := sha256.Sum256([]byte("wg key"))
	idh := sha256.Sum256([]byte("svid key"))
	b := attest.Binding{Purpose: attest.PurposeJoin, Challenge: ch, IdentityKeyHash: idh[:], Name: "tdx-node", Key: key[:]}
	ev, err := attest.Attest(n, b, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ev, attest.Expect{Purpose: b.Purpose, Key: b.Key, IdentityKeyHash: b.IdentityKeyHash, Name: b.Name, Challenge: ch}
}

// TestSimTDXAcceptedByGoTDXGuestOnlyUnderItsRoot: go-tdx-guest itself
// accepts a sim-tdx quote with the simulated root trusted and refuses it
// with Intel's root (its default).
func TestSimTDXAcceptedByGoTDXGuestOnlyUnderItsRoot(t *testing.T) {
	ca, _ := setup(t)
	n, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := n.Quote([64]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	q, err := tdxabi.QuoteToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root())
	if err := tdxverify.TdxQuote(q, &tdxverify.Options{TrustedRoots: pool}); err != nil {
		t.Fatalf("go-tdx-guest with the simulated root: %v", err)
	}
	if err := tdxverify.TdxQuote(q, &tdxverify.Options{}); err == nil {
		t.Fatal("go-tdx-guest with Intel's root accepted a simulated quote")
	} else {
		t.Logf("Intel root refuses: %v", err)
	}
}

// TestSimTDXBoundRoundTrip: the confmesh verifier accepts bound sim-tdx
// evidence under a policy naming the simulated root, with and without
// collateral, and refuses it under the Intel root or labelled as tdx.
func TestSimTDXBoundRoundTrip(t *testing.T) {
	ca, root := setup(t)
	n, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	ev, want := bound(t, n)
	c, err := verifier(t, policy(t, root, ""), nil).Verify(ev, want)
	if err != nil {
		t.Fatal(err)
	}
	if c.TEE != attest.TEESimTDX || !c.Simulated || !bytes.Equal(c.Measurement, mrtd) || c.TDX == nil || len(c.ChipID) != 16 {
		t.Fatalf("claims %+v", c)
	}
	coll, err := ca.Collateral(simtdx.CollateralConfig{})
	if err != nil {
		t.Fatal(err)
	}
	c, err = verifier(t, policy(t, root, ""), coll).Verify(ev, want)
	if err != nil {
		t.Fatalf("with collateral: %v", err)
	}
	if c.TDX.TCBStatus != attest.TCBStatusUpToDate || c.TDX.QETCBStatus != attest.TCBStatusUpToDate {
		t.Errorf("statuses %q %q", c.TDX.TCBStatus, c.TDX.QETCBStatus)
	}
	intel, err := attest.ParsePolicy([]byte("tdx:\n  mrtds: [\"" + strings.Repeat("5a", 48) + "\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifier(t, intel, nil).Verify(ev, want)
	if !errors.Is(err, attest.ErrUntrustedRoot) {
		t.Fatalf("Intel-root policy: %v", err)
	}
	ev.Tee = attest.TEETDX
	if _, err := verifier(t, policy(t, root, ""), nil).Verify(ev, want); !errors.Is(err, attest.ErrUntrustedRoot) {
		t.Fatalf("sim quote labelled tdx: %v", err)
	}
}

// TestSimTDXRefusals: a debug TD, a wrong MRTD, an out-of-date TEE TCB
// (computed from collateral the simulated chain signs), a status the policy
// does not list, a forged collateral signature, and a quote whose TD body
// was altered are each refused with their named reason.
func TestSimTDXRefusals(t *testing.T) {
	ca, root := setup(t)
	good, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, n attest.Provider, p *attest.Policy, coll *attest.Collateral, want error) {
		t.Helper()
		ev, exp := bound(t, n)
		_, err := verifier(t, p, coll).Verify(ev, exp)
		if !errors.Is(err, want) {
			t.Errorf("%s: got %v (reason %s), want reason %s", name, err, attest.Reason(err), attest.Reason(want))
			return
		}
		t.Logf("%s: refused as %s: %v", name, attest.Reason(err), err)
	}
	debug, _ := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd, Debug: true})
	check("debug TD", debug, policy(t, root, ""), nil, attest.ErrDebug)
	other, _ := ca.NewNode(simtdx.NodeConfig{MRTD: bytes.Repeat([]byte{1}, 48)})
	check("wrong MRTD", other, policy(t, root, ""), nil, attest.ErrMeasurement)

	old, _ := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd, TeeTCBSVN: []byte{2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}})
	coll, err := ca.Collateral(simtdx.CollateralConfig{})
	if err != nil {
		t.Fatal(err)
	}
	check("out-of-date TCB", old, policy(t, root, ""), coll, attest.ErrTCBStatus)
	// A policy that lists OutOfDate accepts it (and says so in the claims).
	ev, exp := bound(t, old)
	if c, err := verifier(t, policy(t, root, "  acceptedTCBStatuses: [UpToDate, OutOfDate]\n"), coll).Verify(ev, exp); err != nil || c.TDX.TCBStatus != attest.TCBStatusOutOfDate || len(c.TDX.AdvisoryIDs) == 0 {
		t.Errorf("OutOfDate accepted by policy: %v %+v", err, c)
	}
	sw, err := ca.Collateral(simtdx.CollateralConfig{UpToDateStatus: attest.TCBStatusSWHardeningNeeded})
	if err != nil {
		t.Fatal(err)
	}
	check("SWHardeningNeeded not listed", good, policy(t, root, ""), sw, attest.ErrTCBStatus)
	ev, exp = bound(t, good)
	if c, err := verifier(t, policy(t, root, "  acceptedTCBStatuses: [UpToDate, SWHardeningNeeded]\n"), sw).Verify(ev, exp); err != nil || c.TDX.TCBStatus != attest.TCBStatusSWHardeningNeeded {
		t.Errorf("SWHardeningNeeded listed: %v", err)
	}
	// A QE report that does not match Intel's QE identity is refused even
	// where go-tdx-guest stopped early (platform status accepted by policy
	// though not UpToDate): confmesh checks the identity itself.
	foreignQE, err := ca.Collateral(simtdx.CollateralConfig{QEMrSigner: bytes.Repeat([]byte{7}, 32)})
	if err != nil {
		t.Fatal(err)
	}
	check("QE not Intel's (UpToDate path)", good, policy(t, root, ""), foreignQE, attest.ErrCollateral)
	check("QE not Intel's (accepted OutOfDate path)", old, policy(t, root, "  acceptedTCBStatuses: [UpToDate, OutOfDate]\n"), foreignQE, attest.ErrSignature)
	oldQE, _ := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd, QESVN: 1})
	qeColl, _ := ca.Collateral(simtdx.CollateralConfig{MinQESVN: 2})
	check("out-of-date QE", oldQE, policy(t, root, ""), qeColl, attest.ErrTCBStatus)

	forged := *coll
	forged.TCBInfo = strings.Replace(forged.TCBInfo, `"tcbStatus":"OutOfDate"`, `"tcbStatus":"UpToDate"`, 1)
	check("forged TCB info", old, policy(t, root, ""), &forged, attest.ErrCollateral)
	otherCA, _ := simtdx.NewCA()
	foreign, _ := otherCA.Collateral(simtdx.CollateralConfig{})
	check("collateral from another root", good, policy(t, root, ""), foreign, attest.ErrCollateral)
	otherPlatform, _ := ca.Collateral(simtdx.CollateralConfig{FMSPC: []byte{0, 0x60, 0x6a, 0, 0, 0}})
	check("collateral for another platform model", good, policy(t, root, ""), otherPlatform, attest.ErrCollateral)
	expired, _ := ca.Collateral(simtdx.CollateralConfig{Issued: time.Now().AddDate(0, -2, 0), NextUpdate: time.Now().AddDate(0, -1, 0)})
	check("expired collateral", good, policy(t, root, ""), expired, attest.ErrCollateral)
	check("collateral required", good, policy(t, root, "  requireCollateral: true\n"), nil, attest.ErrNoCollateral)
	check("QE SVN minimum", good, policy(t, root, "  minimumQESVN: 3\n"), nil, attest.ErrQESVN)
	check("TEE TCB SVN minimum", good, policy(t, root, "  minimumTeeTCBSVN: \"09000000000000000000000000000000\"\n"), nil, attest.ErrTCBTEE)
	check("FMSPC allowlist", good, policy(t, root, "  fmspcs: [\"00606a000000\"]\n"), nil, attest.ErrPlatform)
	check("PCE SVN minimum", good, policy(t, root, "  minimumPCESVN: 2\n"), nil, attest.ErrPCESVN)
	check("PPID allowlist", good, policy(t, root, "  ppids: [\""+strings.Repeat("01", 16)+"\"]\n"), nil, attest.ErrPlatform)
	check("MRCONFIGID", good, policy(t, root, "  mrConfigIDs: [\""+strings.Repeat("01", 48)+"\"]\n"), nil, attest.ErrMRConfigID)
	check("TD attributes mask", good, policy(t, root, "  tdAttributesMask: \"00000010000000ff\"\n  tdAttributes: \"0000000000000000\"\n"), nil, attest.ErrTDAttributes)
	check("RTMR", good, policy(t, root, "  rtmrs: [\""+strings.Repeat("11", 48)+"\", \"\", \"\", \"\"]\n"), nil, attest.ErrRTMR)
	check("XFAM mask", good, policy(t, root, "  xfamMask: \"ffffffffffffffff\"\n  xfam: \"0300000000000000\"\n"), nil, attest.ErrXFAM)

	// The same fields accept a quote that matches them.
	z48 := strings.Repeat("00", 48)
	ev, exp = bound(t, good)
	strict := policy(t, root, "  rtmrs: [\""+z48+"\", \"\", \"\", \""+z48+"\"]\n  mrConfigIDs: [\""+z48+"\"]\n"+
		"  xfamMask: \"ffffffffffffffff\"\n  xfam: \"e702060000000000\"\n  tdAttributesMask: \"ffffffffffffffff\"\n  tdAttributes: \"0000001000000000\"\n"+
		"  minimumTeeTCBSVN: \"03000400000000000000000000000000\"\n  fmspcs: [\"90c06f000000\"]\n  ppids: [\""+hexOf(good.Config().PPID)+"\"]\n  requireCollateral: true\n")
	if _, err := verifier(t, strict, coll).Verify(ev, exp); err != nil {
		t.Errorf("quote matching every tdx field refused: %v", err)
	}

	// A quote whose MRTD is rewritten after signing fails the quote signature.
	ev, exp = bound(t, good)
	ev.Report[48+136] ^= 0xff // MRTD is 136 bytes into the body
	if _, err := verifier(t, policy(t, root, ""), nil).Verify(ev, exp); !errors.Is(err, attest.ErrSignature) {
		t.Errorf("tampered MRTD: %v", err)
	}
}

// TestSimTDXOpenNodeKeepsIdentity: a node reopened from the CA directory
// keeps its PPID (platform identity) and its quotes still verify.
func TestSimTDXOpenNodeKeepsIdentity(t *testing.T) {
	ca, root := setup(t)
	a, err := ca.OpenNode("tdx-a", simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := simtdx.OpenCA(filepath.Dir(root))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca2.OpenNode("tdx-a", simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Config().PPID, b.Config().PPID) {
		t.Error("PPID changed on reopen")
	}
	ev, exp := bound(t, b)
	if _, err := verifier(t, policy(t, root, ""), nil).Verify(ev, exp); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(filepath.Dir(root), "nodes", "tdx-a.json")); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("node state file: %v %v", st, err)
	}
	if _, err := ca.OpenNode("../x", simtdx.NodeConfig{}); err == nil {
		t.Error("path-like node name accepted")
	}
}

// BenchmarkVerifySimTDX: one bound sim-tdx quote verified over and over,
// without and with collateral (go test -bench VerifySimTDX).
func BenchmarkVerifySimTDX(b *testing.B) {
	ca, err := simtdx.NewCA()
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	if err := ca.Save(dir); err != nil {
		b.Fatal(err)
	}
	n, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		b.Fatal(err)
	}
	ev, exp := bound(b, n)
	coll, err := ca.Collateral(simtdx.CollateralConfig{})
	if err != nil {
		b.Fatal(err)
	}
	y := "trustedRoots: [{kind: simulated-tdx, file: " + ca.RootPath() + "}]\ntdx:\n  mrtds: [\"" + strings.Repeat("5a", 48) + "\"]\n"
	p, err := attest.ParsePolicy([]byte(y))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		coll *attest.TDXCollateral
	}{{"chain-and-signatures", nil}, {"with-collateral", coll.Source()}} {
		b.Run(c.name, func(b *testing.B) {
			v, err := attest.NewVerifier(p, attest.Options{TDXCollateral: c.coll, Logger: quiet})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := v.Verify(ev, exp); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func hexOf(b []byte) string {
	const d = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, d[c>>4], d[c&15])
	}
	return string(out)
}
