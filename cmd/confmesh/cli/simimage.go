package cli

import (
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/measure/tdx"
	"github.com/spf13/pflag"
)

// simImageFlags let a simulated node report the measurement computed from
// a node image (the same computation as `confmesh measure`) instead of a
// raw --measurement value: --sim-ovmf and friends for sim-snp, --sim-tdvf
// for sim-tdx.
type simImageFlags struct {
	snp  snpLaunchFlags
	tdvf string
}

func (f *simImageFlags) add(fl *pflag.FlagSet) {
	f.snp.prefix = "sim-"
	f.snp.add(fl, false)
	fl.StringVar(&f.tdvf, "sim-tdvf", "", "simulated TDX: report the MRTD computed from this TDVF image `FILE` (as `confmesh measure tdx`)")
}

// tee is the simulated TEE the image flags are for ("" when none is set).
func (f *simImageFlags) tee(fl *pflag.FlagSet) string {
	switch {
	case fl == nil:
		return ""
	case f.snp.set(fl):
		return attest.TEESimSnp
	case fl.Changed("sim-tdvf"):
		return attest.TEESimTDX
	}
	return ""
}

// measurement returns the measurement a simulated node of kind tee
// reports: explicit (from measurementFlag) when no image flag is set, else
// the one computed from the image. Both, or image flags of the other TEE,
// are usage errors.
func (f *simImageFlags) measurement(fl *pflag.FlagSet, tee string, explicit []byte, measurementFlag string) ([]byte, error) {
	if f.snp.set(fl) && fl.Changed("sim-tdvf") {
		return nil, usageErrorf("--sim-tdvf and --sim-ovmf: a simulated node runs one TEE")
	}
	img := f.tee(fl)
	if img == "" {
		return explicit, nil
	}
	if fl.Changed(measurementFlag) {
		return nil, usageErrorf("--%s and the --sim-ovmf/--sim-tdvf image flags: give the measurement or the image it is computed from, not both", measurementFlag)
	}
	if img != tee {
		return nil, usageErrorf("the image flags describe a %s node, but the simulated TEE is %s", img, tee)
	}
	if img == attest.TEESimTDX {
		b, err := readLimited("sim-tdvf", f.tdvf, maxFirmwareSize)
		if err != nil {
			return nil, err
		}
		m, err := tdx.MRTD(b)
		if err != nil {
			return nil, failf("--sim-tdvf %s: %v", f.tdvf, err)
		}
		return m, nil
	}
	m, _, err := f.snp.measurement()
	return m, err
}
