package attest_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
)

// This file builds Turin VCEKs in the format AMD's key distribution service
// publishes (AMD publication #57230, "VCEK certificate and KDS interface
// specification", the structVersion 1 table for family 1Ah), independently of
// the verifier's parser and of the simulator:
//
//	1.3.6.1.4.1.3704.1.1    structVersion  INTEGER 1
//	1.3.6.1.4.1.3704.1.2    productName1   IA5String "Turin-B0"
//	1.3.6.1.4.1.3704.1.3.1  blSPL          INTEGER
//	1.3.6.1.4.1.3704.1.3.2  teeSPL         INTEGER
//	1.3.6.1.4.1.3704.1.3.3  snpSPL         INTEGER
//	1.3.6.1.4.1.3704.1.3.5-7 spl_5..spl_7  INTEGER (reserved, 0)
//	1.3.6.1.4.1.3704.1.3.8  ucodeSPL       INTEGER
//	1.3.6.1.4.1.3704.1.3.9  fmcSPL         INTEGER
//	1.3.6.1.4.1.3704.1.4    hwID           8 bytes, untagged (as KDS sends it)
//
// There is no spl_4 (Turin's TCB byte 4 is reserved, SNP moved to byte 3).
// A Turin report's CHIP_ID is the 8-byte hardware ID followed by zeros.

var kdsArc = []int{1, 3, 6, 1, 4, 1, 3704, 1}

func kdsOID(tail ...int) asn1.ObjectIdentifier {
	return append(append(asn1.ObjectIdentifier{}, kdsArc...), tail...)
}

// turinVCEKSpec is what one test VCEK certifies.
type turinVCEKSpec struct {
	product string // productName1, "Turin-B0" when empty
	hwid    []byte // the hwID extension's value, as sent
	tcb     attest.TCBParts
	// mutate, when set, edits the extensions before signing.
	mutate func([]pkix.Extension) []pkix.Extension
}

func (s turinVCEKSpec) extensions(t testing.TB) []pkix.Extension {
	t.Helper()
	product := s.product
	if product == "" {
		product = "Turin-B0"
	}
	i := func(v int) []byte {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	name, err := asn1.MarshalWithParams(product, "ia5")
	if err != nil {
		t.Fatal(err)
	}
	exts := []pkix.Extension{
		{Id: kdsOID(1), Value: i(1)},
		{Id: kdsOID(2), Value: name},
		{Id: kdsOID(3, 1), Value: i(int(s.tcb.Bootloader))},
		{Id: kdsOID(3, 2), Value: i(int(s.tcb.TEE))},
		{Id: kdsOID(3, 3), Value: i(int(s.tcb.SNP))},
		{Id: kdsOID(3, 5), Value: i(0)},
		{Id: kdsOID(3, 6), Value: i(0)},
		{Id: kdsOID(3, 7), Value: i(0)},
		{Id: kdsOID(3, 8), Value: i(int(s.tcb.Microcode))},
		{Id: kdsOID(3, 9), Value: i(int(s.tcb.FMC))},
		{Id: kdsOID(4), Value: s.hwid},
	}
	if s.mutate != nil {
		exts = s.mutate(exts)
	}
	return exts
}

// turinTCBRaw lays out a Turin TCB_VERSION by hand: FMC byte 0, bootloader
// 1, TEE 2, SNP 3, bytes 4-6 reserved, microcode 7.
func turinTCBRaw(p attest.TCBParts) uint64 {
	return binary.LittleEndian.Uint64([]byte{p.FMC, p.Bootloader, p.TEE, p.SNP, 0, 0, 0, p.Microcode})
}

// turinKDS is a simulated ARK/ASK for Turin (fresh RSA keys) that issues
// real-format Turin VCEKs.
type turinKDS struct {
	ark, ask       *rsa.PrivateKey
	arkCert, askCt *x509.Certificate
	rootPath       string
	created        time.Time
}

var (
	turinKDSOnce sync.Once
	turinKDSVal  *turinKDS
	turinKDSErr  error
)

func getTurinKDS(t testing.TB) *turinKDS {
	t.Helper()
	turinKDSOnce.Do(func() {
		k := &turinKDS{created: time.Now().Add(-time.Hour).Truncate(time.Second)}
		if k.ark, turinKDSErr = rsa.GenerateKey(rand.Reader, 2048); turinKDSErr != nil {
			return
		}
		if k.ask, turinKDSErr = rsa.GenerateKey(rand.Reader, 2048); turinKDSErr != nil {
			return
		}
		var throwaway *ecdsa.PrivateKey
		if throwaway, turinKDSErr = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); turinKDSErr != nil {
			return
		}
		var s *sevtest.AmdSigner
		if s, turinKDSErr = k.builder(throwaway, nil).TestOnlyCertChain(); turinKDSErr != nil {
			return
		}
		k.arkCert, k.askCt = s.Ark, s.Ask
		var dir string
		if dir, turinKDSErr = os.MkdirTemp("", "confmesh-attest-turinkds-"); turinKDSErr != nil {
			return
		}
		k.rootPath = filepath.Join(dir, "root.pem")
		root := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ask.Raw})
		root = append(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
		turinKDSErr = os.WriteFile(k.rootPath, root, 0o644)
		turinKDSVal = k
	})
	if turinKDSErr != nil {
		t.Fatalf("Turin KDS: %v", turinKDSErr)
	}
	return turinKDSVal
}

