package tsm_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
	"github.com/confmesh/confmesh/internal/attest/tsm"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	sevabi "github.com/google/go-sev-guest/abi"
	sevtestdata "github.com/google/go-sev-guest/verify/testdata"
)

// fakeTSM is configfs-tsm faked by go-configfs-tsm's faketsm, answering as
// provider with outblob(inblob) and auxblob.
func fakeTSM(provider string, outblob func(in []byte) []byte, aux []byte) *faketsm.Client {
	sub := faketsm.ReportV7(0)
	def := sub.ReadAttr
	sub.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			return outblob(e.InAttrs["inblob"].Value), nil
		case "auxblob":
			return aux, nil
		}
		return def(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": sub}}
}

// simTDXNode is a node of a new simulated TDX CA.
func simTDXNode(t *testing.T) *simtdx.Node {
	t.Helper()
	ca, err := simtdx.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	n, err := ca.NewNode(simtdx.NodeConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestTDXOverConfigfsTSM: a tdx_guest provider yields tdx evidence whose
// quote is the outblob produced for exactly our report data.
func TestTDXOverConfigfsTSM(t *testing.T) {
	n := simTDXNode(t)
	var seen []byte
	c := fakeTSM(tsm.ProviderTDX, func(in []byte) []byte {
		seen = append([]byte(nil), in...)
		var rd [64]byte
		copy(rd[:], in)
		q, err := n.Quote(rd)
		if err != nil {
			t.Error(err)
		}
		return q
	}, nil)
	p, err := tsm.New(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.TEE() != attest.TEETDX {
		t.Fatalf("TEE %q", p.TEE())
	}
	rd := [64]byte{1, 2, 3}
	ev, err := p.Report(rd)
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetTee() != attest.TEETDX || !bytes.Equal(seen, rd[:]) {
		t.Fatalf("evidence tee %q, inblob %x", ev.GetTee(), seen)
	}
	q, err := attest.ParseTDXQuote(ev.GetReport())
	if err != nil || !bytes.Equal(q.Body.GetReportData(), rd[:]) {
		t.Fatalf("quote: %v", err)
	}
}

// TestTDXOverConfigfsTSMTrimsPadding: an outblob holding the quote in a
// larger zero-filled buffer (as configfs-tsm returns it) yields evidence
// carrying the quote alone; an outblob with a non-zero byte after the quote
// yields no evidence.
func TestTDXOverConfigfsTSMTrimsPadding(t *testing.T) {
	n := simTDXNode(t)
	var quote []byte
	dirty := false
	c := fakeTSM(tsm.ProviderTDX, func(in []byte) []byte {
		var rd [64]byte
		copy(rd[:], in)
		q, err := n.Quote(rd)
		if err != nil {
			t.Error(err)
		}
		quote = q
		out := append(append([]byte(nil), q...), make([]byte, 8000-len(q))...)
		if dirty {
			out[len(out)-1] = 0x5a
		}
		return out
	}, nil)
	p, err := tsm.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Report([64]byte{4, 5, 6})
	if err != nil {
		t.Fatal(err)
	}
	if len(quote) >= 8000 || !bytes.Equal(ev.GetReport(), quote) {
		t.Fatalf("evidence carries %d bytes, the quote is %d (outblob 8000)", len(ev.GetReport()), len(quote))
	}
	dirty = true
	if _, err := p.Report([64]byte{4, 5, 6}); !errors.Is(err, attest.ErrTrailingData) {
		t.Fatalf("outblob with a non-zero byte after the quote: err = %v, want trailing data", err)
	}
}

// TestSNPOverConfigfsTSM: a sev_guest provider yields sev-snp evidence with
// the chain from the auxblob certificate table.
func TestSNPOverConfigfsTSM(t *testing.T) {
	vcek := sevtestdata.VcekBytes
	table := []byte{}
	// One entry (VCEK) then the all-zero terminator, as the kernel returns it.
	guid, _ := hex.DecodeString(strings.ReplaceAll(sevabi.VcekGUID, "-", ""))
	entry := make([]byte, 24)
	copy(entry, guid)
	off := uint32(48)
	entry[16], entry[17], entry[18], entry[19] = byte(off), byte(off>>8), byte(off>>16), byte(off>>24)
	l := uint32(len(vcek))
	entry[20], entry[21], entry[22], entry[23] = byte(l), byte(l>>8), byte(l>>16), byte(l>>24)
	table = append(append(append(table, entry...), make([]byte, 24)...), vcek...)
	c := fakeTSM(tsm.ProviderSEV, func([]byte) []byte { return sevtestdata.AttestationBytes[:sevabi.ReportSize] }, table)
	p, err := tsm.New(c)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := p.Report([64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetTee() != attest.TEESevSnp || len(ev.GetReport()) != sevabi.ReportSize || !bytes.Equal(ev.GetChain().GetVcek(), vcek) {
		t.Fatalf("evidence %q, report %d bytes, vcek %d bytes", ev.GetTee(), len(ev.GetReport()), len(ev.GetChain().GetVcek()))
	}
}

// TestUnknownTSMProviderRefused: a provider that is neither TEE is an error.
func TestUnknownTSMProviderRefused(t *testing.T) {
	if _, err := tsm.New(fakeTSM("arm_cca_guest", func([]byte) []byte { return nil }, nil)); err == nil || !strings.Contains(err.Error(), "arm_cca_guest") {
		t.Fatalf("err = %v", err)
	}
}
