// Package snp produces evidence on real AMD SEV-SNP hardware through
// go-sev-guest's client: configfs-tsm when the kernel has it, otherwise
// /dev/sev-guest. It asks for the extended report so the VCEK, ASK and ARK
// the host provisioned travel with the report and verification needs no
// network.
package snp

import (
	"errors"
	"fmt"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
)

// ErrNoDevice means this machine is not an SEV-SNP guest (or the kernel
// exposes neither configfs-tsm reports nor /dev/sev-guest).
var ErrNoDevice = errors.New("no SEV-SNP guest device: neither configfs-tsm (/sys/kernel/config/tsm/report) nor /dev/sev-guest is usable")

// Provider implements attest.Provider on SEV-SNP hardware.
type Provider struct {
	qp client.QuoteProvider
}

// Open finds the guest device. On a machine without SEV-SNP it returns
// ErrNoDevice.
func Open() (*Provider, error) {
	qp, err := client.GetQuoteProvider()
	if err != nil || qp == nil || !qp.IsSupported() {
		return nil, ErrNoDevice
	}
	return New(qp), nil
}

// New wraps a quote provider (tests pass a fake one).
func New(qp client.QuoteProvider) *Provider { return &Provider{qp: qp} }

// TEE implements attest.Provider.
func (p *Provider) TEE() string { return attest.TEESevSnp }

// Report implements attest.Provider.
func (p *Provider) Report(reportData [64]byte) (*attestv1.Evidence, error) {
	raw, err := p.qp.GetRawQuote(reportData)
	if err != nil {
		return nil, fmt.Errorf("get extended report: %w", err)
	}
	return FromRawQuote(raw)
}

// FromRawQuote splits what the guest device returns (the report followed by
// the host's certificate table) into evidence.
func FromRawQuote(raw []byte) (*attestv1.Evidence, error) {
	if len(raw) < abi.ReportSize {
		return nil, fmt.Errorf("%w: quote is %d bytes, shorter than a report (%d)", attest.ErrMalformedReport, len(raw), abi.ReportSize)
	}
	ev := &attestv1.Evidence{Tee: attest.TEESevSnp, Report: append([]byte(nil), raw[:abi.ReportSize]...), Chain: &attestv1.CertChain{}}
	if len(raw) == abi.ReportSize {
		return ev, nil // no certificate table: the verifier may fetch the VCEK
	}
	table := new(abi.CertTable)
	if err := table.Unmarshal(raw[abi.ReportSize:]); err != nil {
		return nil, fmt.Errorf("%w: certificate table: %v", attest.ErrMalformedChain, err)
	}
	get := func(guid string) []byte {
		b, err := table.GetByGUIDString(guid)
		if err != nil {
			return nil
		}
		return b
	}
	ev.Chain.Vcek = get(abi.VcekGUID)
	ev.Chain.Vlek = get(abi.VlekGUID)
	ev.Chain.Ask = get(abi.AskGUID)
	ev.Chain.Ark = get(abi.ArkGUID)
	return ev, nil
}
