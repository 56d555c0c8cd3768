package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/measure/snp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// formatPolicy is the -o value of the measure verbs that prints a policy
// file fragment.
const formatPolicy = "policy"

// Size limits of the measured inputs, checked before a file is read: an
// OVMF/TDVF image is a few MiB, a kernel or initrd a few hundred.
const (
	maxFirmwareSize = 64 << 20
	maxBootFileSize = 2 << 30
)

func newMeasureCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "measure",
		Short: "Compute the launch measurement of a node image (SEV-SNP) or its MRTD and RTMRs (TDX)",
		Long: `Compute the measurement a confidential VM launched from a node image will
report, from the image's published parts, so that a policy can pin it
without booting a node and copying what it says (trust on first use).

  measure snp   SEV-SNP launch digest: OVMF, optional kernel/initrd/command
                line (measured direct boot), vCPU count and type, guest features
  measure tdx   TDX MRTD: the TDVF firmware image; RTMR[1] and RTMR[2]
                of a direct boot: kernel, initrd, command line, memory

-o policy prints a fragment to paste into the attestation policy.`,
	}
	cmd.AddCommand(newMeasureSNPCmd(), newMeasureTDXCmd())
	return cmd
}

// snpLaunchFlags are the inputs of an SEV-SNP launch digest. prefix names
// the flags ("sim-" where they configure the simulated TEE).
type snpLaunchFlags struct {
	prefix                               string
	ovmf, ovmfHash, kernel, initrd       string
	cmdline, vcpuType, vcpuSig, features string
	vmm                                  string
	vcpus                                int
}

func (f *snpLaunchFlags) add(fl *pflag.FlagSet, full bool) {
	p := f.prefix
	fl.StringVar(&f.ovmf, p+"ovmf", "", "OVMF firmware image `FILE` (OVMF.fd; an AmdSevX64 build for measured direct boot)")
	fl.StringVar(&f.kernel, p+"kernel", "", "kernel `FILE` of a measured direct boot (QEMU -kernel, kernel-hashes=on)")
	fl.StringVar(&f.initrd, p+"initrd", "", "initrd `FILE` (needs --"+p+"kernel)")
	fl.StringVar(&f.cmdline, p+"append", "", "kernel command line `STR` as given to QEMU -append (needs --"+p+"kernel)")
	fl.IntVar(&f.vcpus, p+"vcpus", 0, "number of vCPUs `N` (one VMSA each)")
	fl.StringVar(&f.vcpuType, p+"vcpu-type", "", "QEMU vCPU model `NAME` (-cpu): "+strings.Join(snp.VCPUTypes(), ", "))
	fl.StringVar(&f.features, p+"guest-features", "0x1", "SEV_FEATURES of the VMSAs, `HEX` (0x1: SNPActive only, QEMU's default)")
	if full {
		fl.StringVar(&f.ovmfHash, p+"ovmf-hash", "", "precomputed digest of the OVMF pages, 96 `HEX` digits (the image then supplies only its metadata)")
		fl.StringVar(&f.vcpuSig, p+"vcpu-sig", "", "vCPU CPUID signature `HEX` (family/model/stepping) instead of --vcpu-type")
		fl.StringVar(&f.vmm, p+"vmm-type", "qemu", "VMM that launches the guest: qemu, ec2 or gce (ec2 and gce take no vCPU type: their VMSAs carry none)")
	}
}

// set reports whether any of the flags was given.
func (f *snpLaunchFlags) set(fl *pflag.FlagSet) bool {
	for _, n := range []string{"ovmf", "ovmf-hash", "kernel", "initrd", "append", "vcpus", "vcpu-type", "vcpu-sig", "guest-features", "vmm-type"} {
		if fl.Lookup(f.prefix+n) != nil && fl.Changed(f.prefix+n) {
			return true
		}
	}
	return false
}

