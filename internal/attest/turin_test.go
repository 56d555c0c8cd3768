package attest_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
)

var (
	turinOnce sync.Once
	turinCA   *sim.CA
	turinErr  error
)

// getTurinCA is a simulated CA certifying Turin-B0, made once.
func getTurinCA(t *testing.T) *sim.CA {
	t.Helper()
	turinOnce.Do(func() {
		var dir string
		if dir, turinErr = os.MkdirTemp("", "confmesh-attest-turin-"); turinErr != nil {
			return
		}
		if turinCA, turinErr = sim.NewTestCA("Turin-B0"); turinErr != nil {
			return
		}
		turinErr = turinCA.Save(filepath.Join(dir, "ca"))
	})
	if turinErr != nil {
		t.Fatalf("Turin CA: %v", turinErr)
	}
	return turinCA
}

func turinPolicy(ca *sim.CA, m []byte, min attest.TCBMinimum) *attest.Policy {
	return &attest.Policy{
		TrustDomain: "test.local", Measurements: []attest.HexBytes{m}, AllowedVMPLs: []uint32{0},
		MaxEvidenceAge: attest.Duration(10 * time.Minute),
		TrustedRoots:   []attest.RootRef{{Kind: attest.RootSimulated, File: ca.RootPath()}},
		MinimumTCB:     min,
	}
}

// verifyTCB attests a node of ca with tcb and verifies it under p.
func verifyTCB(t *testing.T, ca *sim.CA, p *attest.Policy, tcb attest.TCBParts) (*attest.Claims, error) {
	t.Helper()
	n, err := ca.NewNode(sim.NodeConfig{Measurement: p.Measurements[0], TCB: tcb})
	if err != nil {
		t.Fatal(err)
	}
	return verifyVia(t, n, p)
}

// TestTurinTCBDecodedPerProduct is the attack: a Turin node whose TEE SPL
// is 0 must be refused by minimumTCB.tee 3, although its bootloader byte
// (where Milan keeps the TEE) is 9. On the Milan-only decoder it passed.
func TestTurinTCBDecodedPerProduct(t *testing.T) {
	ca := getTurinCA(t)
	m := make([]byte, 48)
	m[0] = 0x5a
	all := attest.TCBParts{FMC: 9, Bootloader: 9, TEE: 9, SNP: 9, Microcode: 9}
	with := func(f func(p *attest.TCBParts)) attest.TCBParts { p := all; f(&p); return p }
	for _, c := range []struct {
		name string
		min  attest.TCBMinimum
		tcb  attest.TCBParts
		want error
	}{
		{"TEE 0 under tee 3", attest.TCBMinimum{TEE: 3}, with(func(p *attest.TCBParts) { p.TEE = 0 }), attest.ErrTCBTEE},
		{"SNP 2 under snp 3", attest.TCBMinimum{SNP: 3}, with(func(p *attest.TCBParts) { p.SNP = 2 }), attest.ErrTCBSNP},
		{"bootloader 1 under bootloader 3", attest.TCBMinimum{Bootloader: 3}, with(func(p *attest.TCBParts) { p.Bootloader = 1 }), attest.ErrTCBBootloader},
		{"FMC 2 under fmc 3", attest.TCBMinimum{FMC: 3}, with(func(p *attest.TCBParts) { p.FMC = 2 }), attest.ErrTCBFMC},
		{"microcode 8 under microcode 9", attest.TCBMinimum{Microcode: 9}, with(func(p *attest.TCBParts) { p.Microcode = 8 }), attest.ErrTCBMicrocode},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := verifyTCB(t, ca, turinPolicy(ca, m, c.min), c.tcb)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), "Turin reported") {
				t.Errorf("message %q does not name the product", err)
			}
		})
	}

	// A compliant Turin node passes a minimum on every part, and its
	// claims show the Turin components, FMC included.
	min := attest.TCBMinimum{FMC: 3, Bootloader: 3, TEE: 3, SNP: 3, Microcode: 3}
	c, err := verifyTCB(t, ca, turinPolicy(ca, m, min), attest.TCBParts{FMC: 4, Bootloader: 5, TEE: 6, SNP: 7, Microcode: 8})
	if err != nil {
		t.Fatalf("compliant Turin node refused: %v", err)
	}
	if c.Product != attest.ProductTurin || c.ReportedTCB.FMC == nil || *c.ReportedTCB.FMC != 4 ||
		c.ReportedTCB.Bootloader != 5 || c.ReportedTCB.TEE != 6 || c.ReportedTCB.SNP != 7 || c.ReportedTCB.Microcode != 8 {
		t.Errorf("claims product %s TCB %s, want Turin fmc=4 bootloader=5 tee=6 snp=7 microcode=8", c.Product, c.ReportedTCB)
	}
	j, _ := json.Marshal(c.ReportedTCB)
	if !strings.Contains(string(j), `"fmc":4`) {
		t.Errorf("claims JSON %s has no fmc", j)
	}
}

