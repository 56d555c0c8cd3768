package attest

import (
	"bytes"
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
	// It is one accepted tuple; RTMRSets lists several. A policy sets at
	// most one of the two.
	RTMRs []HexBytes `json:"rtmrs,omitempty"`
	// RTMRSets, when set, lists accepted RTMR tuples, each like RTMRs
	// (four entries, "" unchecked in that tuple). A TD passes when its
	// RTMR0-3 match every checked register of at least one tuple: during a
	// roll the old and the new image's tuples are both listed, and a mix
	// of the two (one image's RTMR1 with the other's RTMR2) matches none.
	RTMRSets [][]HexBytes `json:"rtmrSets,omitempty"`
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
	if err := t.validateRTMRs(); err != nil {
		return err
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

// validateRTMRs checks rtmrs and rtmrSets: at most one of them, four
// entries per tuple, each 48 bytes or "".
func (t *TDXPolicy) validateRTMRs() error {
	if t.RTMRs != nil && t.RTMRSets != nil {
		return fmt.Errorf("tdx.rtmrs and tdx.rtmrSets: both set; use one: rtmrSets lists every accepted tuple (move the rtmrs tuple into it)")
	}
	if len(t.RTMRs) > 0 {
		return checkRTMRTuple("tdx.rtmrs", t.RTMRs)
	}
	if t.RTMRSets == nil {
		return nil
	}
	if len(t.RTMRSets) == 0 {
		return fmt.Errorf("tdx.rtmrSets: empty list accepts no TD; list at least one RTMR tuple, or leave the field out to check no RTMR")
	}
	for i, set := range t.RTMRSets {
		name := fmt.Sprintf("tdx.rtmrSets[%d]", i)
		if err := checkRTMRTuple(name, set); err != nil {
			return err
		}
		checked := false
		for _, r := range set {
			checked = checked || len(r) > 0
		}
		if !checked {
			return fmt.Errorf("%s: every register is \"\": this set accepts any RTMRs, so the other sets check nothing; pin at least one register, or leave rtmrSets out to check no RTMR", name)
		}
	}
	return nil
}

// checkRTMRTuple checks one tuple: RTMR0-3, each 48 bytes or "".
func checkRTMRTuple(name string, set []HexBytes) error {
	if len(set) != TDXRTMRCount {
		return fmt.Errorf("%s: %d entries, want exactly %d (RTMR0-3; \"\" leaves one unchecked)", name, len(set), TDXRTMRCount)
	}
	for i, r := range set {
		if len(r) != 0 && len(r) != TDXMRTDSize {
			return fmt.Errorf("%s[%d] (RTMR%d): %d bytes, want %d (96 hex digits) or \"\"", name, i, i, len(r), TDXMRTDSize)
		}
	}
	return nil
}

// AcceptedRTMRSets returns the accepted RTMR tuples: rtmrSets, or rtmrs as
// the only tuple; nil when the policy checks no RTMR.
func (t *TDXPolicy) AcceptedRTMRSets() [][]HexBytes {
	if len(t.RTMRs) > 0 {
		return [][]HexBytes{t.RTMRs}
	}
	return t.RTMRSets
}

// checkRTMRs passes when the quote's RTMR0-3 match one accepted tuple. The
// refusal names the registers that differ from the closest tuple (fewest
// differing registers; the first of equals), where the operator most
// likely meant the node to match.
func (t *TDXPolicy) checkRTMRs(got []HexBytes) error {
	sets := t.AcceptedRTMRSets()
	if len(sets) == 0 {
		return nil
	}
	var closest []int
	closestSet := 0
	for i, set := range sets {
		diff := rtmrDiff(set, got)
		if len(diff) == 0 {
			return nil
		}
		if closest == nil || len(diff) < len(closest) {
			closest, closestSet = diff, i
		}
	}
	names := make([]string, len(closest))
	for i, r := range closest {
		names[i] = fmt.Sprintf("RTMR%d", r)
	}
	list, verb, noun := names[0], "is", "value"
	if n := len(names); n > 1 {
		list, verb, noun = strings.Join(names[:n-1], ", ")+" and "+names[n-1], "are", "values"
	}
	if len(sets) == 1 {
		return fmt.Errorf("%w: %s %s not the policy's %s", ErrRTMR, list, verb, noun)
	}
	return fmt.Errorf("%w: the RTMRs match none of the %d tdx.rtmrSets (closest: tdx.rtmrSets[%d], where %s %s not its %s)",
		ErrRTMR, len(sets), closestSet, list, verb, noun)
}

// rtmrDiff lists the registers a tuple checks that got does not match; a
// register missing from got never matches.
func rtmrDiff(set, got []HexBytes) []int {
	var diff []int
	for i, want := range set {
		if len(want) > 0 && (i >= len(got) || !bytes.Equal(got[i], want)) {
			diff = append(diff, i)
		}
	}
	return diff
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