// input reads the files and checks the flags; errors are usage errors.
func (f *snpLaunchFlags) input() (snp.Input, error) {
	p := f.prefix
	var in snp.Input
	if f.ovmf == "" {
		return in, usageErrorf("--%sovmf: required (the OVMF firmware image)", p)
	}
	if f.vcpus < 1 {
		return in, usageErrorf("--%svcpus: required, at least 1", p)
	}
	in.VCPUs = f.vcpus
	if f.vmm != "" {
		vmm, err := snp.ParseVMM(f.vmm)
		if err != nil {
			return in, usageErrorf("--%svmm-type: %v", p, err)
		}
		in.VMM = vmm
	}
	switch {
	case in.VMM != snp.VMMQEMU:
		if f.vcpuType != "" || f.vcpuSig != "" {
			return in, usageErrorf("--%svcpu-type/--%svcpu-sig: %s puts no CPUID signature in the VMSA; leave them out", p, p, in.VMM)
		}
	case f.vcpuType != "" && f.vcpuSig != "":
		return in, usageErrorf("--%svcpu-type and --%svcpu-sig: give one", p, p)
	case f.vcpuType != "":
		sig, err := snp.VCPUSignature(f.vcpuType)
		if err != nil {
			return in, usageErrorf("--%svcpu-type: %v", p, err)
		}
		in.VCPUSig = sig
	case f.vcpuSig != "":
		v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(f.vcpuSig), "0x"), 16, 32)
		if err != nil {
			return in, usageErrorf("--%svcpu-sig %q: want a 32-bit hex value: %v", p, f.vcpuSig, err)
		}
		in.VCPUSig = uint32(v)
	default:
		return in, usageErrorf("--%svcpu-type: required (the QEMU -cpu model the node's VMM runs, e.g. EPYC-v4)", p)
	}
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(f.features), "0x"), 16, 64)
	if err != nil {
		return in, usageErrorf("--%sguest-features %q: want a hex value such as 0x1: %v", p, f.features, err)
	}
	in.GuestFeatures = v
	if f.kernel == "" && (f.initrd != "" || f.cmdline != "") {
		return in, usageErrorf("--%sinitrd and --%sappend need --%skernel: without a kernel nothing measures them", p, p, p)
	}
	if in.OVMF, err = readLimited(p+"ovmf", f.ovmf, maxFirmwareSize); err != nil {
		return in, err
	}
	if f.ovmfHash != "" {
		if in.OVMFHash, err = parseHexFlag(p+"ovmf-hash", f.ovmfHash, 48); err != nil {
			return in, err
		}
	}
	if f.kernel != "" {
		b := &snp.DirectBoot{Cmdline: f.cmdline}
		if b.Kernel, err = readLimited(p+"kernel", f.kernel, maxBootFileSize); err != nil {
			return in, err
		}
		if f.initrd != "" {
			if b.Initrd, err = readLimited(p+"initrd", f.initrd, maxBootFileSize); err != nil {
				return in, err
			}
		}
		in.Boot = b
	}
	return in, nil
}

// readLimited reads a whole input file, refusing one larger than limit
// (read through a limit, so a device such as /dev/zero ends too).
func readLimited(flag, path string, limit int64) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, usageErrorf("--%s: %v", flag, err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, limit+1))
	if err != nil {
		return nil, usageErrorf("--%s %s: %v", flag, path, err)
	}
	if int64(len(b)) > limit {
		return nil, usageErrorf("--%s %s: larger than %d bytes, more than any %s is", flag, path, limit, flag)
	}
	return b, nil
}

// measurement computes the digest; a refusal of the inputs is exit 1.
func (f *snpLaunchFlags) measurement() ([]byte, snp.Input, error) {
	in, err := f.input()
	if err != nil {
		return nil, in, err
	}
	d, err := snp.LaunchDigest(in)
	if err != nil {
		return nil, in, failf("%s: %v", f.ovmf, err)
	}
	return d, in, nil
}