// TestMilanTCBUnchanged: Milan and Genoa still decode as before (SNP in
// byte 6), carry no FMC, and a policy's fmc does not apply to them.
func TestMilanTCBUnchanged(t *testing.T) {
	f := getFixture(t)
	p := f.simPolicy()
	p.TrustedRoots = append(p.TrustedRoots, attest.RootRef{Kind: attest.RootAMD}) // a Turin root, so fmc may be set
	p.MinimumTCB = attest.TCBMinimum{FMC: 100, SNP: 3}
	c, err := verifyTCB(t, f.ca, p, attest.TCBParts{Bootloader: 1, TEE: 2, SNP: 3, Microcode: 4})
	if err != nil {
		t.Fatalf("Milan node refused: %v", err)
	}
	if c.ReportedTCB.FMC != nil || c.ReportedTCB.Raw != 0x0403000000000201 {
		t.Errorf("Milan TCB %s (fmc %v), want raw 0x0403000000000201 and no fmc", c.ReportedTCB, c.ReportedTCB.FMC)
	}
	j, _ := json.Marshal(c.ReportedTCB)
	if strings.Contains(string(j), "fmc") {
		t.Errorf("Milan claims JSON %s shows an fmc", j)
	}
	for _, line := range []string{attest.ProductMilan, attest.ProductGenoa} {
		tcb, err := attest.DecodeTCB(line, 0x0403000000000201)
		if err != nil || tcb.Bootloader != 1 || tcb.TEE != 2 || tcb.SNP != 3 || tcb.Microcode != 4 || tcb.FMC != nil {
			t.Errorf("%s decode: %+v %v", line, tcb, err)
		}
	}
	tcb, err := attest.DecodeTCB(attest.ProductTurin, 0x0403000000000201)
	if err != nil || *tcb.FMC != 1 || tcb.Bootloader != 2 || tcb.TEE != 0 || tcb.SNP != 0 || tcb.Microcode != 4 {
		t.Errorf("Turin decode of the same bytes: %+v %v", tcb, err)
	}
	if _, err := attest.DecodeTCB("Venice", 0); err == nil {
		t.Error("unknown product decoded with a guessed layout")
	}
}

// TestFMCNeedsTurinRoot: minimumTCB.fmc in a policy whose roots certify no
// Turin product can check nothing, so the policy is refused.
func TestFMCNeedsTurinRoot(t *testing.T) {
	f := getFixture(t)
	p := f.simPolicy()
	p.MinimumTCB.FMC = 1
	if _, err := attest.NewVerifier(p, attest.Options{}); err == nil || !strings.Contains(err.Error(), "minimumTCB.fmc") {
		t.Fatalf("fmc with a Milan-only root: err = %v", err)
	}
	ca := getTurinCA(t)
	if _, err := attest.NewVerifier(turinPolicy(ca, make([]byte, 48), attest.TCBMinimum{FMC: 1}), attest.Options{}); err != nil {
		t.Fatalf("fmc with a Turin root: %v", err)
	}
}

// TestVCEKURLPerProduct: the VCEK URL of a Turin chip carries its FMC level
// and an 8-byte hardware ID; Milan's is go-sev-guest's form, unchanged.
func TestVCEKURLPerProduct(t *testing.T) {
	chip := make([]byte, 64)
	for i := range chip {
		chip[i] = byte(i + 1)
	}
	raw, err := attest.EncodeTCB(attest.ProductTurin, attest.TCBParts{FMC: 3, Bootloader: 1, TEE: 2, SNP: 4, Microcode: 5})
	if err != nil {
		t.Fatal(err)
	}
	u, err := attest.VCEKURL(attest.ProductTurin, chip, raw)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(u, "/vcek/v1/Turin/0102030405060708?fmcSPL=03&blSPL=01&teeSPL=02&snpSPL=04&ucodeSPL=05") {
		t.Errorf("Turin URL %s", u)
	}
	raw, _ = attest.EncodeTCB(attest.ProductMilan, attest.TCBParts{Bootloader: 1, TEE: 2, SNP: 4, Microcode: 5})
	u, _ = attest.VCEKURL(attest.ProductMilan, chip, raw)
	if !strings.Contains(u, "/vcek/v1/Milan/0102030405060708090a") || !strings.HasSuffix(u, "?blSPL=1&teeSPL=2&snpSPL=4&ucodeSPL=5") {
		t.Errorf("Milan URL %s", u)
	}
}
