package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest"
	"github.com/google/go-sev-guest/abi"
	"github.com/spf13/cobra"
)

func newAttestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "attest",
		Short: "Verify and produce SEV-SNP attestation reports",
	}
	cmd.AddCommand(newAttestVerifyCmd(), newAttestReportCmd())
	return cmd
}

// ---- attest verify ----

type verifyFlags struct {
	report, vcek, chain string
	nonce, key          string
	reportData          string
	collateral          string
	at                  string
	measurement         string
	allowDebug          bool
	policy              string
	output              string
}

func newAttestVerifyCmd() *cobra.Command {
	var f verifyFlags
	cmd := &cobra.Command{
		Use:   "verify --report FILE [--vcek FILE] [flags]",
		Short: "Verify a raw SEV-SNP report or TDX quote offline",
		Long: `Verify a raw SEV-SNP attestation report (1184 bytes) or an Intel TDX quote
(v4 or v5, recognised by its header) against a policy.

SEV-SNP: report signature by the VCEK, the VCEK's chain to a trusted root,
then the policy (debug, VMPL, measurement, TCB, chip ID, SMT, migration
agent). --vcek is required.

TDX: the PCK chain the quote carries (to Intel's root pinned in this
binary, or a simulated root the policy names), the QE report and quote
signatures, then the policy's tdx section (MRTD, RTMRs, MRCONFIGID, XFAM and
attribute masks, debug, TEE TCB SVN, QE/PCE SVN, FMSPC/PPID). --measurement
pins the MRTD. With --collateral FILE (Intel's collateral as JSON: TCB info,
QE identity, CRLs) the collateral is verified and the platform's TCB status
must be one the policy accepts (UpToDate by default). --vcek and --chain do
not apply.

--at RFC3339 verifies as of that time instead of now (certificates and
collateral expire; this checks evidence recorded earlier).
--report-data HEX (64 bytes) requires REPORT_DATA (SEV-SNP) or REPORTDATA
(TDX) to equal exactly that value.

The VCEK may be PEM or DER. --chain is a PEM file holding the ASK then the
ARK as shipped with the report; it must link, but trust comes only from the
policy's roots (the AMD roots pinned in this binary unless the policy names
a simulated root).

Without --policy the default policy applies: AMD roots, any measurement,
debug guests refused (unless --allow-debug), SMT allowed, VMPL 0-3, no TCB
minimum. With --policy that file applies; --allow-debug then conflicts (set
allowDebug in the policy). --measurement additionally requires the report's
launch measurement to equal the given value.

The report is first verified as tee "sev-snp" or "tdx" (real hardware). If
that fails because its chain ends at an untrusted root and the policy trusts
a simulated root, it is verified once more as tee "sim-snp" or "sim-tdx": the verifier never
accepts a simulated report labelled as hardware or the reverse, so a report
from the simulated TEE verifies only under a policy that names its root.

With --nonce and --key (32 bytes hex each, always together) REPORT_DATA must
equal SHA-512(nonce || key), the binding other tools produce for a WireGuard
key. Without them the binding is not checked: the report proves nothing
about freshness or which key it vouches for.

Exit codes: 0 verified (claims on stdout), 1 rejected (reason on stderr),
2 usage error or unreadable input.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAttestVerify(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.report, "report", "", "raw SEV-SNP report (1184 bytes) or TDX quote `FILE`")
	fl.StringVar(&f.vcek, "vcek", "", "VCEK (or, for a VLEK-signed report, VLEK) certificate `FILE`, PEM or DER (SEV-SNP only)")
	fl.StringVar(&f.reportData, "report-data", "", "required report data, all 64 bytes, `HEX`")
	fl.StringVar(&f.collateral, "collateral", "", "Intel collateral `FILE` (JSON) for a TDX quote: TCB status checked")
	fl.StringVar(&f.at, "at", "", "verify as of this `RFC3339` time instead of now")
	fl.StringVar(&f.chain, "chain", "", "shipped chain `FILE`: PEM with the ASK then the ARK")
	fl.StringVar(&f.nonce, "nonce", "", "32-byte nonce, `HEX`; requires --key")
	fl.StringVar(&f.key, "key", "", "32-byte key, `HEX`; requires --nonce")
	fl.StringVar(&f.measurement, "measurement", "", "required launch measurement (SEV-SNP) or MRTD (TDX), 96 `HEX` digits")
	fl.BoolVar(&f.allowDebug, "allow-debug", false, "accept debug guests (default policy only)")
	fl.StringVar(&f.policy, "policy", "", "policy `FILE` (YAML) instead of the default policy")
	fl.StringVarP(&f.output, "output", "o", formatText, "output format: text or json")
	_ = cmd.MarkFlagRequired("report")
	return cmd
}

func runAttestVerify(cmd *cobra.Command, f *verifyFlags) error {
	if err := checkFormat(f.output); err != nil {
		return err
	}
	if (f.nonce == "") != (f.key == "") {
		return usageErrorf("--nonce and --key go together: give both or neither")
	}
	if f.allowDebug && f.policy != "" {
		return usageErrorf("--allow-debug conflicts with --policy; set allowDebug in the policy")
	}
	var nonce, key []byte
	var err error
	if f.nonce != "" {
		if nonce, key, err = parseNonceKeyFlags(f.nonce, f.key); err != nil {
			return err
		}
	}
	measurement, err := parseMeasurementFlag(f.measurement)
	if err != nil {
		return err
	}

	var reportData []byte
	if f.reportData != "" {
		if reportData, err = parseHexFlag("report-data", f.reportData, 64); err != nil {
			return err
		}
	}
	now := time.Now
	if f.at != "" {
		at, err := time.Parse(time.RFC3339, f.at)
		if err != nil {
			return usageErrorf("--at %q: want an RFC3339 time such as 2026-02-03T01:00:00Z: %v", f.at, err)
		}
		now = func() time.Time { return at }
	}

	report, err := readReportFile(f.report)
	if err != nil {
		return err
	}
	isTDX := attest.IsTDXQuote(report)
	var chain *attestv1.CertChain
	var coll *attest.TDXCollateral
	if isTDX {
		if f.vcek != "" || f.chain != "" {
			return usageErrorf("--report %s is a TDX quote: it carries its PCK chain, so --vcek and --chain do not apply", f.report)
		}
		if f.collateral != "" {
			if coll, err = attest.LoadCollateral(f.collateral); err != nil {
				var pe *os.PathError
				if errors.As(err, &pe) {
					return usageErrorf("--collateral: %v", err)
				}
				return failf("--collateral: %v", err)
			}
		}
	} else {
		if len(report) != abi.ReportSize {
			return usageErrorf("--report %s: %d bytes, neither an SEV-SNP report (%d bytes) nor a TDX quote (v4/v5 header)", f.report, len(report), abi.ReportSize)
		}
		if f.collateral != "" {
			return usageErrorf("--collateral applies to TDX quotes; --report %s is an SEV-SNP report", f.report)
		}
		if f.vcek == "" {
			return usageErrorf("--vcek is required for an SEV-SNP report")
		}
		vcek, err := readCertFile(f.vcek)
		if err != nil {
			return usageErrorf("--vcek: %v", err)
		}
		// The endorsement key goes where the report's signer field says: a
		// VLEK-signed report (cloud providers) is verified against --vcek too.
		chain = &attestv1.CertChain{Vcek: vcek.Raw}
		if si, err := abi.ReportSignerInfo(report); err == nil {
			if info, err := abi.ParseSignerInfo(si); err == nil && info.SigningKey == abi.VlekReportSigner {
				chain = &attestv1.CertChain{Vlek: vcek.Raw}
			}
		}
		if f.chain != "" {
			ask, ark, err := readChainFile(f.chain)
			if err != nil {
				return usageErrorf("--chain: %v", err)
			}
			chain.Ask, chain.Ark = ask.Raw, ark.Raw
		}
	}

	policy, err := verifyPolicy(f, measurement, isTDX)
	if err != nil {
		return err
	}
	stderr := cmd.ErrOrStderr()
	v, err := attest.NewVerifier(policy, attest.Options{
		Now:           now,
		Logger:        slog.New(slog.NewTextHandler(stderr, nil)),
		TDXCollateral: coll,
	})
	if err != nil {
		// The policy parsed, so this is a root file that cannot be loaded.
		return failf("policy: %v", err)
	}

	hw, simTEE := attest.TEESevSnp, attest.TEESimSnp
	if isTDX {
		hw, simTEE = attest.TEETDX, attest.TEESimTDX
	}
	claims, err := verifyAs(v, hw, report, chain, nonce, key, reportData)
	if errors.Is(err, attest.ErrUntrustedRoot) && policy.TrustsSimulated() {
		claims2, err2 := verifyAs(v, simTEE, report, chain, nonce, key, reportData)
		// A second untrusted-root verdict says nothing new: keep the first.
		if err2 == nil || !errors.Is(err2, attest.ErrUntrustedRoot) {
			claims, err = claims2, err2
		}
	}
	if err == nil && measurement != nil && !bytes.Equal(claims.Measurement, measurement) {
		err = fmt.Errorf("%w: %x is not the measurement required by --measurement (%x)", attest.ErrMeasurement, []byte(claims.Measurement), measurement)
	}
	if err != nil {
		return failf("rejected: %s: %w", attest.Reason(err), err)
	}

	out := cmd.OutOrStdout()
	if f.output == formatJSON {
		return writeJSON(out, claims)
	}
	binding := "not checked (no --nonce/--key or --report-data): freshness and key unproven"
	switch {
	case nonce != nil && reportData != nil:
		binding = "report data = --report-data = SHA-512(nonce || key)"
	case nonce != nil:
		binding = "report data = SHA-512(nonce || key)"
	case reportData != nil:
		binding = "report data = --report-data"
	}
	return writeClaimsText(out, claims, binding)
}

// verifyPolicy is the policy verify applies: the --policy file, or the
// default policy (restricted to --measurement when given).
func verifyPolicy(f *verifyFlags, measurement []byte, tdx bool) (*attest.Policy, error) {
	if f.policy != "" {
		p, err := loadPolicyFile(f.policy)
		if err != nil {
			return nil, err
		}
		return p, nil
	}
	p := attest.DefaultPolicy()
	p.AllowDebug = f.allowDebug
	if measurement == nil {
		return p, nil
	}
	// DefaultPolicy sets an unexported "any measurement" flag that cannot be
	// cleared from outside the package. Round-tripping the exported fields
	// through the policy's own YAML form drops it (and re-applies the
	// package's defaults), leaving an ordinary allowlist policy.
	if tdx {
		p.TDX.MRTDs = []attest.HexBytes{measurement}
	} else {
		p.Measurements = []attest.HexBytes{measurement}
		p.TDX = nil
	}
	y, err := p.YAML()
	if err != nil {
		return nil, failf("build policy: %v", err)
	}
	q, err := attest.ParsePolicy(y)
	if err != nil {
		return nil, failf("build policy: %v", err)
	}
	return q, nil
}

// loadPolicyFile reads a policy: exit 2 when the file cannot be read, exit 1
// when it is invalid.
func loadPolicyFile(path string) (*attest.Policy, error) {
	p, err := attest.LoadPolicy(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, usageErrorf("%v", err)
		}
		return nil, failf("invalid policy: %v", err)
	}
	return p, nil
}

func verifyAs(v *attest.Verifier, tee string, report []byte, chain *attestv1.CertChain, nonce, key, reportData []byte) (*attest.Claims, error) {
	ev := &attestv1.Evidence{Tee: tee, Report: report, Chain: chain}
	if reportData != nil {
		c, err := v.VerifyExactReportData(ev, reportData)
		if err != nil || nonce == nil {
			return c, err
		}
	}
	if nonce != nil {
		return v.VerifyReportData(ev, nonce, key)
	}
	return v.VerifyUnbound(ev)
}

// readReportFile reads a report or quote, refusing a file larger than a
// padded TDX quote may be (attest.MaxTDXQuoteInput) before reading it:
// exit 2 when it cannot be read, 1 when it is too large.
func readReportFile(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, usageErrorf("--report: %v", err)
	}
	defer fh.Close()
	if st, err := fh.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > attest.MaxTDXQuoteInput {
		return nil, failf("rejected: %s: --report %s is %d bytes; an SEV-SNP report is %d and a TDX quote with its padding at most %d",
			attest.Reason(attest.ErrMalformedReport), path, st.Size(), abi.ReportSize, attest.MaxTDXQuoteInput)
	}
	report, err := io.ReadAll(io.LimitReader(fh, attest.MaxTDXQuoteInput+1))
	if err != nil {
		return nil, usageErrorf("--report: %v", err)
	}
	if len(report) > attest.MaxTDXQuoteInput {
		return nil, failf("rejected: %s: --report %s is more than %d bytes; an SEV-SNP report is %d and a TDX quote with its padding at most %d",
			attest.Reason(attest.ErrMalformedReport), path, attest.MaxTDXQuoteInput, abi.ReportSize, attest.MaxTDXQuoteInput)
	}
	return report, nil
}

// readCertFile reads one certificate, PEM or DER.
func readCertFile(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block is %q, want CERTIFICATE", path, block.Type)
		}
		der = block.Bytes
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%s: not a PEM or DER certificate: %v", path, err)
	}
	return cert, nil
}

// readChainFile reads the shipped chain: PEM, the ASK then the ARK.
func readChainFile(path string) (ask, ark *x509.Certificate, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, nil, fmt.Errorf("%s: PEM block is %q, want CERTIFICATE", path, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: certificate %d: %v", path, len(certs)+1, err)
		}
		certs = append(certs, c)
	}
	if len(certs) != 2 {
		return nil, nil, fmt.Errorf("%s: %d PEM certificates, want 2 (the ASK then the ARK)", path, len(certs))
	}
	return certs[0], certs[1], nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return failf("write output: %v", err)
	}
	return nil
}

// fmtTCB shows the components of the product's TCB layout (FMC only on
// Turin) and the raw value.
func fmtTCB(t attest.TCB) string { return t.String() }

func writeClaimsText(w io.Writer, c *attest.Claims, binding string) error {
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	line := func(k string, v any) { fmt.Fprintf(tw, "%s:\t%v\n", k, v) }
	if c.TDX != nil {
		writeTDXClaims(line, c, binding)
		if err := tw.Flush(); err != nil {
			return failf("write output: %v", err)
		}
		return nil
	}
	line("tee", c.TEE)
	line("product", c.Product)
	line("root", c.Root)
	line("simulated", c.Simulated)
	line("report version", c.ReportVersion)
	line("measurement", c.Measurement)
	line("host data", c.HostData)
	line("report data", c.ReportData)
	line("binding", binding)
	line("reported TCB", fmtTCB(c.ReportedTCB))
	line("launch TCB", fmtTCB(c.LaunchTCB))
	line("chip ID", c.ChipID)
	line("guest policy", fmt.Sprintf("0x%x", c.GuestPolicy))
	line("debug", c.Debug)
	line("SMT allowed", c.SMTAllowed)
	line("SMT enabled", c.SMTEnabled)
	line("migration agent", c.MigrationAgent)
	line("VMPL", c.VMPL)
	line("report ID", c.ReportID)
	line("report digest", c.ReportDigest)
	line("signer", c.Signer)
	if !c.IssuedAt.IsZero() {
		line("issued at", c.IssuedAt.Format(time.RFC3339))
	}
	if err := tw.Flush(); err != nil {
		return failf("write output: %v", err)
	}
	return nil
}

func writeTDXClaims(line func(string, any), c *attest.Claims, binding string) {
	t := c.TDX
	line("tee", c.TEE)
	line("product", c.Product)
	line("root", c.Root)
	line("simulated", c.Simulated)
	line("quote version", t.QuoteVersion)
	line("MRTD", t.MRTD)
	for i, r := range t.RTMRs {
		line(fmt.Sprintf("RTMR%d", i), r)
	}
	line("MRCONFIGID", t.MRConfigID)
	line("MROWNER", t.MROwner)
	line("MROWNERCONFIG", t.MROwnerConfig)
	line("MRSEAM", t.MRSeam)
	line("MRSIGNERSEAM", t.MRSignerSeam)
	line("SEAM attributes", t.SeamAttributes)
	line("TD attributes", t.TDAttributes)
	line("debug", c.Debug)
	line("XFAM", t.XFAM)
	line("TEE TCB SVN", t.TeeTCBSVN)
	if len(t.TeeTCBSVN2) > 0 {
		line("TEE TCB SVN2", t.TeeTCBSVN2)
		line("MRSERVICETD", t.MRServiceTD)
	}
	line("report data", c.ReportData)
	line("binding", binding)
	line("QE SVN", t.QESVN)
	line("PCE SVN", t.PCESVN)
	line("QE vendor ID", t.QEVendorID)
	line("FMSPC", t.FMSPC)
	line("PCE ID", t.PCEID)
	line("PPID", t.PPID)
	tcb := t.TCBStatus
	if tcb == "" {
		tcb = "not computed (no --collateral)"
	} else if len(t.AdvisoryIDs) > 0 {
		tcb += " (" + strings.Join(t.AdvisoryIDs, ", ") + ")"
	}
	line("TCB status", tcb)
	if t.QETCBStatus != "" {
		line("QE TCB status", t.QETCBStatus)
	}
	line("quote digest", c.ReportDigest)
	line("signer", c.Signer)
	if !c.IssuedAt.IsZero() {
		line("issued at", c.IssuedAt.Format(time.RFC3339))
	}
}

// parseNonceKeyFlags reads --nonce and --key, 32 bytes of hex each.
func parseNonceKeyFlags(nonceHex, keyHex string) (nonce, key []byte, err error) {
	if nonce, err = parseHexFlag("nonce", nonceHex, attest.NonceSize); err != nil {
		return nil, nil, err
	}
	if key, err = parseHexFlag("key", keyHex, attest.KeySize); err != nil {
		return nil, nil, err
	}
	return nonce, key, nil
}

// parseMeasurementFlag reads --measurement, a launch measurement of 96 hex
// digits; nil when the flag is empty.
func parseMeasurementFlag(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	return parseHexFlag("measurement", s, abi.MeasurementSize)
}

// parseTCBFlag reads "BL,TEE,SNP,UCODE", or "FMC,BL,TEE,SNP,UCODE" for a
// product with an FMC (Turin).
func parseTCBFlag(s string) (attest.TCBParts, error) {
	parts := strings.Split(s, ",")
	if len(parts) != 4 && len(parts) != 5 {
		return attest.TCBParts{}, usageErrorf("--tcb %q: want four numbers BL,TEE,SNP,UCODE (or five, FMC,BL,TEE,SNP,UCODE, for Turin)", s)
	}
	var v []uint8
	for i, p := range parts {
		n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 8)
		if err != nil {
			return attest.TCBParts{}, usageErrorf("--tcb %q: part %d: %v", s, i+1, err)
		}
		if n > 127 && i < len(parts)-1 {
			return attest.TCBParts{}, usageErrorf("--tcb %q: part %d: %d exceeds 127 (only microcode may reach 255)", s, i+1, n)
		}
		v = append(v, uint8(n))
	}
	if len(v) == 4 {
		v = append([]uint8{0}, v...)
	}
	return attest.TCBParts{FMC: v[0], Bootloader: v[1], TEE: v[2], SNP: v[3], Microcode: v[4]}, nil
}