func (k *turinKDS) builder(vcek *ecdsa.PrivateKey, exts []pkix.Extension) *sevtest.AmdSignerBuilder {
	b := &sevtest.AmdSignerBuilder{
		Keys:        &sevtest.AmdKeys{Ark: k.ark, Ask: k.ask, Asvk: k.ask, Vcek: vcek},
		ProductName: "Turin-B0", ArkCreationTime: k.created, AskCreationTime: k.created,
		AsvkCreationTime: k.created, VcekCreationTime: k.created,
	}
	b.VcekCustom.Extensions = exts
	return b
}

// vcek issues a VCEK for spec under this ARK/ASK.
func (k *turinKDS) vcek(t testing.TB, spec turinVCEKSpec) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := k.builder(key, spec.extensions(t)).TestOnlyCertChain()
	if err != nil {
		t.Fatalf("issue Turin VCEK: %v", err)
	}
	return key, s.Vcek
}

// turinReporter is a Turin guest: it signs reports (crypto/rand) with its
// VCEK key and ships the VCEK, ASK and ARK.
type turinReporter struct {
	kds    *turinKDS
	key    *ecdsa.PrivateKey
	vcek   *x509.Certificate
	chipID []byte // 64 bytes
	tcb    uint64
	meas   []byte
}

func (r *turinReporter) TEE() string { return attest.TEESimSnp }

