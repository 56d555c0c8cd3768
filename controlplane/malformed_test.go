package controlplane_test

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"os"
	"strings"
	"testing"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
	"github.com/confmesh/confmesh/internal/identity"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// craftedTDXQuote is the crash input of issue 21: a 1026-byte TDX v5 quote
// whose header and body are well formed and whose signed-data length (48)
// is shorter than the signature it must hold. go-tdx-guest's parser slices
// [:64] of those 48 bytes and panics.
const craftedTDXQuote = "../internal/attest/testdata/tdx/crash_v5_signed48.dat"

// TestJoinCraftedTDXQuoteRefused: one unauthenticated Join carrying the
// crafted quote, against a real control-plane gRPC server whose policy
// accepts TDX nodes, is refused with reason malformed (counted and logged
// like every refusal), and the same server then admits an honest join.
func TestJoinCraftedTDXQuoteRefused(t *testing.T) {
	crafted, err := os.ReadFile(craftedTDXQuote)
	if err != nil {
		t.Fatal(err)
	}
	p := cptest.Policy(t, cptest.GoodMeasurement)
	p.TDX = &attest.TDXPolicy{MRTDs: []attest.HexBytes{bytes.Repeat([]byte{0x7d}, 48)}, AcceptedTCBStatuses: []string{"UpToDate"}}
	p.TrustedRoots = append(p.TrustedRoots, attest.RootRef{Kind: attest.RootIntel})
	c := cptest.Start(t, cptest.Options{Policy: p})
	attacker := cptest.NewAgent(t, "node-x", cptest.SimNode(t, sim.NodeConfig{}), nil)
	conn, err := attacker.Dial(t, c)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tee := range []string{attest.TEETDX, attest.TEESimTDX} {
		ch, err := conn.Challenge(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		req := joinRequest(t, attacker, ch)
		req.Evidence.Tee, req.Evidence.Report, req.Evidence.Chain = tee, crafted, nil
		_, err = conn.Client.Join(ctxT(t), req)
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "evidence refused: malformed:") {
			t.Fatalf("crafted %s quote: err = %v, want PermissionDenied with reason malformed", tee, err)
		}
		t.Logf("crafted %s quote refused: %v", tee, err)
	}
	if n := joinsRefused(t, c, "malformed"); n != 2 {
		t.Fatalf("confmesh_controlplane_joins_total{result=\"refused\",reason=\"malformed\"} = %v, want 2", n)
	}
	if n, err := c.Store.ListNodes(); err != nil || len(n) != 0 {
		t.Fatalf("the refused joins stored %d nodes (err %v)", len(n), err)
	}
	// The server is still serving: an honest node joins over a new connection.
	honest := cptest.NewAgent(t, "node-a", cptest.SimNode(t, sim.NodeConfig{}), nil)
	if _, err := honest.TryJoin(t, c); err != nil {
		t.Fatalf("honest join after the attack: %v", err)
	}
}

// joinsRefused reads confmesh_controlplane_joins_total{result="refused",reason}.
func joinsRefused(t *testing.T, c *cptest.ControlPlane, reason string) float64 {
	t.Helper()
	return counterValue(t, c, "confmesh_controlplane_joins_total", map[string]string{"result": "refused", "reason": reason})
}

// paddingTEE hands out its TD's quotes in a size-byte buffer, as QGS
// (5006 bytes) or configfs-tsm does, with last as the buffer's last byte.
type paddingTEE struct {
	*simtdx.Node
	size int
	last byte
}

func (p paddingTEE) Report(rd [64]byte) (*attestv1.Evidence, error) {
	ev, err := p.Node.Report(rd)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, p.size)
	copy(buf, ev.Report)
	buf[p.size-1] = p.last
	ev.Report = buf
	return ev, nil
}

// TestJoinPaddedTDXQuote: a TD joins with its quote zero-padded to an
// 8000-byte buffer and is admitted; the same TD with one non-zero byte at the end of the buffer is
// refused as trailing_data.
func TestJoinPaddedTDXQuote(t *testing.T) {
	ca, err := simtdx.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Save(t.TempDir()); err != nil {
		t.Fatal(err)
	}
	mrtd := bytes.Repeat([]byte{0x5a}, 48)
	p := cptest.Policy(t, cptest.GoodMeasurement)
	p.TDX = &attest.TDXPolicy{MRTDs: []attest.HexBytes{mrtd}, AcceptedTCBStatuses: []string{"UpToDate"}}
	p.TrustedRoots = append(p.TrustedRoots, attest.RootRef{Kind: attest.RootSimulatedTDX, File: ca.RootPath()})
	c := cptest.Start(t, cptest.Options{Policy: p})
	node, err := ca.NewNode(simtdx.NodeConfig{MRTD: mrtd})
	if err != nil {
		t.Fatal(err)
	}
	dirty := cptest.NewAgent(t, "node-d", paddingTEE{Node: node, size: 8000, last: 1}, nil)
	_, err = dirty.TryJoin(t, c)
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "evidence refused: trailing_data:") {
		t.Fatalf("quote with a non-zero byte at the end of its buffer: err = %v, want trailing_data", err)
	}
	padded := cptest.NewAgent(t, "node-p", paddingTEE{Node: node, size: 8000}, nil)
	if _, err := padded.TryJoin(t, c); err != nil {
		t.Fatalf("quote zero-padded to 8000 bytes: %v", err)
	}
	n, err := c.Store.ListNodes()
	if err != nil || len(n) != 1 || n[0].Name != "node-p" {
		t.Fatalf("stored nodes %v, err %v; want node-p alone", n, err)
	}
	// The node SVID's report digest is that of the quote without padding.
	ev, err := attest.UnmarshalEvidence(n[0].Evidence)
	if err != nil {
		t.Fatal(err)
	}
	q, err := attest.ParseTDXQuote(ev.GetReport())
	if err != nil || len(q.Raw) >= 8000 {
		t.Fatalf("stored quote: %v", err)
	}
	svid, err := x509.ParseCertificate(n[0].SVID[0])
	if err != nil {
		t.Fatal(err)
	}
	cl, err := identity.ClaimsFromCert(svid)
	want := sha256.Sum256(q.Raw)
	if err != nil || !bytes.Equal(cl.ReportDigest, want[:]) {
		t.Fatalf("SVID report digest %x, want SHA-256 of the unpadded quote %x (err %v)", cl.ReportDigest, want, err)
	}
}
