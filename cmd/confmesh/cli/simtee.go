package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
)

// simTEEConfig is what a simulated node reports, for either simulated TEE.
type simTEEConfig struct {
	dir, tee, name string
	measurement    []byte // SEV-SNP launch measurement or TDX MRTD
	debug          bool
	vmpl           uint32
}

// openSimTEE opens a simulated node on the simulated TEE whose CA is in
// dir: sim-tdx when dir holds a simulated TDX CA, sim-snp when it holds a
// simulated AMD CA; an empty dir gets a new CA of kind tee (default sim-snp).
// It returns the provider and the root file a policy must name.
func openSimTEE(c simTEEConfig) (attest.Provider, string, error) {
	kind := c.tee
	_, snpErr := os.Stat(filepath.Join(c.dir, "ca.json"))
	have := ""
	switch {
	case simtdx.IsCADir(c.dir):
		have = attest.TEESimTDX
	case snpErr == nil:
		have = attest.TEESimSnp
	}
	switch {
	case have != "" && kind != "" && kind != have:
		return nil, "", fmt.Errorf("%s holds a %s CA, not %s", c.dir, have, kind)
	case have != "":
		kind = have
	case kind == "":
		kind = attest.TEESimSnp
	}
	switch kind {
	case attest.TEESimSnp:
		ca, err := sim.OpenCA(c.dir, "")
		if err != nil {
			return nil, "", err
		}
		n, err := ca.OpenNode(c.name, sim.NodeConfig{Measurement: c.measurement, Debug: c.debug, VMPL: c.vmpl})
		if err != nil {
			return nil, "", fmt.Errorf("simulated node %q: %w", c.name, err)
		}
		return n, ca.RootPath(), nil
	case attest.TEESimTDX:
		if c.vmpl != 0 {
			return nil, "", fmt.Errorf("VMPL %d: TDX has no VMPLs", c.vmpl)
		}
		ca, err := simtdx.OpenCA(c.dir)
		if err != nil {
			return nil, "", err
		}
		n, err := ca.OpenNode(c.name, simtdx.NodeConfig{MRTD: c.measurement, Debug: c.debug})
		if err != nil {
			return nil, "", fmt.Errorf("simulated node %q: %w", c.name, err)
		}
		return n, ca.RootPath(), nil
	default:
		return nil, "", fmt.Errorf("simulated TEE %q: want %s or %s", kind, attest.TEESimSnp, attest.TEESimTDX)
	}
}
