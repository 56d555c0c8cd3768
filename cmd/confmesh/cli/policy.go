package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
	"github.com/spf13/cobra"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Inspect attestation policies",
	}
	cmd.AddCommand(newPolicyCheckCmd())
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file and print what it accepts",
		Long: `Validate a policy file (strict YAML: an unknown field is an error), load
every trusted root it names, then print the normalised policy and a summary
of what it accepts.

Exit codes: 0 valid, 1 invalid (the message names the problem), 2 the file
cannot be read.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPolicyCheck(cmd.OutOrStdout(), args[0])
		},
	}
}

func runPolicyCheck(out io.Writer, path string) error {
	p, err := loadPolicyFile(path)
	if err != nil {
		return err
	}
	roots, err := attest.LoadTrustedRoots(p)
	if err != nil {
		return failf("invalid policy: policy %s: %v", path, err)
	}
	y, err := p.YAML()
	if err != nil {
		return failf("render policy: %v", err)
	}
	fmt.Fprintf(out, "# %s: valid; normalised:\n", path)
	out.Write(y)
	fmt.Fprintln(out)
	writePolicySummary(out, p, roots)
	return nil
}

func allowed(b bool) string {
	if b {
		return "allowed"
	}
	return "forbidden"
}

func writePolicySummary(out io.Writer, p *attest.Policy, roots []*attest.TrustedRoot) {
	fmt.Fprintln(out, "accepts:")
	tw := tabwriter.NewWriter(out, 0, 0, 1, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	if p.AcceptsAnyMeasurement() {
		line("measurements:", "any")
	} else {
		line("measurements:", fmt.Sprintf("%d accepted", len(p.Measurements)))
		for _, m := range p.Measurements {
			line("", m.String())
		}
	}
	t := p.MinimumTCB
	line("minimum TCB:", fmt.Sprintf("bootloader %d, tee %d, snp %d, microcode %d", t.Bootloader, t.TEE, t.SNP, t.Microcode))
	line("debug guests:", allowed(p.AllowDebug))
	line("SMT:", allowed(p.AllowSMT))
	line("migration agent:", allowed(p.AllowMigrationAgent))
	vmpls := make([]string, len(p.AllowedVMPLs))
	for i, v := range p.AllowedVMPLs {
		vmpls[i] = fmt.Sprint(v)
	}
	line("VMPLs:", strings.Join(vmpls, ", "))
	if len(p.ChipIDs) == 0 {
		line("chips:", "any chip")
	} else {
		line("chips:", fmt.Sprintf("%d on the allowlist", len(p.ChipIDs)))
	}
	line("max evidence age:", time.Duration(p.MaxEvidenceAge).String())
	line("trust domain:", p.TrustDomain)
	// The AMD kind resolves to one root per product line: group by name.
	var names []string
	lines := map[string][]string{}
	simulated := map[string]bool{}
	for _, r := range roots {
		if _, ok := lines[r.Name]; !ok {
			names = append(names, r.Name)
		}
		lines[r.Name] = append(lines[r.Name], r.ProductLine())
		simulated[r.Name] = r.Simulated
	}
	for i, n := range names {
		k := ""
		if i == 0 {
			k = "trusted roots:"
		}
		desc := fmt.Sprintf("%s (%s)", n, strings.Join(lines[n], ", "))
		if simulated[n] {
			desc += " SIMULATED"
		}
		line(k, desc)
	}
	tw.Flush()
	if p.TrustsSimulated() {
		fmt.Fprintln(out)
		fmt.Fprintln(out, "!!! WARNING: this policy trusts a SIMULATED TEE root. Evidence signed by it proves nothing")
		fmt.Fprintln(out, "!!! about hardware: anyone holding the simulated CA's keys can forge any report. Never use")
		fmt.Fprintln(out, "!!! this policy in production.")
	}
}
