package attest

import (
	"fmt"
	"strings"
)

// Sizes of the TDX quote fields a policy names.
const (
	TDXMRTDSize       = 48
	TDXRTMRCount      = 4
	TDXXFAMSize       = 8
	TDXAttributesSize = 8
	TDXTeeTCBSVNSize  = 16
	TDXFMSPCSize      = 6
	TDXPPIDSize       = 16
)

// TCB statuses Intel's TCB info and QE identity assign to a platform.
const (
	TCBStatusUpToDate                          = "UpToDate"
	TCBStatusSWHardeningNeeded                 = "SWHardeningNeeded"
	TCBStatusConfigurationNeeded               = "ConfigurationNeeded"
	TCBStatusConfigurationAndSWHardeningNeeded = "ConfigurationAndSWHardeningNeeded"
	TCBStatusOutOfDate                         = "OutOfDate"
	TCBStatusOutOfDateConfigurationNeeded      = "OutOfDateConfigurationNeeded"
	TCBStatusRevoked                           = "Revoked"
)

// TCBStatuses lists every TCB status, best first.
var TCBStatuses = []string{
	TCBStatusUpToDate, TCBStatusSWHardeningNeeded, TCBStatusConfigurationNeeded,
	TCBStatusConfigurationAndSWHardeningNeeded, TCBStatusOutOfDate,
	TCBStatusOutOfDateConfigurationNeeded, TCBStatusRevoked,
}

// TDXPolicy is what the verifier accepts from a TDX quote. Debug is governed
// by the policy's allowDebug, shared with SEV-SNP; the evidence age, trust
// domain and roots are shared too.
type TDXPolicy struct {
	// MRTDs lists the accepted build-time measurements of the TD (48 bytes,
	// hex): the TDX analogue of the SEV-SNP launch measurement.
	MRTDs []HexBytes `json:"mrtds"`
	// RTMRs, when set, holds exactly four entries: the required value of
	// RTMR0-3 (48 bytes, hex), or "" for a register that is not checked.
	RTMRs []HexBytes `json:"rtmrs,omitempty"`
	// MRConfigIDs, when non-empty, lists the accepted MRCONFIGID values.
	MRConfigIDs []HexBytes `json:"mrConfigIDs,omitempty"`
	// XFAMMask and XFAM, when set, require (quote XFAM & XFAMMask) == XFAM
	// (8 bytes each, hex, in quote byte order).
	XFAMMask HexBytes `json:"xfamMask,omitempty"`
	XFAM     HexBytes `json:"xfam,omitempty"`
	// TDAttributesMask and TDAttributes, when set, require
	// (quote TD_ATTRIBUTES & TDAttributesMask) == TDAttributes.
	TDAttributesMask HexBytes `json:"tdAttributesMask,omitempty"`
	TDAttributes     HexBytes `json:"tdAttributes,omitempty"`
	// MinimumTeeTCBSVN, when set, is the component-wise minimum of the
	// quote's TEE_TCB_SVN (16 bytes, hex).
	MinimumTeeTCBSVN HexBytes `json:"minimumTeeTCBSVN,omitempty"`
	// MinimumQESVN and MinimumPCESVN are the lowest quoting enclave and
	// provisioning certification enclave versions accepted.
	MinimumQESVN  uint16 `json:"minimumQESVN,omitempty"`
	MinimumPCESVN uint16 `json:"minimumPCESVN,omitempty"`
	// AcceptedTCBStatuses lists the TCB statuses (computed from collateral)
	// accepted for the platform and the quoting enclave; UpToDate when left
	// out. Without collateral no status is computed and this is not checked.
	AcceptedTCBStatuses []string `json:"acceptedTCBStatuses"`
	// RequireCollateral refuses a quote when the verifier has no collateral,
	// so the TCB status is always checked.
	RequireCollateral bool `json:"requireCollateral,omitempty"`
	// FMSPCs and PPIDs, when non-empty, are allowlists of platforms (from
	// the PCK certificate): the relay defence, like SEV-SNP chip IDs.
	FMSPCs []HexBytes `json:"fmspcs,omitempty"`
	PPIDs  []HexBytes `json:"ppids,omitempty"`
}