func (r *turinReporter) Report(reportData [64]byte) (*attestv1.Evidence, error) {
	rep := &spb.Report{
		Version:         3,
		Policy:          abi.SnpPolicyToBytes(abi.SnpPolicy{ABIMajor: 1, ABIMinor: 55}),
		FamilyId:        make([]byte, abi.FamilyIDSize),
		ImageId:         make([]byte, abi.ImageIDSize),
		SignatureAlgo:   abi.SignEcdsaP384Sha384,
		CurrentTcb:      r.tcb,
		PlatformInfo:    1 << 1,
		ReportData:      reportData[:],
		Measurement:     r.meas,
		HostData:        make([]byte, abi.HostDataSize),
		IdKeyDigest:     make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId:        bytes.Repeat([]byte{7}, abi.ReportIDSize),
		ReportIdMa:      bytes.Repeat([]byte{0xff}, abi.ReportIDMASize),
		ReportedTcb:     r.tcb,
		ChipId:          r.chipID,
		CommittedTcb:    r.tcb,
		CurrentBuild:    1, CurrentMinor: 55, CurrentMajor: 1,
		CommittedBuild: 1, CommittedMinor: 55, CommittedMajor: 1,
		LaunchTcb:    r.tcb,
		Cpuid1EaxFms: abi.MaskedCpuid1EaxFromSevProduct(&spb.SevProduct{Name: spb.SevProduct_SEV_PRODUCT_TURIN}),
		Signature:    make([]byte, abi.SignatureSize),
	}
	raw, err := abi.ReportToAbiBytes(rep)
	if err != nil {
		return nil, err
	}
	h := crypto.SHA384.New()
	h.Write(abi.SignedComponent(raw))
	rs, ss, err := ecdsa.Sign(rand.Reader, r.key, h.Sum(nil))
	if err != nil {
		return nil, err
	}
	if err := abi.SetSignature(rs, ss, raw); err != nil {
		return nil, err
	}
	return &attestv1.Evidence{Tee: attest.TEESimSnp, Report: raw,
		Chain: &attestv1.CertChain{Vcek: r.vcek.Raw, Ask: r.kds.askCt.Raw, Ark: r.kds.arkCert.Raw}}, nil
}

// turinChipID is the 64-byte CHIP_ID of a Turin chip: its 8-byte hardware ID
// then zeros.
func turinChipID(hwid []byte) []byte {
	return append(append([]byte{}, hwid...), make([]byte, 56)...)
}

var turinTCB = attest.TCBParts{FMC: 4, Bootloader: 5, TEE: 6, SNP: 7, Microcode: 8}

// turinReporterFor is a guest on chip hwid whose VCEK is issued from spec
// (spec.hwid defaults to hwid, spec.tcb to turinTCB).
func turinReporterFor(t testing.TB, hwid []byte, spec turinVCEKSpec) *turinReporter {
	t.Helper()
	k := getTurinKDS(t)
	if spec.hwid == nil {
		spec.hwid = hwid
	}
	if spec.tcb == (attest.TCBParts{}) {
		spec.tcb = turinTCB
	}
	key, cert := k.vcek(t, spec)
	m := make([]byte, 48)
	m[0] = 0x7a
	return &turinReporter{kds: k, key: key, vcek: cert, chipID: turinChipID(hwid), tcb: turinTCBRaw(turinTCB), meas: m}
}

func (r *turinReporter) policy(roots ...attest.RootRef) *attest.Policy {
	if roots == nil {
		roots = []attest.RootRef{{Kind: attest.RootSimulated, File: r.kds.rootPath}}
	}
	return &attest.Policy{
		TrustDomain: "test.local", Measurements: []attest.HexBytes{r.meas}, AllowedVMPLs: []uint32{0},
		MaxEvidenceAge: attest.Duration(10 * time.Minute),
		TrustedRoots:   roots,
		MinimumTCB:     attest.TCBMinimum{FMC: 4, Bootloader: 5, TEE: 6, SNP: 7, Microcode: 8},
	}
}

var turinHWID = []byte{0x5e, 0x11, 0xc0, 0xde, 0x01, 0x23, 0x45, 0x67}