func newMeasureSNPCmd() *cobra.Command {
	f := snpLaunchFlags{}
	var output string
	cmd := &cobra.Command{
		Use:   "snp --ovmf FILE [--kernel FILE --initrd FILE --append STR] --vcpus N --vcpu-type NAME [flags]",
		Short: "Compute an SEV-SNP launch measurement from OVMF, kernel, initrd and command line",
		Long: `Compute the launch measurement (launch digest) an SEV-SNP guest started
by QEMU/KVM reports: every page of the OVMF image, the pages OVMF's SEV
metadata lists (zero, secrets and CPUID pages, the kernel hashes table of a
measured direct boot), and one VMSA per vCPU (the boot processor at the
reset vector, the others at OVMF's AP reset address, each with the vCPU
type's CPUID signature and the guest features).

The result matches virtee's sev-snp-measure (--mode snp). --vmm-type picks
the launch sequence: qemu (QEMU/KVM, the default), ec2 or gce (their initial
vCPU state; GCE records pre-validated memory unmeasured, EC2 measures the
CPUID page last); ec2 and gce take no --vcpu-type. Every input counts: another OVMF build, kernel, initrd, command line, vCPU count, vCPU
type or guest features is another measurement.

-o policy prints a fragment for the policy file's measurements list.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkMeasureFormat(output); err != nil {
				return err
			}
			d, in, err := f.measurement()
			if err != nil {
				return err
			}
			return printMeasurement(cmd.OutOrStdout(), output, measured{
				tee: attest.TEESevSnp, value: d, inputs: snpInputs(&f, in),
			})
		},
	}
	f.add(cmd.Flags(), true)
	cmd.Flags().StringVarP(&output, "output", "o", formatText, "output format: text, json or policy")
	return cmd
}

func checkMeasureFormat(f string) error {
	switch f {
	case formatText, formatJSON, formatPolicy:
		return nil
	}
	return usageErrorf("unknown output format %q (want %s, %s or %s)", f, formatText, formatJSON, formatPolicy)
}

// measured is a computed measurement and the inputs it came from, in order.
type measured struct {
	tee    string
	value  []byte
	rtmrs  [][]byte // TDX: RTMR0-3, nil entries not computed; nil: none
	inputs [][2]string
}

func fileDesc(path string, data []byte) string {
	return fmt.Sprintf("%s (sha256 %x, %d bytes)", path, sha256.Sum256(data), len(data))
}

func snpInputs(f *snpLaunchFlags, in snp.Input) [][2]string {
	out := [][2]string{{"ovmf", fileDesc(f.ovmf, in.OVMF)}}
	if in.OVMFHash != nil {
		out = append(out, [2]string{"ovmf hash", hex.EncodeToString(in.OVMFHash) + " (given; stands for the image's pages)"})
	}
	if in.Boot != nil {
		out = append(out, [2]string{"kernel", fileDesc(f.kernel, in.Boot.Kernel)})
		if f.initrd != "" {
			out = append(out, [2]string{"initrd", fileDesc(f.initrd, in.Boot.Initrd)})
		} else {
			out = append(out, [2]string{"initrd", "none"})
		}
		out = append(out, [2]string{"append", strconv.Quote(in.Boot.Cmdline)})
	}
	out = append(out, [2]string{"vmm", in.VMM.String()}, [2]string{"vcpus", strconv.Itoa(in.VCPUs)})
	if in.VMM == snp.VMMQEMU {
		cpu := f.vcpuType
		if cpu == "" {
			cpu = "custom"
		}
		out = append(out, [2]string{"vcpu type", fmt.Sprintf("%s (CPUID signature %#x)", cpu, in.VCPUSig)})
	}
	out = append(out, [2]string{"guest features", fmt.Sprintf("%#x", in.GuestFeatures)})
	return out
}

func printMeasurement(out io.Writer, format string, m measured) error {
	name, field := "SEV-SNP launch measurement", "measurement"
	if m.tee == attest.TEETDX {
		name, field = "TDX MRTD", "mrtd"
		if m.rtmrs != nil {
			name = "TDX MRTD, RTMR[1] and RTMR[2]"
		}
	}
	v := hex.EncodeToString(m.value)
	switch format {
	case formatJSON:
		inputs := map[string]string{}
		for _, kv := range m.inputs {
			inputs[kv[0]] = kv[1]
		}
		doc := map[string]any{"tee": m.tee, field: v, "inputs": inputs}
		for i, r := range m.rtmrs {
			if r != nil {
				doc[fmt.Sprintf("rtmr%d", i)] = hex.EncodeToString(r)
			}
		}
		b, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return failf("%v", err)
		}
		fmt.Fprintf(out, "%s\n", b)
	case formatPolicy:
		fmt.Fprintf(out, "# %s computed by `confmesh measure` from:\n", name)
		for _, kv := range m.inputs {
			fmt.Fprintf(out, "#   %s: %s\n", kv[0], kv[1])
		}
		if m.tee == attest.TEETDX {
			fmt.Fprintf(out, "tdx:\n  mrtds:\n    - %q\n", v)
			if m.rtmrs != nil {
				// One accepted tuple on one line of a list, so that a roll
				// adds the next image's line next to it and later deletes
				// this one (docs/attestation.md).
				entries := make([]string, len(m.rtmrs))
				for i, r := range m.rtmrs {
					entries[i] = strconv.Quote(hex.EncodeToString(r))
				}
				fmt.Fprintf(out, "  # accepted RTMR0-3 tuples, one per line; a node matches one. \"\" leaves a register unchecked\n"+
					"  # (RTMR0: the VMM's configuration, RTMR3: the running system). For a roll, add the new image's line.\n"+
					"  rtmrSets:\n    - [%s]\n", strings.Join(entries, ", "))
			}
		} else {
			fmt.Fprintf(out, "measurements:\n  - %q\n", v)
		}
	default:
		fmt.Fprintf(out, "%s: %s\n", field, v)
		for i, r := range m.rtmrs {
			if r != nil {
				fmt.Fprintf(out, "rtmr%d: %x\n", i, r)
			}
		}
		for _, kv := range m.inputs {
			fmt.Fprintf(out, "  %-15s %s\n", kv[0]+":", kv[1])
		}
	}
	return nil
}
