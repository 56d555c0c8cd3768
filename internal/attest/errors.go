package attest

import "errors"

// Sentinel errors, one per check. Every rejection wraps exactly one of them,
// so callers can branch with errors.Is and metrics can count by Reason.
var (
	// ErrMalformed: the input's own length fields disagree with its size,
	// or a parser failed on it (a recovered panic): the class of input
	// crafted to crash parsers. Refused with its own reason, "malformed".
	ErrMalformed          = errors.New("malformed input")
	ErrMalformedEvidence  = errors.New("malformed evidence")
	ErrUnsupportedTEE     = errors.New("unsupported TEE type")
	ErrMalformedReport    = errors.New("malformed report")
	ErrUnsupportedVersion = errors.New("unsupported report version")
	ErrMissingChain       = errors.New("missing endorsement chain")
	ErrMalformedChain     = errors.New("malformed endorsement chain")
	ErrBrokenChain        = errors.New("endorsement chain does not link")
	ErrUntrustedRoot      = errors.New("untrusted root")
	ErrWrongProduct       = errors.New("chain for the wrong product")
	ErrCertExpired        = errors.New("endorsement certificate not valid now")
	ErrChain              = errors.New("endorsement chain rejected")
	ErrSignature          = errors.New("bad report signature")
	ErrDebug              = errors.New("debug guest")
	ErrVMPL               = errors.New("VMPL not allowed")
	ErrMeasurement        = errors.New("measurement not allowed")
	ErrTCBFMC             = errors.New("FMC TCB below minimum")
	ErrTCBBootloader      = errors.New("bootloader TCB below minimum")
	ErrTCBTEE             = errors.New("TEE TCB below minimum")
	ErrTCBSNP             = errors.New("SNP TCB below minimum")
	ErrTCBMicrocode       = errors.New("microcode TCB below minimum")
	ErrChipID             = errors.New("chip ID not allowed")
	// ErrWrongChip: the report's CHIP_ID is not the chip its VCEK was
	// issued for (the VCEK's hwID).
	ErrWrongChip          = errors.New("VCEK of another chip")
	ErrSMT                = errors.New("SMT not allowed")
	ErrMigrationAgent     = errors.New("migration agent not allowed")
	ErrValidation         = errors.New("report fails validation")
	ErrMalformedBinding   = errors.New("malformed binding")
	ErrBinding            = errors.New("report data does not match binding")
	ErrWrongNonce         = errors.New("wrong nonce")
	ErrWrongKey           = errors.New("wrong key")
	ErrEvidenceTooOld     = errors.New("evidence too old")
	ErrEvidenceFromFuture = errors.New("evidence from the future")
	ErrStaleChallenge     = errors.New("challenge not fresh")
	ErrTrailingData       = errors.New("trailing data after the report")
	ErrCollateral         = errors.New("collateral rejected")
	ErrNoCollateral       = errors.New("no collateral")
	ErrTCBStatus          = errors.New("TCB status not accepted")
	ErrQESVN              = errors.New("QE SVN below minimum")
	ErrPCESVN             = errors.New("PCE SVN below minimum")
	ErrRTMR               = errors.New("RTMR not allowed")
	ErrMRConfigID         = errors.New("MRCONFIGID not allowed")
	ErrXFAM               = errors.New("XFAM not allowed")
	ErrTDAttributes       = errors.New("TD attributes not allowed")
	ErrPlatform           = errors.New("platform not allowed")
	// ErrNoControlPlaneTrust: the policy lists no control-plane measurement,
	// so an agent trusts no control plane (ForControlPlane).
	ErrNoControlPlaneTrust = errors.New("policy trusts no control plane")
)

// reasons maps each sentinel to a short stable label for logs and
// metrics. A slice, so Reason is deterministic.
var reasons = []struct {
	err   error
	label string
}{
	{ErrMalformed, "malformed"},
	{ErrMalformedEvidence, "malformed_evidence"},
	{ErrUnsupportedTEE, "unsupported_tee"},
	{ErrMalformedReport, "malformed_report"},
	{ErrUnsupportedVersion, "unsupported_version"},
	{ErrMissingChain, "missing_chain"},
	{ErrMalformedChain, "malformed_chain"},
	{ErrBrokenChain, "broken_chain"},
	{ErrUntrustedRoot, "untrusted_root"},
	{ErrWrongProduct, "wrong_product"},
	{ErrCertExpired, "cert_expired"},
	{ErrChain, "chain_rejected"},
	{ErrSignature, "bad_signature"},
	{ErrDebug, "debug"},
	{ErrVMPL, "vmpl"},
	{ErrMeasurement, "measurement"},
	{ErrTCBFMC, "tcb_fmc"},
	{ErrTCBBootloader, "tcb_bootloader"},
	{ErrTCBTEE, "tcb_tee"},
	{ErrTCBSNP, "tcb_snp"},
	{ErrTCBMicrocode, "tcb_microcode"},
	{ErrChipID, "chip_id"},
	{ErrWrongChip, "wrong_chip"},
	{ErrSMT, "smt"},
	{ErrMigrationAgent, "migration_agent"},
	{ErrValidation, "validation"},
	{ErrMalformedBinding, "malformed_binding"},
	{ErrBinding, "binding"},
	{ErrWrongNonce, "wrong_nonce"},
	{ErrWrongKey, "wrong_key"},
	{ErrEvidenceTooOld, "too_old"},
	{ErrEvidenceFromFuture, "from_future"},
	{ErrStaleChallenge, "stale_challenge"},
	{ErrNoControlPlaneTrust, "no_controlplane_policy"},
	{ErrTrailingData, "trailing_data"},
	{ErrCollateral, "collateral"},
	{ErrNoCollateral, "no_collateral"},
	{ErrTCBStatus, "tcb_status"},
	{ErrQESVN, "qe_svn"},
	{ErrPCESVN, "pce_svn"},
	{ErrRTMR, "rtmr"},
	{ErrMRConfigID, "mrconfigid"},
	{ErrXFAM, "xfam"},
	{ErrTDAttributes, "td_attributes"},
	{ErrPlatform, "platform"},
}

// Reason returns the stable label of the check that rejected err, or
// "other" when err wraps none of the sentinels.
func Reason(err error) string {
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.label
		}
	}
	return "other"
}