// TestTurinVCEKVerifies: a report signed by a Turin VCEK in the published
// format (8-byte hwID, fmcSPL, Turin TCB layout) verifies, and the claims
// show the Turin product, its TCB with FMC, and the 64-byte chip ID.
func TestTurinVCEKVerifies(t *testing.T) {
	r := turinReporterFor(t, turinHWID, turinVCEKSpec{})
	// The published format is what this test feeds the verifier: go-sev-guest
	// v0.15.0 itself cannot read it.
	if _, err := kds.VcekCertificateExtensions(r.vcek); err == nil {
		t.Fatal("go-sev-guest parses this VCEK: the test no longer builds the Turin format it refuses")
	}
	c, err := verifyVia(t, r, r.policy())
	if err != nil {
		t.Fatalf("Turin evidence refused: %v", err)
	}
	if c.Product != attest.ProductTurin || c.ReportedTCB.FMC == nil || c.ReportedTCB.Parts() != turinTCB ||
		!bytes.Equal(c.ChipID, turinChipID(turinHWID)) || c.Signer != abi.VcekReportSigner.String() {
		t.Errorf("claims: product %s TCB %s chip %x signer %s", c.Product, c.ReportedTCB, c.ChipID, c.Signer)
	}
	// A second report hits the cached chain verdict and still verifies.
	if _, err := verifyVia(t, r, r.policy()); err != nil {
		t.Fatalf("second Turin report refused: %v", err)
	}
}

// TestTurinVCEKRefusedByAMDRoots: the simulated Turin chain does not end at
// AMD's pinned roots (Turin's among them).
func TestTurinVCEKRefusedByAMDRoots(t *testing.T) {
	r := turinReporterFor(t, turinHWID, turinVCEKSpec{})
	_, err := verifyVia(t, r, r.policy(attest.RootRef{Kind: attest.RootAMD}))
	if !errors.Is(err, attest.ErrUntrustedRoot) || !strings.Contains(err.Error(), "amd/Turin") {
		t.Fatalf("err = %v, want %v naming amd/Turin", err, attest.ErrUntrustedRoot)
	}
}

// without returns the extensions minus the one with oid.
func without(oid asn1.ObjectIdentifier) func([]pkix.Extension) []pkix.Extension {
	return func(exts []pkix.Extension) []pkix.Extension {
		var out []pkix.Extension
		for _, e := range exts {
			if !e.Id.Equal(oid) {
				out = append(out, e)
			}
		}
		return out
	}
}

// TestTurinVCEKRefusals: what a Turin VCEK must not be. Each case is an
// attack or a certificate AMD does not issue; each is refused with the
// reason named.
func TestTurinVCEKRefusals(t *testing.T) {
	other := []byte{0xba, 0xd0, 0xc0, 0xde, 0x01, 0x23, 0x45, 0x67}
	// The structVersion 0 form with Turin's raw TCB bytes and a 64-byte
	// hwID: what go-sev-guest v0.15.0 reads, and what the simulator used to
	// issue for Turin.
	structV0 := func([]pkix.Extension) []pkix.Extension {
		return sevtest.CustomExtensions(kds.DecomposeTCBVersion(kds.TCBVersion(turinTCBRaw(turinTCB))), turinChipID(turinHWID), "", "Turin-B0")
	}
	for _, c := range []struct {
		name string
		spec turinVCEKSpec
		want error
		msg  string
	}{
		// A compromised chip's VCEK key signs a report claiming another
		// chip's CHIP_ID; only the hwID check ties the VCEK to the chip.
		{"VCEK of another chip", turinVCEKSpec{hwid: other}, attest.ErrWrongChip, "is not the chip of the Turin VCEK (hwID bad0c0de"},
		{"64-byte hwID in a Turin VCEK", turinVCEKSpec{hwid: turinChipID(turinHWID)}, attest.ErrMalformedChain, "hwID: 64 bytes, want 8"},
		{"7-byte hwID", turinVCEKSpec{hwid: turinHWID[:7]}, attest.ErrMalformedChain, "hwID: 7 bytes, want 8"},
		{"no hwID", turinVCEKSpec{mutate: without(kdsOID(4))}, attest.ErrMalformedChain, "no hwID"},
		{"no fmcSPL", turinVCEKSpec{mutate: without(kdsOID(3, 9))}, attest.ErrMalformedChain, "no fmcSPL"},
		{"spl_4 in a Turin VCEK", turinVCEKSpec{mutate: func(e []pkix.Extension) []pkix.Extension {
			v, _ := asn1.Marshal(0)
			return append(e, pkix.Extension{Id: kdsOID(3, 4), Value: v})
		}}, attest.ErrMalformedChain, "spl_4"},
		{"unknown extension", turinVCEKSpec{mutate: func(e []pkix.Extension) []pkix.Extension {
			return append(e, pkix.Extension{Id: kdsOID(9), Value: []byte{5, 0}})
		}}, attest.ErrMalformedChain, "1.3.6.1.4.1.3704.1.9"},
		// The Milan-form structVersion 0 with a Turin name would be read
		// with the Milan TCB layout: refused, not guessed.
		{"Turin named in a structVersion 0 VCEK", turinVCEKSpec{mutate: structV0}, attest.ErrMalformedChain, "Turin certificate with structVersion 0"},
		{"Milan named in a structVersion 1 VCEK", turinVCEKSpec{product: "Milan-B1"}, attest.ErrMalformedChain, "Milan certificate with structVersion 1"},
		// The VCEK certifies a lower TCB than the report claims (FMC 3,
		// report 4): validate, reading the stand-in, refuses it.
		{"VCEK certifies another TCB", turinVCEKSpec{tcb: attest.TCBParts{FMC: 3, Bootloader: 5, TEE: 6, SNP: 7, Microcode: 8}}, attest.ErrValidation, "TCB of the V[CL]EK certificate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := turinReporterFor(t, turinHWID, c.spec)
			_, err := verifyVia(t, r, r.policy())
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, c.want, c.msg)
			}
		})
	}
}

