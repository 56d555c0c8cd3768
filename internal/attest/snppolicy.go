package attest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"
	"sync"

	attestv1 "github.com/confmesh/confmesh/api/attest/v1"
	"github.com/confmesh/confmesh/internal/attest/kdscert"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"google.golang.org/protobuf/proto"
)

// checkPolicy applies the policy, one named check at a time, then runs
// go-sev-guest's validate as a second line (TCB consistency with the
// certificate, chip ID against the certificate's HWID, policy bits).
func (v *Verifier) checkPolicy(report *spb.Report, cv *chainVerdict) error {
	p := v.policy
	gp, err := abi.ParseSnpPolicy(report.GetPolicy())
	if err != nil {
		return fmt.Errorf("%w: guest policy: %v", ErrMalformedReport, err)
	}
	pi, err := abi.ParseSnpPlatformInfo(report.GetPlatformInfo())
	if err != nil {
		return fmt.Errorf("%w: platform info: %v", ErrMalformedReport, err)
	}
	if gp.Debug && !p.AllowDebug {
		return fmt.Errorf("%w: the guest was launched with debugging allowed (its memory is readable by the host) and the policy forbids debug", ErrDebug)
	}
	if !p.vmplAllowed(report.GetVmpl()) {
		return fmt.Errorf("%w: report comes from VMPL %d, policy allows %v", ErrVMPL, report.GetVmpl(), p.AllowedVMPLs)
	}
	if !p.anyMeasurement && !containsBytes(p.Measurements, report.GetMeasurement()) {
		return fmt.Errorf("%w: %x is not one of the %d accepted measurements", ErrMeasurement, report.GetMeasurement(), len(p.Measurements))
	}
	// The TCB is decoded with the layout of the product the chain
	// certifies (a v3+ report's CPUID has been checked to name the same).
	line := cv.root.ProductLine()
	tcb, err := DecodeTCB(line, report.GetReportedTcb())
	if err != nil {
		return fmt.Errorf("%w: %v", ErrWrongProduct, err)
	}
	floor := p.MinimumTCB
	if !HasFMC(line) {
		floor.FMC = 0 // no such component on this product
	}
	have := tcb.Parts()
	for _, part := range []struct {
		err       error
		got, want uint8
	}{
		{ErrTCBFMC, have.FMC, floor.FMC},
		{ErrTCBBootloader, have.Bootloader, floor.Bootloader},
		{ErrTCBTEE, have.TEE, floor.TEE},
		{ErrTCBSNP, have.SNP, floor.SNP},
		{ErrTCBMicrocode, have.Microcode, floor.Microcode},
	} {
		if part.got < part.want {
			return fmt.Errorf("%w: %s reported %d, minimum %d", part.err, line, part.got, part.want)
		}
	}
	// go-sev-guest v0.15.0 compares TCBs byte by byte in the Milan layout,
	// so it gets the minimum in the reporting product's own byte positions.
	minRaw, err := EncodeTCB(line, floor)
	if err != nil {
		return fmt.Errorf("%w: minimumTCB for %s: %v", ErrValidation, line, err)
	}
	if len(p.ChipIDs) > 0 && !containsBytes(p.ChipIDs, report.GetChipId()) {
		return fmt.Errorf("%w: chip %x… is not on the policy's allowlist", ErrChipID, head(report.GetChipId()))
	}
	if pi.SMTEnabled && !p.AllowSMT {
		return fmt.Errorf("%w: the host has simultaneous multithreading enabled and the policy forbids it", ErrSMT)
	}
	if gp.MigrateMA && !p.AllowMigrationAgent {
		return fmt.Errorf("%w: the guest policy allows a migration agent and the policy forbids it", ErrMigrationAgent)
	}

	opts := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0,
			Debug: p.AllowDebug, SMT: true, MigrateMA: p.AllowMigrationAgent,
			CXLAllowed: true,
		},
		MinimumTCB: kds.DecomposeTCBVersion(kds.TCBVersion(minRaw)),
		// Provisional firmware (committed < current) is accepted: the reported
		// TCB, which the VCEK certifies and the policy bounds, is what counts.
		PermitProvisionalFirmware: true,
	}
	att := &spb.Attestation{Report: report, CertificateChain: &spb.CertificateChain{}}
	// Put the verified endorsement certificate where validate looks.
	info, _ := abi.ParseSignerInfo(report.GetSignerInfo())
	switch {
	case cv.standIn != nil:
		// A Turin VCEK: validate reads its stand-in, and the CHIP_ID,
		// compared with the 8-byte hwID by checkChipHWID already, is
		// hidden from validate's 64-byte comparison.
		r := proto.Clone(report).(*spb.Report)
		r.ChipId = make([]byte, abi.ChipIDSize)
		att.Report = r
		att.CertificateChain.VcekCert = cv.standIn
	case info.SigningKey == abi.VlekReportSigner:
		att.CertificateChain.VlekCert = cv.cert.Raw
	default:
		att.CertificateChain.VcekCert = cv.cert.Raw
	}
	if err := validate.SnpAttestation(att, opts); err != nil {
		return fmt.Errorf("%w: %v", ErrValidation, err)
	}
	return nil
}

