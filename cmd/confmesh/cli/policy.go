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
	fmt.Fprintln(out, "accepts (\"(default)\": the file leaves the field out):")
	tw := tabwriter.NewWriter(out, 0, 0, 1, ' ', 0)
	line := func(k, v string) { fmt.Fprintf(tw, "  %s\t%s\n", k, v) }
	// field marks a value the policy file left out, so an operator sees
	// every default in effect.
	field := func(name, v string) string {
		if p.Defaulted(name) {
			return v + " (default)"
		}
		return v
	}
	if p.AcceptsAnyMeasurement() {
		line("measurements:", "any")
	} else {
		line("measurements:", fmt.Sprintf("%d accepted", len(p.Measurements)))
		for _, m := range p.Measurements {
			line("", m.String())
		}
	}
	if p.ControlPlane == nil {
		line("control plane:", "none trusted (agents with this policy refuse to dial; the control plane's own policy needs none)")
	} else {
		line("control plane:", fmt.Sprintf("%d accepted", len(p.ControlPlane.Measurements)))
		for _, m := range p.ControlPlane.Measurements {
			line("", m.String())
		}
		if len(p.ControlPlane.MRTDs) > 0 {
			line("control plane (TDX):", fmt.Sprintf("%d MRTDs accepted", len(p.ControlPlane.MRTDs)))
			for _, m := range p.ControlPlane.MRTDs {
				line("", m.String())
			}
		}
	}
	t := p.MinimumTCB
	line("minimum TCB:", field("minimumTCB", fmt.Sprintf("bootloader %d, tee %d, snp %d, microcode %d; fmc %d (Turin only: Milan and Genoa have no FMC)",
		t.Bootloader, t.TEE, t.SNP, t.Microcode, t.FMC)))
	line("debug guests:", field("allowDebug", allowed(p.AllowDebug)))
	line("SMT:", field("allowSMT", allowed(p.AllowSMT)))
	line("migration agent:", field("allowMigrationAgent", allowed(p.AllowMigrationAgent)))
	vmpls := make([]string, len(p.AllowedVMPLs))
	for i, v := range p.AllowedVMPLs {
		vmpls[i] = fmt.Sprint(v)
	}
	line("VMPLs:", field("allowedVMPLs", strings.Join(vmpls, ", ")))
	if len(p.ChipIDs) == 0 {
		line("chips:", field("chipIDs", "any chip"))
	} else {
		line("chips:", fmt.Sprintf("%d on the allowlist", len(p.ChipIDs)))
	}
	line("max evidence age:", field("maxEvidenceAge", time.Duration(p.MaxEvidenceAge).String())+
		"; must exceed the renewal interval, half the node SVID TTL (the control plane checks)")
	line("trust domain:", field("trustDomain", p.TrustDomain))
	writeTDXSummary(line, p)
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
		line(k, field("trustedRoots", desc))
	}
	tw.Flush()
	if p.TrustsSimulated() {
		fmt.Fprintln(out)
		fmt.Fprintln(out, "!!! WARNING: this policy trusts a SIMULATED TEE root. Evidence signed by it proves nothing")
		fmt.Fprintln(out, "!!! about hardware: anyone holding the simulated CA's keys can forge any report. Never use")
		fmt.Fprintln(out, "!!! this policy in production.")
	}
}

// writeTDXSummary explains the tdx section: what a TDX quote must show.
func writeTDXSummary(line func(k, v string), p *attest.Policy) {
	t := p.TDX
	if t == nil {
		line("TDX:", "no tdx section: every TDX quote is refused")
		return
	}
	if p.AcceptsAnyMeasurement() {
		line("TDX MRTDs:", "any")
	} else {
		line("TDX MRTDs:", fmt.Sprintf("%d accepted", len(t.MRTDs)))
		for _, m := range t.MRTDs {
			line("", m.String())
		}
	}
	writeRTMRSummary(line, t)
	if len(t.MRConfigIDs) == 0 {
		line("TDX MRCONFIGID:", "not checked")
	} else {
		line("TDX MRCONFIGID:", fmt.Sprintf("%d accepted", len(t.MRConfigIDs)))
	}
	line("TDX debug TDs:", allowed(p.AllowDebug)+" (allowDebug, shared with SEV-SNP)")
	mask := func(m, v attest.HexBytes) string {
		if m == nil {
			return "not checked (go-tdx-guest's fixed-bit checks still apply to v4 quotes)"
		}
		return fmt.Sprintf("quote & %s == %s", m, v)
	}
	line("TDX XFAM:", mask(t.XFAMMask, t.XFAM))
	line("TDX attributes:", mask(t.TDAttributesMask, t.TDAttributes))
	svn := "none"
	if t.MinimumTeeTCBSVN != nil {
		svn = t.MinimumTeeTCBSVN.String() + " (component-wise)"
	}
	line("TDX minimum TEE TCB SVN:", svn)
	line("TDX minimum QE/PCE SVN:", fmt.Sprintf("%d / %d", t.MinimumQESVN, t.MinimumPCESVN))
	coll := "checked only when the verifier has collateral"
	if t.RequireCollateral {
		coll = "collateral required (a verifier without it refuses every TDX quote)"
	}
	line("TDX TCB statuses:", strings.Join(t.AcceptedTCBStatuses, ", ")+"; "+coll)
	plat := "any platform"
	if len(t.FMSPCs) > 0 || len(t.PPIDs) > 0 {
		plat = fmt.Sprintf("%d FMSPCs, %d PPIDs on the allowlist", len(t.FMSPCs), len(t.PPIDs))
	}
	line("TDX platforms:", plat)
}

// writeRTMRSummary lists the accepted RTMR tuples, one register a line.
func writeRTMRSummary(line func(k, v string), t *attest.TDXPolicy) {
	sets := t.AcceptedRTMRSets()
	switch {
	case len(sets) == 0:
		line("TDX RTMRs:", "not checked")
		return
	case len(t.RTMRs) > 0:
		line("TDX RTMRs:", "1 accepted set (tdx.rtmrs)")
	case len(sets) == 1:
		line("TDX RTMRs:", "1 accepted set (tdx.rtmrSets)")
	default:
		line("TDX RTMRs:", fmt.Sprintf("%d accepted sets (tdx.rtmrSets; a node must match one)", len(sets)))
	}
	for i, set := range sets {
		for j, r := range set {
			k := ""
			if j == 0 {
				k = fmt.Sprintf("TDX RTMR set %d:", i)
			}
			v := "not checked"
			if len(r) > 0 {
				v = r.String()
			}
			line(k, fmt.Sprintf("RTMR%d %s", j, v))
		}
	}
}