// TestTurinReportSignature: a Turin report altered after signing is refused
// on a fresh chain verdict and on a cached one.
func TestTurinReportSignature(t *testing.T) {
	r := turinReporterFor(t, turinHWID, turinVCEKSpec{})
	now := time.Now()
	v, err := attest.NewVerifier(r.policy(), attest.Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for _, round := range []string{"fresh", "cached"} {
		bd := newBound(t, now)
		ev, err := attest.Attest(r, bd.b, now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(ev, bd.want); err != nil {
			t.Fatalf("%s: genuine report refused: %v", round, err)
		}
		ev.Report[0x30] ^= 1 // guest SVN
		if _, err := v.Verify(ev, bd.want); !errors.Is(err, attest.ErrSignature) {
			t.Fatalf("%s: altered report: err = %v, want %v", round, err, attest.ErrSignature)
		}
	}
}

// TestMilanVCEKOfAnotherChip: the hwID check holds for Milan too (all 64
// bytes), with the same reason.
func TestMilanVCEKOfAnotherChip(t *testing.T) {
	f := getFixture(t)
	// One VCEK key, certified for two chips (a saved node reopened with
	// another chip ID keeps its key): chip A's VCEK then vouches for a
	// report that claims chip B.
	name := fmt.Sprintf("wrongchip-%d", time.Now().UnixNano())
	a, err := f.ca.OpenNode(name, sim.NodeConfig{Measurement: f.measurement})
	if err != nil {
		t.Fatal(err)
	}
	chipB := append([]byte{}, a.ChipID()...)
	chipB[63] ^= 1
	b, err := f.ca.OpenNode(name, sim.NodeConfig{Measurement: f.measurement, ChipID: chipB})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	bd := newBound(t, now)
	v := f.verifier(t, f.simPolicy(), now)
	ev := f.evidence(t, b, bd, now)
	if _, err := v.Verify(ev, bd.want); err != nil {
		t.Fatalf("chip B with its own VCEK refused: %v", err)
	}
	ev.Chain.Vcek = a.VCEK().Raw
	_, err = v.Verify(ev, bd.want)
	if !errors.Is(err, attest.ErrWrongChip) || attest.Reason(err) != "wrong_chip" || !strings.Contains(err.Error(), "Milan VCEK") {
		t.Fatalf("err = %v, want %v", err, attest.ErrWrongChip)
	}
}
