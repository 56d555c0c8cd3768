package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/measure/tdx"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// tdxBootFlags are the inputs of a TDX measurement: the TDVF image (MRTD)
// and, for a QEMU direct boot, kernel, initrd and command line (RTMR[1]
// and RTMR[2]). prefix names the flags ("sim-" for the simulated TEE,
// where kernel, initrd and append are shared with the SEV-SNP image flags).
type tdxBootFlags struct {
	prefix                        string
	tdvf, kernel, initrd, cmdline string
	memory, setup                 string
}

// add registers the flags; withBoot adds --kernel, --initrd and --append
// (the simulated TEE has them already).
func (f *tdxBootFlags) add(fl *pflag.FlagSet, withBoot bool) {
	p := f.prefix
	if withBoot {
		fl.StringVar(&f.tdvf, p+"tdvf", "", "TDVF firmware image `FILE` (OVMF.fd of an IntelTdx build, or a td-shim image)")
		fl.StringVar(&f.kernel, p+"kernel", "", "kernel `FILE` of a QEMU direct boot (-kernel; a bzImage with the EFI stub): computes RTMR[1] and RTMR[2]")
		fl.StringVar(&f.initrd, p+"initrd", "", "initrd `FILE` (-initrd; needs --"+p+"kernel)")
		fl.StringVar(&f.cmdline, p+"append", "", "kernel command line `STR` as given to QEMU -append (needs --"+p+"kernel)")
	}
	fl.StringVar(&f.memory, p+"memory", "", "guest RAM `SIZE` as given to QEMU -m (2G, 4096M; a plain number is MiB): needed with --"+p+"initrd, QEMU writes the initrd's address into the measured kernel")
	fl.StringVar(&f.setup, p+"kernel-setup", tdx.SetupQEMUPatched.String(), "which kernel bytes OVMF measures: qemu-patched (the setup header QEMU patched; OVMF before edk2-stable202505) or unpatched (the file as is; later OVMF)")
}

// tdxMeasured is what a TDX measurement yields.
type tdxMeasured struct {
	mrtd []byte
	log  *tdx.RTMRLog // nil without a kernel
}

// measure reads the files and computes MRTD and, with a kernel, the RTMRs.
func (f *tdxBootFlags) measure(fl *pflag.FlagSet) (tdxMeasured, [][2]string, error) {
	p := f.prefix
	var m tdxMeasured
	if f.tdvf == "" {
		return m, nil, usageErrorf("--%stdvf: required (the TDVF firmware image)", p)
	}
	if f.kernel == "" && (f.initrd != "" || f.cmdline != "") {
		return m, nil, usageErrorf("--%sinitrd and --%sappend need --%skernel: without a kernel nothing measures them", p, p, p)
	}
	if f.kernel == "" && (fl.Changed(p+"memory") || fl.Changed(p+"kernel-setup")) {
		return m, nil, usageErrorf("--%smemory and --%skernel-setup describe a direct boot and need --%skernel", p, p, p)
	}
	setup, err := tdx.ParseKernelSetup(f.setup)
	if err != nil {
		return m, nil, usageErrorf("--%skernel-setup: %v", p, err)
	}
	var mem uint64
	if f.memory != "" {
		if mem, err = parseQEMUMemory(f.memory); err != nil {
			return m, nil, usageErrorf("--%smemory %q: %v", p, f.memory, err)
		}
	} else if f.initrd != "" && setup == tdx.SetupQEMUPatched {
		return m, nil, usageErrorf("--%smemory: required with --%sinitrd (QEMU writes the initrd's address, which depends on the guest's RAM, into the kernel OVMF measures)", p, p)
	}
	img, err := readLimited(p+"tdvf", f.tdvf, maxFirmwareSize)
	if err != nil {
		return m, nil, err
	}
	inputs := [][2]string{{"tdvf", fileDesc(f.tdvf, img)}}
	var boot tdx.DirectBoot
	if f.kernel != "" {
		boot = tdx.DirectBoot{Cmdline: f.cmdline, Setup: setup, MemorySize: mem}
		if boot.Kernel, err = readLimited(p+"kernel", f.kernel, maxBootFileSize); err != nil {
			return m, nil, err
		}
		inputs = append(inputs, [2]string{"kernel", fileDesc(f.kernel, boot.Kernel)})
		if f.initrd != "" {
			if boot.Initrd, err = readLimited(p+"initrd", f.initrd, maxBootFileSize); err != nil {
				return m, nil, err
			}
			inputs = append(inputs, [2]string{"initrd", fileDesc(f.initrd, boot.Initrd)})
		} else {
			inputs = append(inputs, [2]string{"initrd", "none"})
		}
		inputs = append(inputs, [2]string{"append", strconv.Quote(f.cmdline)}, [2]string{"kernel setup", setup.String()})
		if f.memory != "" {
			inputs = append(inputs, [2]string{"memory", fmt.Sprintf("%s (%d bytes)", f.memory, mem)})
		}
	}
	if m.mrtd, err = tdx.MRTD(img); err != nil {
		return m, nil, failf("%s: %v", f.tdvf, err)
	}
	if f.kernel != "" {
		if m.log, err = tdx.DirectBootRTMRs(boot); err != nil {
			return m, nil, failf("%s: %v", f.kernel, err)
		}
	}
	return m, inputs, nil
}

