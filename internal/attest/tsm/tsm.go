// Package tsm produces evidence through Linux configfs-tsm
// (/sys/kernel/config/tsm/report), the one kernel interface both SEV-SNP
// and TDX guests offer: the provider attribute names the TEE, outblob is
// the SEV-SNP report or the TDX quote, and for SEV-SNP the auxblob is the
// certificate table (VCEK, ASK, ARK) the host provisioned.
package tsm

import (
	"errors"
	"fmt"
	"strings"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/snp"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
)

// ErrNoTSM means the kernel offers no configfs-tsm report interface.
var ErrNoTSM = errors.New("no configfs-tsm report interface (/sys/kernel/config/tsm/report)")

// Provider names configfs-tsm reports by.
const (
	ProviderSEV = "sev_guest"
	ProviderTDX = "tdx_guest"
)

// Provider implements attest.Provider over configfs-tsm.
type Provider struct {
	client configfsi.Client
	tee    string
}

// Open uses this machine's configfs-tsm. ErrNoTSM when there is none.
func Open() (*Provider, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoTSM, err)
	}
	return New(c)
}

// New asks the configfs-tsm client which TEE serves it (tests pass
// faketsm). A provider other than SEV-SNP or TDX is an error.
func New(c configfsi.Client) (*Provider, error) {
	r, err := report.Create(c, &report.Request{})
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm: create report entry: %w", err)
	}
	// Writing inblob generates nothing (only reading outblob does); it
	// brings the entry to a state every implementation answers in.
	rerr := r.WriteOption("inblob", make([]byte, 64))
	var name []byte
	if rerr == nil {
		name, rerr = r.ReadOption("provider")
	}
	if derr := r.Destroy(); rerr == nil && derr != nil {
		rerr = derr
	}
	if rerr != nil {
		return nil, fmt.Errorf("configfs-tsm: read provider: %w", rerr)
	}
	p := &Provider{client: c}
	switch prov := strings.TrimSpace(string(name)); prov {
	case ProviderSEV:
		p.tee = attest.TEESevSnp
	case ProviderTDX:
		p.tee = attest.TEETDX
	default:
		return nil, fmt.Errorf("configfs-tsm provider %q is neither %s nor %s", prov, ProviderSEV, ProviderTDX)
	}
	return p, nil
}

// TEE implements attest.Provider.
func (p *Provider) TEE() string { return p.tee }

// Report implements attest.Provider.
func (p *Provider) Report(reportData [64]byte) (*attestv1.Evidence, error) {
	resp, err := report.Get(p.client, &report.Request{InBlob: reportData[:], GetAuxBlob: p.tee == attest.TEESevSnp})
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm report: %w", err)
	}
	switch p.tee {
	case attest.TEESevSnp:
		return snp.FromRawQuote(append(append([]byte(nil), resp.OutBlob...), resp.AuxBlob...))
	default:
		// outblob is the quote in the buffer the quote-generation stack
		// filled, zero padding included; peers get the quote alone.
		quote, err := attest.TrimTDXQuote(resp.OutBlob)
		if err != nil {
			return nil, fmt.Errorf("configfs-tsm outblob (%d bytes): %w", len(resp.OutBlob), err)
		}
		return &attestv1.Evidence{Tee: attest.TEETDX, Report: append([]byte(nil), quote...)}, nil
	}
}

// OpenHardware opens the TEE this machine runs in: configfs-tsm when the
// kernel has it (SEV-SNP or TDX), otherwise /dev/sev-guest for SEV-SNP.
func OpenHardware() (attest.Provider, error) {
	p, terr := Open()
	if terr == nil {
		return p, nil
	}
	s, serr := snp.Open()
	if serr == nil {
		return s, nil
	}
	return nil, fmt.Errorf("no TEE found: %v; %v", terr, serr)
}
