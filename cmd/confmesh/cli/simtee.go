package cli

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
	tdxtrust "github.com/google/go-tdx-guest/verify/trust"
	"github.com/spf13/pflag"
)

// simTEEConfig is what a simulated node reports, for either simulated TEE.
type simTEEConfig struct {
	dir, tee, name string
	measurement    []byte   // SEV-SNP launch measurement or TDX MRTD
	rtmrs          [][]byte // TDX RTMR0-3 (nil entries: zero); nil: all zero
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
		var rtmrs [][]byte
		for _, r := range c.rtmrs {
			if r == nil {
				r = make([]byte, attest.TDXMRTDSize)
			}
			rtmrs = append(rtmrs, r)
		}
		n, err := ca.OpenNode(c.name, simtdx.NodeConfig{MRTD: c.measurement, RTMRs: rtmrs, Debug: c.debug})
		if err != nil {
			return nil, "", fmt.Errorf("simulated node %q: %w", c.name, err)
		}
		return n, ca.RootPath(), nil
	default:
		return nil, "", fmt.Errorf("simulated TEE %q: want %s or %s", kind, attest.TEESimSnp, attest.TEESimTDX)
	}
}

// tdxCollateralFlags say where a long-running verifier (agent, control
// plane) gets Intel collateral for TDX quotes.
type tdxCollateralFlags struct {
	file, pcsURL, pcsCache string
}

func (f *tdxCollateralFlags) add(fl *pflag.FlagSet) {
	fl.StringVar(&f.file, "tdx-collateral", "", "Intel collateral `FILE` (JSON) for TDX quotes: TCB status checked against the policy (expires at its nextUpdate; prefer --pcs-url)")
	fl.StringVar(&f.pcsURL, "pcs-url", "", "fetch TDX collateral from Intel PCS or a PCCS at this base `URL` (cached; a stale copy is served when it fails)")
	fl.StringVar(&f.pcsCache, "pcs-cache", "", "`DIR` caching PCS/PCCS responses (default: <state-dir>/pcs-cache)")
}

// source builds the collateral source; nil when none is configured.
func (f *tdxCollateralFlags) source(stateDir string, log *slog.Logger) (*attest.TDXCollateral, error) {
	switch {
	case f.file != "" && f.pcsURL != "":
		return nil, usageErrorf("--tdx-collateral and --pcs-url: give one source of TDX collateral")
	case f.pcsCache != "" && f.pcsURL == "":
		return nil, usageErrorf("--pcs-cache needs --pcs-url")
	case f.file != "":
		c, err := attest.LoadCollateral(f.file)
		if err != nil {
			return nil, usageErrorf("--tdx-collateral: %v", err)
		}
		log.Info("TDX collateral from file: TDX TCB statuses are checked until it expires", "file", f.file)
		return c, nil
	case f.pcsURL != "":
		u, err := url.Parse(f.pcsURL)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, usageErrorf("--pcs-url %q: want an https URL (scheme, host, optional path prefix)", f.pcsURL)
		}
		dir := f.pcsCache
		if dir == "" {
			dir = filepath.Join(stateDir, "pcs-cache")
		}
		log.Info("TDX collateral from PCS/PCCS, cached", "url", f.pcsURL, "cache", dir)
		return &attest.TDXCollateral{
			Getter:           &attest.PCSGetter{BaseURL: f.pcsURL, Upstream: tdxtrust.DefaultHTTPSGetter(), Dir: dir, Logger: log},
			CheckRevocations: true,
		}, nil
	}
	return nil, nil
}