func (t *TDXPolicy) validate(p *Policy) error {
	if len(t.MRTDs) == 0 && !p.anyMeasurement && !p.cpOnly {
		return fmt.Errorf("tdx.mrtds: at least one accepted MRTD is required (leave the tdx section out to refuse all TDX evidence)")
	}
	if err := p.checkMRTDs("tdx.mrtds", t.MRTDs); err != nil {
		return err
	}
	if len(t.RTMRs) > 0 {
		if len(t.RTMRs) != TDXRTMRCount {
			return fmt.Errorf("tdx.rtmrs: %d entries, want exactly %d (RTMR0-3; \"\" leaves one unchecked)", len(t.RTMRs), TDXRTMRCount)
		}
		for i, r := range t.RTMRs {
			if len(r) != 0 && len(r) != TDXMRTDSize {
				return fmt.Errorf("tdx.rtmrs[%d]: %d bytes, want %d (96 hex digits) or \"\"", i, len(r), TDXMRTDSize)
			}
		}
	}
	for i, m := range t.MRConfigIDs {
		if len(m) != TDXMRTDSize {
			return fmt.Errorf("tdx.mrConfigIDs[%d]: %d bytes, want %d (96 hex digits)", i, len(m), TDXMRTDSize)
		}
	}
	for _, pair := range []struct {
		mask, value         HexBytes
		maskName, valueName string
	}{
		{t.XFAMMask, t.XFAM, "tdx.xfamMask", "tdx.xfam"},
		{t.TDAttributesMask, t.TDAttributes, "tdx.tdAttributesMask", "tdx.tdAttributes"},
	} {
		if (pair.mask == nil) != (pair.value == nil) {
			return fmt.Errorf("%s and %s: set both or neither (the check is quote & mask == value)", pair.maskName, pair.valueName)
		}
		if pair.mask == nil {
			continue
		}
		if len(pair.mask) != 8 || len(pair.value) != 8 {
			return fmt.Errorf("%s/%s: %d and %d bytes, want 8 each (16 hex digits)", pair.maskName, pair.valueName, len(pair.mask), len(pair.value))
		}
		for i := range pair.value {
			if pair.value[i]&^pair.mask[i] != 0 {
				return fmt.Errorf("%s %x has bits outside %s %x: no quote can match", pair.valueName, pair.value, pair.maskName, pair.mask)
			}
		}
	}
	if t.TDAttributesMask != nil && t.TDAttributesMask[0]&1 != 0 && t.TDAttributes[0]&1 != 0 && !p.AllowDebug {
		return fmt.Errorf("tdx.tdAttributes requires the DEBUG bit but allowDebug is false: no quote can match")
	}
	if t.MinimumTeeTCBSVN != nil && len(t.MinimumTeeTCBSVN) != TDXTeeTCBSVNSize {
		return fmt.Errorf("tdx.minimumTeeTCBSVN: %d bytes, want %d (32 hex digits)", len(t.MinimumTeeTCBSVN), TDXTeeTCBSVNSize)
	}
	if len(t.AcceptedTCBStatuses) == 0 {
		return fmt.Errorf("tdx.acceptedTCBStatuses: empty list accepts no platform; leave it out for [%s]", TCBStatusUpToDate)
	}
	for i, s := range t.AcceptedTCBStatuses {
		if !knownTCBStatus(s) {
			return fmt.Errorf("tdx.acceptedTCBStatuses[%d]: unknown status %q (want one of %s)", i, s, strings.Join(TCBStatuses, ", "))
		}
		if s == TCBStatusRevoked {
			return fmt.Errorf("tdx.acceptedTCBStatuses[%d]: %s: a revoked platform is never accepted", i, s)
		}
	}
	for i, f := range t.FMSPCs {
		if len(f) != TDXFMSPCSize {
			return fmt.Errorf("tdx.fmspcs[%d]: %d bytes, want %d (12 hex digits)", i, len(f), TDXFMSPCSize)
		}
	}
	for i, f := range t.PPIDs {
		if len(f) != TDXPPIDSize {
			return fmt.Errorf("tdx.ppids[%d]: %d bytes, want %d (32 hex digits)", i, len(f), TDXPPIDSize)
		}
	}
	if !p.trustsTDXRoot() {
		return fmt.Errorf("tdx: the policy has a tdx section but trustedRoots names no TDX root (kind %q, or %q with a file)", RootIntel, RootSimulatedTDX)
	}
	return nil
}

// checkMRTDs checks an MRTD list's lengths and, like checkMeasurements,
// refuses the all-zero placeholder unless every root is simulated.
func (p *Policy) checkMRTDs(field string, ms []HexBytes) error {
	placeholder := len(ms) > 0
	for i, m := range ms {
		if len(m) != TDXMRTDSize {
			return fmt.Errorf("%s[%d]: %d bytes, want %d (96 hex digits)", field, i, len(m), TDXMRTDSize)
		}
		placeholder = placeholder && allZero(m)
	}
	if placeholder && !p.TrustsOnlySimulated() {
		return fmt.Errorf("%s: only the all-zero placeholder, which no TDX hardware reports; list your TD image's MRTD (the placeholder is accepted only in a policy whose trustedRoots are all simulated)", field)
	}
	return nil
}

func (p *Policy) trustsTDXRoot() bool {
	for _, r := range p.TrustedRoots {
		if r.Kind == RootIntel || r.Kind == RootSimulatedTDX {
			return true
		}
	}
	return false
}

func knownTCBStatus(s string) bool {
	for _, k := range TCBStatuses {
		if k == s {
			return true
		}
	}
	return false
}

// acceptsStatus reports whether the policy accepts a TCB status.
func (t *TDXPolicy) acceptsStatus(s string) bool {
	for _, a := range t.AcceptedTCBStatuses {
		if a == s {
			return true
		}
	}
	return false
}
