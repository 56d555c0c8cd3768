package sim_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
)

// TestOpenCAPersists: a saved CA reloads with the same root, its keys are
// private, and nodes keep their chip ID and VCEK key across restarts.
func TestOpenCAPersists(t *testing.T) {
	dir := t.TempDir()
	ca, err := sim.OpenCA(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	again, err := sim.OpenCA(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ca.ARK().RawSubjectPublicKeyInfo, again.ARK().RawSubjectPublicKeyInfo) {
		t.Fatal("reloaded CA has another ARK key")
	}
	for _, f := range []string{"ark.key", "ask.key"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	if _, err := attest.ParseRootPEM(mustRead(t, ca.RootPath())); err != nil {
		t.Fatalf("root file does not parse as a root: %v", err)
	}
	if _, err := sim.OpenCA(dir, "Genoa-B1"); err == nil || !strings.Contains(err.Error(), "certifies Milan-B1, not Genoa-B1") {
		t.Fatalf("opening with another product: err = %v", err)
	}

	n1, err := ca.OpenNode("node-a", sim.NodeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	n2, err := again.OpenNode("node-a", sim.NodeConfig{Debug: true, TCB: attest.TCBParts{SNP: 3}})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(n1.ChipID(), n2.ChipID()) {
		t.Error("reopened node has another chip ID")
	}
	if !bytes.Equal(n1.VCEK().RawSubjectPublicKeyInfo, n2.VCEK().RawSubjectPublicKeyInfo) {
		t.Error("reopened node has another VCEK key")
	}
	other, err := ca.OpenNode("node-b", sim.NodeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.ChipID(), n1.ChipID()) {
		t.Error("two nodes share a chip ID")
	}
	if _, err := ca.OpenNode("../escape", sim.NodeConfig{}); err == nil {
		t.Error("a node name with a path was accepted")
	}
}

func TestNodeConfigErrors(t *testing.T) {
	ca, err := sim.NewTestCA("")
	if err != nil {
		t.Fatal(err)
	}
	for name, cfg := range map[string]sim.NodeConfig{
		"short chip id":     {ChipID: make([]byte, 10)},
		"short measurement": {Measurement: make([]byte, 47)},
		"vmpl":              {VMPL: 4},
		"product":           {Product: "Pentium-B0"},
		"tcb":               {TCB: attest.TCBParts{Bootloader: 200}},
		"fmc on Milan":      {TCB: attest.TCBParts{FMC: 1}},
	} {
		if _, err := ca.NewNode(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := sim.NewCA("Pentium-B0"); err == nil {
		t.Error("unknown product accepted")
	}
}

// TestReportCarriesSettings: the raw report is in the SNP ABI and says
// what the node was configured to say.
func TestReportCarriesSettings(t *testing.T) {
	ca, err := sim.NewTestCA("")
	if err != nil {
		t.Fatal(err)
	}
	m := bytes.Repeat([]byte{0x42}, 48)
	n, err := ca.NewNode(sim.NodeConfig{Measurement: m, Debug: true, SMT: true, VMPL: 2, TCB: attest.TCBParts{Bootloader: 3, TEE: 1, SNP: 14, Microcode: 209}})
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	rd[0] = 0x77
	raw, err := n.RawReport(rd)
	if err != nil {
		t.Fatal(err)
	}
	r, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	pol, _ := abi.ParseSnpPolicy(r.Policy)
	pi, _ := abi.ParseSnpPlatformInfo(r.PlatformInfo)
	tcb := kds.DecomposeTCBVersion(kds.TCBVersion(r.ReportedTcb))
	if !bytes.Equal(r.Measurement, m) || !pol.Debug || !pol.SMT || !pi.SMTEnabled || r.Vmpl != 2 ||
		tcb.SnpSpl != 14 || tcb.UcodeSpl != 209 || r.ReportData[0] != 0x77 || !bytes.Equal(r.ChipId, n.ChipID()) {
		t.Fatalf("report does not carry the settings: %+v", r)
	}
	exts, err := kds.VcekCertificateExtensions(n.VCEK())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exts.HWID[:], n.ChipID()) || exts.TCBVersion != kds.TCBVersion(r.ReportedTcb) || exts.ProductName != "Milan-B1" {
		t.Fatalf("VCEK extensions %+v do not match the report", exts)
	}
}

// TestTurinNode: a simulated Turin node lays its TCB out as Turin does
// (FMC, bootloader, TEE, SNP, reserved, microcode), names Turin in its
// CPUID and VCEK, and its VCEK certifies exactly the report's raw TCB.
func TestTurinNode(t *testing.T) {
	ca, err := sim.NewTestCA("Turin-B0")
	if err != nil {
		t.Fatal(err)
	}
	n, err := ca.NewNode(sim.NodeConfig{TCB: attest.TCBParts{FMC: 2, Bootloader: 3, TEE: 1, SNP: 14, Microcode: 209}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := n.RawReport([64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := abi.ReportToProto(raw)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := raw[0x180:0x188], []byte{2, 3, 1, 14, 0, 0, 0, 209}; !bytes.Equal(got, want) {
		t.Errorf("REPORTED_TCB bytes % x, want % x (Turin layout)", got, want)
	}
	if line := kds.ProductLineFromFms(r.GetCpuid1EaxFms()); line != "Turin" {
		t.Errorf("CPUID names %s, want Turin", line)
	}
	// The VCEK is in the format AMD issues for Turin: structVersion 1, an
	// 8-byte hwID (the CHIP_ID's first 8 bytes; the rest of a Turin CHIP_ID
	// is zero), the TCB named per component with fmcSPL.
	exts, err := kdscert.Parse(n.VCEK(), abi.VcekReportSigner)
	if err != nil {
		t.Fatal(err)
	}
	if exts.StructVersion != 1 || exts.ProductName != "Turin-B0" || exts.TCB != r.ReportedTcb ||
		!bytes.Equal(exts.HWID, n.ChipID()[:8]) || !bytes.Equal(n.ChipID()[8:], make([]byte, 56)) {
		t.Fatalf("VCEK %s TCB %#x does not match the Turin report (TCB %#x, chip %x)", exts, exts.TCB, r.ReportedTcb, n.ChipID())
	}
	for _, e := range n.VCEK().Extensions {
		if e.Id.Equal(kds.OidHwid) && len(e.Value) != 8 {
			t.Errorf("hwID extension value is %d bytes, want the 8 bytes untagged as KDS sends them", len(e.Value))
		}
	}
	if _, err := ca.NewNode(sim.NodeConfig{Product: "Milan-B1", TCB: attest.TCBParts{FMC: 1}}); err == nil || !strings.Contains(err.Error(), "no FMC") {
		t.Errorf("FMC on a Milan node: err = %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
