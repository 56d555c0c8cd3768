package cli

import (
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
	"github.com/confmesh/confmesh/internal/attest/tsm"
	"github.com/spf13/cobra"
)

// reportFlags are the flags of `attest report`, which produces a report
// from this machine's TEE or the simulated one.
type reportFlags struct {
	simDir      string
	simTEE      string
	nonce, key  string
	name        string
	measurement string
	debug, smt  bool
	vmpl        uint32
	tcb         string
	product     string
	out         string
	image       simImageFlags
}

func newAttestReportCmd() *cobra.Command {
	var f reportFlags
	cmd := &cobra.Command{
		Use:   "report --sim-dir DIR --nonce HEX --key HEX -o DIR [flags]",
		Short: "Produce an SEV-SNP report bound to a nonce and key",
		Long: `Produce an attestation report whose REPORT_DATA is SHA-512(nonce || key)
and write it to the output directory:

  report.bin   the raw report
  vcek.pem     the VCEK that signed it
  chain.pem    the ASK then the ARK, as shipped with the report
  evidence.pb  the Evidence protobuf (report and chain, no binding)

With --sim-dir the simulated TEE (sim-snp) produces it: the simulated CA in
DIR is opened or created, and the node --name keeps its chip ID and VCEK key
there across runs; measurement, debug, SMT, VMPL and TCB come from the flags
each time (the measurement either as --measurement or computed from a node
image with --sim-ovmf, --sim-kernel, --sim-initrd, --sim-append, --sim-vcpus,
--sim-vcpu-type and --sim-guest-features, as ` + "`confmesh measure snp`" + ` does), so a non-compliant node is one flag away. --sim-product picks the
product a new CA certifies (Turin-B0 simulates a Turin node, whose --tcb
takes five parts, FMC first). Evidence from it verifies only under a policy
that names DIR/root.pem as a simulated root.

With --sim-tee sim-tdx (or a DIR already holding a simulated TDX CA) the
simulated TDX (sim-tdx) produces a v4 quote instead, written to quote.dat:
--measurement is the MRTD (or --sim-tdvf FILE computes it from a TDVF
image, and --sim-kernel, --sim-initrd, --sim-append, --sim-memory and
--sim-kernel-setup the RTMR[1] and RTMR[2] of a direct boot, as
` + "`confmesh measure tdx`" + ` does), --debug sets the DEBUG TD attribute; it verifies
only under a policy naming DIR/root.pem with kind simulated-tdx.

Without --sim-dir the report comes from this machine's TEE: configfs-tsm
(SEV-SNP or TDX; a TDX quote goes to quote.dat), else /dev/sev-guest.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAttestReport(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.simDir, "sim-dir", "", "simulated CA `DIR` (created when empty); omit for real hardware")
	fl.StringVar(&f.simTEE, "sim-tee", "", "simulated TEE a new CA in --sim-dir is for: sim-snp (default) or sim-tdx; an existing CA decides by itself")
	fl.StringVar(&f.nonce, "nonce", "", "32-byte nonce, `HEX`")
	fl.StringVar(&f.key, "key", "", "32-byte key, `HEX`")
	fl.StringVar(&f.name, "name", "sim-node", "simulated node `NAME`")
	fl.StringVar(&f.measurement, "measurement", "", "simulated launch measurement, 96 `HEX` digits (default all zero)")
	fl.BoolVar(&f.debug, "debug", false, "simulated guest allows debugging")
	fl.BoolVar(&f.smt, "smt", false, "simulated guest allows and host enables SMT")
	fl.Uint32Var(&f.vmpl, "vmpl", 0, "simulated VMPL `N` (0-3)")
	fl.StringVar(&f.tcb, "tcb", "", "simulated TCB `BL,TEE,SNP,UCODE`, or FMC,BL,TEE,SNP,UCODE on Turin (default all 0)")
	fl.StringVar(&f.product, "sim-product", "", "product `NAME` with stepping (Milan-B1, Genoa-B1, Turin-B0) the simulated CA certifies when --sim-dir creates it (default Milan-B1; must match an existing CA)")
	fl.StringVarP(&f.out, "out", "o", "", "output `DIR` (created if missing)")
	f.image.add(fl)
	_ = cmd.MarkFlagRequired("nonce")
	_ = cmd.MarkFlagRequired("key")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

// NewHardwareProvider opens this machine's TEE (configfs-tsm for SEV-SNP
// or TDX, else /dev/sev-guest) for `attest report` without --sim-dir, the
// agent and the control plane. A variable so tests (and other platforms)
// can replace it.
var NewHardwareProvider = func() (attest.Provider, error) {
	p, err := tsm.OpenHardware()
	if err != nil {
		return nil, fmt.Errorf("%w; pass --sim-dir to use the simulated TEE", err)
	}
	return p, nil
}

func runAttestReport(cmd *cobra.Command, f *reportFlags) error {
	nonce, key, err := parseNonceKeyFlags(f.nonce, f.key)
	if err != nil {
		return err
	}
	rd, err := attest.ReportData(nonce, key)
	if err != nil {
		return usageErrorf("%v", err)
	}

	var p attest.Provider
	var ca *sim.CA
	var tdxRoot string
	if f.simDir == "" {
		for _, name := range []string{"name", "measurement", "debug", "smt", "vmpl", "tcb", "sim-product", "sim-tee"} {
			if cmd.Flags().Changed(name) {
				return usageErrorf("--%s configures the simulated TEE and needs --sim-dir", name)
			}
		}
		if f.image.tee(cmd.Flags()) != "" {
			return usageErrorf("--sim-ovmf/--sim-tdvf and their flags configure the simulated TEE and need --sim-dir")
		}
		if p, err = NewHardwareProvider(); err != nil {
			return usageErrorf("%v", err)
		}
	} else if f.simTEE == attest.TEESimTDX || (f.simTEE == "" && (simtdx.IsCADir(f.simDir) || f.image.tee(cmd.Flags()) == attest.TEESimTDX)) {
		for _, name := range []string{"smt", "vmpl", "tcb", "sim-product"} {
			if cmd.Flags().Changed(name) {
				return usageErrorf("--%s configures the simulated SEV-SNP; %s is (or gets) a simulated TDX CA", name, f.simDir)
			}
		}
		m, err := parseMeasurementFlag(f.measurement)
		if err != nil {
			return err
		}
		var rtmrs [][]byte
		if m, rtmrs, err = f.image.measurement(cmd.Flags(), attest.TEESimTDX, m, "measurement"); err != nil {
			return err
		}
		if p, tdxRoot, err = openSimTEE(simTEEConfig{dir: f.simDir, tee: attest.TEESimTDX, name: f.name, measurement: m, rtmrs: rtmrs, debug: f.debug}); err != nil {
			return usageErrorf("--sim-dir: %v", err)
		}
	} else {
		if f.simTEE != "" && f.simTEE != attest.TEESimSnp {
			return usageErrorf("--sim-tee %q: want %s or %s", f.simTEE, attest.TEESimSnp, attest.TEESimTDX)
		}
		cfg := sim.NodeConfig{Debug: f.debug, SMT: f.smt, VMPL: f.vmpl}
		if f.vmpl > 3 {
			return usageErrorf("--vmpl: %d is not a VMPL (0-3)", f.vmpl)
		}
		if cfg.Measurement, err = parseMeasurementFlag(f.measurement); err != nil {
			return err
		}
		if cfg.Measurement, _, err = f.image.measurement(cmd.Flags(), attest.TEESimSnp, cfg.Measurement, "measurement"); err != nil {
			return err
		}
		if f.tcb != "" {
			if cfg.TCB, err = parseTCBFlag(f.tcb); err != nil {
				return err
			}
		}
		if ca, err = sim.OpenCA(f.simDir, f.product); err != nil {
			return usageErrorf("--sim-dir: %v", err)
		}
		if p, err = ca.OpenNode(f.name, cfg); err != nil {
			return failf("simulated node %q: %v", f.name, err)
		}
	}

	ev, err := p.Report(rd)
	if err != nil {
		return failf("%s report: %v", p.TEE(), err)
	}
	pb, err := attest.MarshalEvidence(ev)
	if err != nil {
		return failf("%v", err)
	}
	chain := ev.GetChain()
	reportFile := "report.bin"
	if attest.IsTDX(ev.GetTee()) {
		reportFile = "quote.dat"
	}
	files := []struct {
		name string
		data []byte
	}{
		{reportFile, ev.GetReport()},
		{"vcek.pem", pemCerts(chain.GetVcek())},
		{"vlek.pem", pemCerts(chain.GetVlek())},
		{"chain.pem", pemCerts(chain.GetAsk(), chain.GetArk())},
		{"evidence.pb", pb},
	}
	if err := os.MkdirAll(f.out, 0o755); err != nil {
		return usageErrorf("-o: %v", err)
	}
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s report bound to SHA-512(nonce || key):\n", p.TEE())
	for _, file := range files {
		if len(file.data) == 0 {
			continue // hardware whose host provisioned no such certificate
		}
		path := filepath.Join(f.out, file.name)
		if err := os.WriteFile(path, file.data, 0o644); err != nil {
			return failf("write %s: %v", path, err)
		}
		fmt.Fprintf(out, "  %-12s %s\n", file.name, path)
	}
	if !attest.IsTDX(ev.GetTee()) && len(chain.GetVcek()) == 0 && len(chain.GetVlek()) == 0 {
		fmt.Fprintln(out, "note: the host provisioned no VCEK; fetch it from AMD KDS for the report's chip ID and reported TCB")
	}
	if ca != nil {
		fmt.Fprintf(out, "trust root:    %s (kind simulated; a policy must name it explicitly)\n", ca.RootPath())
	}
	if tdxRoot != "" {
		fmt.Fprintf(out, "trust root:    %s (kind simulated-tdx; a policy must name it explicitly)\n", tdxRoot)
	}
	return nil
}

func pemCerts(ders ...[]byte) []byte {
	var out []byte
	for _, der := range ders {
		if len(der) > 0 {
			out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
	}
	return out
}