// rtmrs returns the four policy entries: RTMR[1] and RTMR[2] when computed,
// "" (unchecked) for the others.
func (m tdxMeasured) rtmrs() [][]byte {
	if m.log == nil {
		return nil
	}
	return [][]byte{nil, m.log.RTMR1, m.log.RTMR2, nil}
}

// parseQEMUMemory parses a QEMU -m size: a number with an optional K, M,
// G or T suffix (binary units), MiB without one.
func parseQEMUMemory(s string) (uint64, error) {
	unit := uint64(1 << 20)
	num := strings.TrimSpace(s)
	if n := len(num); n > 0 {
		switch num[n-1] {
		case 'k', 'K':
			unit, num = 1<<10, num[:n-1]
		case 'm', 'M':
			unit, num = 1<<20, num[:n-1]
		case 'g', 'G':
			unit, num = 1<<30, num[:n-1]
		case 't', 'T':
			unit, num = 1<<40, num[:n-1]
		}
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("want a size such as 2G or 4096M")
	}
	if v > (1<<52)/unit {
		return 0, fmt.Errorf("larger than any guest")
	}
	return v * unit, nil
}

func newMeasureTDXCmd() *cobra.Command {
	f := tdxBootFlags{}
	var output string
	cmd := &cobra.Command{
		Use:   "tdx --tdvf FILE [--kernel FILE [--initrd FILE --memory SIZE] [--append STR]] [-o text|json|policy]",
		Short: "Compute a TDX MRTD from the TDVF image, and RTMR[1..2] of a direct boot",
		Long: `Compute the MRTD a TDX trust domain launched from a TDVF image (OVMF's
IntelTdx build, or td-shim) reports: the TDX module's SHA-384 over
TDH.MEM.PAGE.ADD of every page the TDVF metadata lists (except PAGE_AUG
memory) and TDH.MR.EXTEND of the contents of the sections marked
MR_EXTEND, in metadata order, as QEMU/KVM adds them.

With --kernel (a QEMU direct boot: -kernel, -initrd, -append through
OVMF), also RTMR[1] and RTMR[2] as they stand when the kernel's EFI stub
exits boot services:

  RTMR[1]  the kernel's Authenticode digest (SHA-384) as OVMF loads it,
           "Calling EFI Application from Boot Option", the separator,
           "Exit Boot Services Invocation", "Exit Boot Services Returned
           with Success"
  RTMR[2]  the EFI stub's measurements of its LoadOptions (the command
           line, plus " initrd=initrd" with an initrd, UTF-16 with its
           NUL) and of the initrd

--memory (QEMU -m) is needed with an initrd: QEMU writes the initrd's
address into the kernel's setup header, and OVMF before edk2-stable202505
measures the kernel so patched (--kernel-setup qemu-patched, the default);
later OVMF measures the file as it is (--kernel-setup unpatched).
RTMR[0] (TD HOB, ACPI tables, EFI variables: the VMM's configuration) and
RTMR[3] (the running system's) are not computed: the policy leaves them
unchecked. RTMR[2] needs a kernel whose EFI stub measures into the TDX
(CC) measurement protocol; with an older stub it stays zero.

-o policy prints a fragment for the policy file's tdx section: the MRTD
under mrtds and, with --kernel, the RTMR tuple as one line under rtmrSets
(a node must match one listed tuple). To roll to a new kernel, add the new
image's line next to the old one, replace the nodes, then delete the old
line: no register is left unchecked meanwhile.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkMeasureFormat(output); err != nil {
				return err
			}
			m, inputs, err := f.measure(cmd.Flags())
			if err != nil {
				return err
			}
			return printMeasurement(cmd.OutOrStdout(), output, measured{
				tee: attest.TEETDX, value: m.mrtd, rtmrs: m.rtmrs(), inputs: inputs,
			})
		},
	}
	f.add(cmd.Flags(), true)
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text, json or policy")
	return cmd
}
