package cli

import (
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/spf13/pflag"
)

// simImageFlags let a simulated node report the measurement computed from
// a node image (the same computation as `confmesh measure`) instead of a
// raw --measurement value: --sim-ovmf and friends for sim-snp, --sim-tdvf
// (with --sim-kernel, --sim-initrd, --sim-append, --sim-memory and
// --sim-kernel-setup for the RTMRs of a direct boot) for sim-tdx.
type simImageFlags struct {
	snp snpLaunchFlags
	tdx tdxBootFlags
}

// snpOnlyFlags are the SEV-SNP image flags a TDX node has no use for
// (kernel, initrd and append serve both).
var snpOnlyFlags = []string{"ovmf", "ovmf-hash", "vcpus", "vcpu-type", "vcpu-sig", "guest-features", "vmm-type"}

func (f *simImageFlags) add(fl *pflag.FlagSet) {
	f.snp.prefix = "sim-"
	f.snp.add(fl, false)
	f.tdx.prefix = "sim-"
	fl.StringVar(&f.tdx.tdvf, "sim-tdvf", "", "simulated TDX: report the MRTD computed from this TDVF image `FILE`, and with --sim-kernel the RTMRs of that direct boot (as `confmesh measure tdx`)")
	f.tdx.add(fl, false)
}

func changedAny(fl *pflag.FlagSet, names ...string) bool {
	for _, n := range names {
		if fl.Lookup("sim-"+n) != nil && fl.Changed("sim-"+n) {
			return true
		}
	}
	return false
}

// tee is the simulated TEE the image flags are for ("" when none is set).
func (f *simImageFlags) tee(fl *pflag.FlagSet) string {
	switch {
	case fl == nil:
		return ""
	case changedAny(fl, "tdvf", "memory", "kernel-setup"):
		return attest.TEESimTDX
	case f.snp.set(fl):
		return attest.TEESimSnp
	}
	return ""
}

// measurement returns the measurement a simulated node of kind tee
// reports: explicit (from measurementFlag) when no image flag is set, else
// the one computed from the image; for sim-tdx also the RTMRs computed
// from a direct boot (nil when there is none). Both, or image flags of the
// other TEE, are usage errors.
func (f *simImageFlags) measurement(fl *pflag.FlagSet, tee string, explicit []byte, measurementFlag string) ([]byte, [][]byte, error) {
	img := f.tee(fl)
	if img == attest.TEESimTDX && changedAny(fl, snpOnlyFlags...) {
		return nil, nil, usageErrorf("--sim-tdvf and --sim-ovmf: a simulated node runs one TEE")
	}
	if img == "" {
		return explicit, nil, nil
	}
	if fl.Changed(measurementFlag) {
		return nil, nil, usageErrorf("--%s and the --sim-ovmf/--sim-tdvf image flags: give the measurement or the image it is computed from, not both", measurementFlag)
	}
	if img != tee {
		return nil, nil, usageErrorf("the image flags describe a %s node, but the simulated TEE is %s", img, tee)
	}
	if img == attest.TEESimTDX {
		f.tdx.kernel, f.tdx.initrd, f.tdx.cmdline = f.snp.kernel, f.snp.initrd, f.snp.cmdline
		m, _, err := f.tdx.measure(fl)
		if err != nil {
			return nil, nil, err
		}
		return m.mrtd, m.rtmrs(), nil
	}
	m, _, err := f.snp.measurement()
	return m, nil, err
}
