package snp_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/snp"
	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// fakeQuote behaves as the guest device: report followed by the host's
// certificate table in the ABI format.
type fakeQuote struct {
	node  *sim.Node
	table []byte
}

func (f *fakeQuote) IsSupported() bool        { return true }
func (f *fakeQuote) Product() *spb.SevProduct { return abi.DefaultSevProduct() }
func (f *fakeQuote) GetRawQuote(rd [64]byte) ([]uint8, error) {
	r, err := f.node.RawReport(rd)
	if err != nil {
		return nil, err
	}
	return append(r, f.table...), nil
}

func TestProviderShipsCertificateTable(t *testing.T) {
	ca, err := sim.NewTestCA("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	n, err := ca.NewNode(sim.NodeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	table := abi.CertsFromProto(&spb.CertificateChain{VcekCert: n.VCEK().Raw, AskCert: ca.ASK().Raw, ArkCert: ca.ARK().Raw}).Marshal()
	p := snp.New(&fakeQuote{node: n, table: table})

	ch, _ := attest.NewChallenge(time.Now())
	b := attest.Binding{Purpose: attest.PurposeJoin, Challenge: ch, IdentityKeyHash: make([]byte, 32), Name: "n", Key: bytes.Repeat([]byte{1}, 32)}
	ev, err := attest.Attest(p, b, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if ev.Tee != attest.TEESevSnp || len(ev.Report) != abi.ReportSize ||
		!bytes.Equal(ev.Chain.Vcek, n.VCEK().Raw) || !bytes.Equal(ev.Chain.Ask, ca.ASK().Raw) || !bytes.Equal(ev.Chain.Ark, ca.ARK().Raw) {
		t.Fatalf("evidence does not carry the report and the table's certificates: tee %q report %d", ev.Tee, len(ev.Report))
	}
	pol := &attest.Policy{Measurements: []attest.HexBytes{make([]byte, 48)}, TrustedRoots: []attest.RootRef{{Kind: attest.RootSimulated, File: filepath.Join(dir, sim.RootFile)}}}
	pol.AllowedVMPLs, pol.MaxEvidenceAge, pol.TrustDomain = []uint32{0}, attest.Duration(time.Minute), "t"
	v, err := attest.NewVerifier(pol, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := attest.Expect{Purpose: b.Purpose, Key: b.Key, IdentityKeyHash: b.IdentityKeyHash, Name: b.Name}
	// The hardware path labels evidence sev-snp; a simulated chain under
	// that label is refused.
	if _, err := v.Verify(ev, want); !errors.Is(err, attest.ErrUntrustedRoot) {
		t.Fatalf("sev-snp label on a simulated chain: err = %v, want ErrUntrustedRoot", err)
	}
	ev.Tee = attest.TEESimSnp
	if _, err := v.Verify(ev, want); err != nil {
		t.Fatalf("evidence from the provider's path does not verify: %v", err)
	}
}

func TestFromRawQuoteErrors(t *testing.T) {
	if _, err := snp.FromRawQuote(make([]byte, 100)); !errors.Is(err, attest.ErrMalformedReport) {
		t.Errorf("short quote: err = %v", err)
	}
	bad := append(make([]byte, abi.ReportSize), bytes.Repeat([]byte{0xff}, 30)...)
	if _, err := snp.FromRawQuote(bad); !errors.Is(err, attest.ErrMalformedChain) {
		t.Errorf("garbage table: err = %v", err)
	}
	ev, err := snp.FromRawQuote(make([]byte, abi.ReportSize))
	if err != nil || len(ev.Chain.GetVcek()) != 0 {
		t.Errorf("report without table: ev %v err %v", ev, err)
	}
}

// TestOpenWithoutDevice: on a machine that is not an SEV-SNP guest, Open
// says so instead of failing obscurely.
func TestOpenWithoutDevice(t *testing.T) {
	if _, err := os.Stat("/dev/sev-guest"); err == nil {
		t.Skip("this machine has /dev/sev-guest")
	}
	if _, err := os.Stat("/sys/kernel/config/tsm/report"); err == nil {
		t.Skip("this machine has configfs-tsm reports")
	}
	if _, err := snp.Open(); !errors.Is(err, snp.ErrNoDevice) {
		t.Fatalf("Open on a non-SNP machine: err = %v, want ErrNoDevice", err)
	}
}