func (v *Verifier) claims(ev *attestv1.Evidence, report *spb.Report, signer abi.ReportSigner, cv *chainVerdict) *Claims {
	gp, _ := abi.ParseSnpPolicy(report.GetPolicy())
	pi, _ := abi.ParseSnpPlatformInfo(report.GetPlatformInfo())
	digest := sha256.Sum256(ev.GetReport())
	// checkPolicy has decoded the reported TCB with this product's layout.
	line := cv.root.ProductLine()
	reported, _ := DecodeTCB(line, report.GetReportedTcb())
	launch, _ := DecodeTCB(line, report.GetLaunchTcb())
	return &Claims{
		TEE:            ev.GetTee(),
		Product:        cv.root.ProductLine(),
		Root:           cv.root.Name,
		Simulated:      cv.root.Simulated,
		ReportVersion:  report.GetVersion(),
		Measurement:    report.GetMeasurement(),
		HostData:       report.GetHostData(),
		ReportData:     report.GetReportData(),
		ReportedTCB:    reported,
		LaunchTCB:      launch,
		ChipID:         report.GetChipId(),
		GuestPolicy:    report.GetPolicy(),
		Debug:          gp.Debug,
		SMTAllowed:     gp.SMT,
		SMTEnabled:     pi.SMTEnabled,
		MigrationAgent: gp.MigrateMA,
		VMPL:           report.GetVmpl(),
		ReportID:       report.GetReportId(),
		ReportDigest:   digest[:],
		Signer:         signer.String(),
	}
}

var (
	standInOnce sync.Once
	standInKey  ed25519.PrivateKey
	standInErr  error
)

// standInCert carries a verified structVersion 1 (Turin) VCEK's facts in the
// structVersion 0 form that go-sev-guest v0.15.0's validate reads: the same
// product name and raw TCB (each TCB byte in the extension go-sev-guest
// composes into that byte), the hwID padded to 64 bytes. validate reads only
// a certificate's extensions, never its signature or key; the chain and the
// report signature were verified on the real VCEK (verifyKDSCertV1), so the
// stand-in is signed with a throwaway process key and never leaves
// checkPolicy.
func standInCert(exts *kdscert.Extensions) ([]byte, error) {
	standInOnce.Do(func() { _, standInKey, standInErr = ed25519.GenerateKey(rand.Reader) })
	if standInErr != nil {
		return nil, fmt.Errorf("stand-in key: %w", standInErr)
	}
	v0 := *exts
	v0.StructVersion = 0
	v0.HWID = append(append([]byte{}, exts.HWID...), make([]byte, kdscert.HWIDSizeV0-len(exts.HWID))...)
	ext, err := kdscert.Encode(&v0)
	if err != nil {
		return nil, fmt.Errorf("stand-in for the %s VCEK: %w", exts.ProductLine, err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), ExtraExtensions: ext}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, standInKey.Public(), standInKey)
	if err != nil {
		return nil, fmt.Errorf("stand-in for the %s VCEK: %w", exts.ProductLine, err)
	}
	// The stand-in must read back as exactly the VCEK's facts.
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("stand-in for the %s VCEK: %w", exts.ProductLine, err)
	}
	back, err := kds.VcekCertificateExtensions(cert)
	if err != nil || uint64(back.TCBVersion) != exts.TCB || back.ProductName != exts.ProductName {
		return nil, fmt.Errorf("stand-in for the %s VCEK does not read back (%v)", exts.ProductLine, err)
	}
	return der, nil
}
