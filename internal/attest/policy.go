package attest

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"sigs.k8s.io/yaml"
)

// Root kinds a policy may trust.
const (
	RootAMD       = "amd"
	RootSimulated = "simulated"
	// RootIntel is Intel's SGX root CA, pinned in the binary: the root of
	// every TDX quote's PCK chain.
	RootIntel = "intel"
	// RootSimulatedTDX is a locally generated sim-tdx root read from a file
	// (PEM, one self-signed certificate).
	RootSimulatedTDX = "simulated-tdx"
)

// Defaults applied to fields a policy file leaves out. A field written in
// the file is never replaced by a default: an explicit zero, empty or null
// value is validated like any other (and refused where it makes no sense).
const (
	DefaultTrustDomain    = "confmesh.local"
	DefaultMaxEvidenceAge = 90 * time.Minute
)

// MaxMaxEvidenceAge is the longest maxEvidenceAge a policy may set: evidence
// older than a day says little about the machine now, and a larger value is
// far more likely a typo (876000h) than a decision.
const MaxMaxEvidenceAge = 24 * time.Hour

// Policy is what a verifier accepts. The same schema serves the control
// plane and every agent; each applies its own copy.
type Policy struct {
	// TrustDomain is the SPIFFE trust domain of the cluster.
	TrustDomain string `json:"trustDomain"`
	// Measurements lists accepted launch measurements (48 bytes, hex). A list
	// so that a rollout can carry the old and the new image.
	Measurements []HexBytes `json:"measurements"`
	// MinimumTCB is the lowest reported TCB accepted, part by part.
	MinimumTCB TCBMinimum `json:"minimumTCB"`
	// AllowDebug accepts guests launched with the debug policy bit. Never in production.
	AllowDebug bool `json:"allowDebug"`
	// AllowSMT accepts hosts with simultaneous multithreading enabled.
	AllowSMT bool `json:"allowSMT"`
	// AllowMigrationAgent accepts guests whose policy allows a migration agent.
	AllowMigrationAgent bool `json:"allowMigrationAgent"`
	// AllowedVMPLs lists the VM privilege levels a report may come from.
	AllowedVMPLs []uint32 `json:"allowedVMPLs"`
	// ChipIDs, when non-empty, is an allowlist of chip IDs (64 bytes, hex).
	ChipIDs []HexBytes `json:"chipIDs,omitempty"`
	// MaxEvidenceAge is the oldest evidence accepted, measured from the time
	// in its challenge. It must exceed the renewal interval (half the SVID TTL).
	MaxEvidenceAge Duration `json:"maxEvidenceAge"`
	// TrustedRoots lists the roots endorsement chains may end at.
	TrustedRoots []RootRef `json:"trustedRoots"`
	// ControlPlane is what an agent accepts from the control plane. The node
	// measurement list never admits a control plane: an agent whose policy
	// has no control-plane measurements refuses to dial (see ForControlPlane).
	ControlPlane *ControlPlanePolicy `json:"controlPlane,omitempty"`
	// TDX is what the verifier accepts from Intel TDX (and sim-tdx)
	// evidence. Without it, TDX evidence is refused.
	TDX *TDXPolicy `json:"tdx,omitempty"`

	// defaulted names the top-level fields the policy file left out.
	defaulted map[string]bool
	// anyMeasurement is set only by programmatic policies (the CLI without
	// --policy): it skips the measurement allowlist.
	anyMeasurement bool
	// cpOnly marks a ForControlPlane policy, whose lists may be empty for
	// one TEE (a control plane runs on one of them).
	cpOnly bool
}

// TCBMinimum is a minimum security patch level per TCB component, compared
// with the reported TCB decoded for the reporting product. FMC applies only
// to products that have an FMC (Turin); Milan and Genoa have none, so it is
// not checked for them, and a policy whose roots certify no Turin product
// may not set it (LoadTrustedRoots refuses it).
type TCBMinimum = TCBParts

// ControlPlanePolicy is what an agent requires of the control plane beyond
// the rest of the policy (roots, TCB, debug, SMT, VMPLs, evidence age), which
// it shares with the nodes.
type ControlPlanePolicy struct {
	// Measurements lists the accepted launch measurements of the control
	// plane's image (48 bytes, hex).
	Measurements []HexBytes `json:"measurements,omitempty"`
	// MRTDs lists the accepted MRTDs of a control plane running in a TDX
	// trust domain (48 bytes, hex).
	MRTDs []HexBytes `json:"mrtds,omitempty"`
}

// RootRef names a trusted root: the AMD roots pinned in the binary, or a
// simulated root read from a file (PEM: ASK then ARK).
type RootRef struct {
	Kind string `json:"kind"`
	File string `json:"file,omitempty"`
}

// String renders the root for logs and errors.
func (r RootRef) String() string {
	if r.File != "" {
		return r.Kind + ":" + r.File
	}
	return r.Kind
}

// HexBytes is a byte string written as lower-case hex in YAML and JSON.
type HexBytes []byte

// MarshalJSON writes lower-case hex.
func (h HexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON reads hex (either case, optional 0x prefix).
func (h *HexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a hex string (quote it: YAML reads a value of only digits as a number): %w", err)
	}
	s = strings.TrimPrefix(strings.TrimSpace(s), "0x")
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("invalid hex %q: %w", s, err)
	}
	*h = v
	return nil
}

// String returns lower-case hex.
func (h HexBytes) String() string { return hex.EncodeToString(h) }

// Duration is a time.Duration written as a Go duration string ("90m").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string such as \"90m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// LoadPolicy reads and parses a policy file.
func LoadPolicy(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	// A relative root file is relative to the policy file, not to the
	// process's working directory.
	for i, r := range p.TrustedRoots {
		if r.File != "" && !filepath.IsAbs(r.File) {
			p.TrustedRoots[i].File = filepath.Join(filepath.Dir(path), r.File)
		}
	}
	return p, nil
}

// MaxPolicySize bounds a policy file, checked before it is decoded (a
// ConfigMap holds at most 1 MiB too).
const MaxPolicySize = 1 << 20

// ParsePolicy decodes YAML strictly (an unknown field is an error naming
// it), applies defaults to the fields the file leaves out and validates.
func ParsePolicy(data []byte) (*Policy, error) {
	if len(data) > MaxPolicySize {
		return nil, fmt.Errorf("policy is %d bytes, limit %d", len(data), MaxPolicySize)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("policy is empty")
	}
	// Defaults go in first and the file is decoded over them, so a field the
	// file writes (even as 0s, "" or []) is validated as written instead of
	// being silently replaced.
	p := policyDefaults()
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	// JSON field matching ignores case, so "allowdebug: true" would
	// silently override "allowDebug: false". Keys must be spelled exactly.
	raw, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	var generic any
	if err := json.Unmarshal(raw, &generic); err != nil {
		return nil, fmt.Errorf("decode policy: %w", err)
	}
	if err := exactKeys(generic, reflect.TypeOf(p), ""); err != nil {
		return nil, err
	}
	top, _ := generic.(map[string]any)
	p.defaulted = map[string]bool{}
	for _, name := range policyFields() {
		if _, ok := top[name]; !ok {
			p.defaulted[name] = true
		}
	}
	// A policy with a tdx section and no trustedRoots trusts Intel's root
	// as well as AMD's.
	if p.TDX != nil && p.defaulted["trustedRoots"] {
		p.TrustedRoots = append(p.TrustedRoots, RootRef{Kind: RootIntel})
	}
	if p.TDX != nil {
		tdxTop, _ := top["tdx"].(map[string]any)
		if _, ok := tdxTop["acceptedTCBStatuses"]; !ok {
			p.TDX.AcceptedTCBStatuses = []string{TCBStatusUpToDate}
		}
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &p, nil
}

// policyDefaults is the policy a file starts from: AMD roots, VMPL 0, the
// default trust domain and evidence age, everything else off or empty.
func policyDefaults() Policy {
	return Policy{
		TrustDomain:    DefaultTrustDomain,
		MaxEvidenceAge: Duration(DefaultMaxEvidenceAge),
		AllowedVMPLs:   []uint32{0},
		TrustedRoots:   []RootRef{{Kind: RootAMD}},
	}
}

// policyFields lists the top-level field names of the policy schema.
func policyFields() []string {
	var out []string
	t := reflect.TypeOf(Policy{})
	for i := 0; i < t.NumField(); i++ {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// Defaulted reports whether the policy file left out the top-level field
// (by its YAML name), so that its value is the default. False for policies
// not parsed from a file.
func (p *Policy) Defaulted(field string) bool { return p.defaulted[field] }

// DefaultPolicy is the policy the CLI applies without --policy: AMD and
// Intel roots, no debug, any measurement or MRTD, VMPL 0-3, no TCB minimum,
// TDX TCB status UpToDate when collateral is given.
func DefaultPolicy() *Policy {
	p := policyDefaults()
	p.anyMeasurement, p.AllowSMT, p.AllowedVMPLs = true, true, []uint32{0, 1, 2, 3}
	p.TrustedRoots = append(p.TrustedRoots, RootRef{Kind: RootIntel})
	p.TDX = &TDXPolicy{AcceptedTCBStatuses: []string{TCBStatusUpToDate}}
	return &p
}

// AcceptAnyMeasurement returns a copy of p that skips the measurement
// allowlist. Only the CLI uses it, to check a report's other properties.
func (p *Policy) AcceptAnyMeasurement() *Policy {
	c := *p
	c.anyMeasurement = true
	return &c
}

// RequireMeasurements returns a copy of p that accepts exactly ms, even if
// p accepted any measurement.
func (p *Policy) RequireMeasurements(ms ...HexBytes) *Policy {
	c := *p
	c.anyMeasurement = false
	c.Measurements = append([]HexBytes(nil), ms...)
	return &c
}

// AcceptsAnyMeasurement reports whether the measurement allowlist is skipped.
func (p *Policy) AcceptsAnyMeasurement() bool { return p.anyMeasurement }

// ForControlPlane returns the policy an agent verifies the control plane
// with: this policy with controlPlane.measurements in place of the node
// measurements, everything else shared. A policy without control-plane
// measurements is an error wrapping ErrNoControlPlaneTrust: the node list is
// never used for the control plane, or any image approved for nodes could
// serve as one.
func (p *Policy) ForControlPlane() (*Policy, error) {
	if p.ControlPlane == nil || (len(p.ControlPlane.Measurements) == 0 && len(p.ControlPlane.MRTDs) == 0) {
		return nil, fmt.Errorf("%w: the policy lists no controlPlane.measurements (SEV-SNP) or controlPlane.mrtds (TDX), so no control plane can be trusted (the node lists are never used for it); add the control plane image's launch measurement or MRTD", ErrNoControlPlaneTrust)
	}
	c := p.RequireMeasurements(p.ControlPlane.Measurements...)
	c.cpOnly = true
	if c.TDX != nil {
		t := *c.TDX
		t.MRTDs = append([]HexBytes(nil), p.ControlPlane.MRTDs...)
		c.TDX = &t
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("control-plane policy: %w", err)
	}
	return c, nil
}

// Validate checks every field and names the first one that is wrong.
func (p *Policy) Validate() error {
	if p.TrustDomain == "" {
		return fmt.Errorf("trustDomain: empty; name the cluster's SPIFFE trust domain (leave the field out for %s)", DefaultTrustDomain)
	}
	if strings.ContainsAny(p.TrustDomain, "/:@ ") || p.TrustDomain != strings.ToLower(p.TrustDomain) {
		return fmt.Errorf("trustDomain %q: must be a lower-case DNS-like name without scheme or path", p.TrustDomain)
	}
	if len(p.Measurements) == 0 && !p.anyMeasurement && !p.cpOnly && (p.TDX == nil || len(p.TDX.MRTDs) == 0) {
		return fmt.Errorf("measurements: at least one accepted measurement is required (or, for a TDX-only cluster, tdx.mrtds)")
	}
	if err := p.checkMeasurements("measurements", p.Measurements); err != nil {
		return err
	}
	if cp := p.ControlPlane; cp != nil {
		if len(cp.Measurements) == 0 && len(cp.MRTDs) == 0 {
			return fmt.Errorf("controlPlane.measurements: empty list trusts no control plane; list the control plane image's measurement (or its MRTD under controlPlane.mrtds; or leave controlPlane out where no control plane is dialled)")
		}
		if err := p.checkMeasurements("controlPlane.measurements", cp.Measurements); err != nil {
			return err
		}
		if len(cp.MRTDs) > 0 && p.TDX == nil {
			return fmt.Errorf("controlPlane.mrtds: set, but the policy has no tdx section, so no TDX evidence is accepted; add a tdx section")
		}
		if err := p.checkMRTDs("controlPlane.mrtds", cp.MRTDs); err != nil {
			return err
		}
	}
	if p.TDX != nil {
		if err := p.TDX.validate(p); err != nil {
			return err
		}
	}
	for i, c := range p.ChipIDs {
		if len(c) != abi.ChipIDSize {
			return fmt.Errorf("chipIDs[%d]: %d bytes, want %d (128 hex digits)", i, len(c), abi.ChipIDSize)
		}
	}
	if len(p.AllowedVMPLs) == 0 {
		return fmt.Errorf("allowedVMPLs: empty list accepts nothing; list at least one of 0-3")
	}
	for i, v := range p.AllowedVMPLs {
		if v > 3 {
			return fmt.Errorf("allowedVMPLs[%d]: %d is not a VMPL (0-3)", i, v)
		}
	}
	if age := time.Duration(p.MaxEvidenceAge); age <= 0 {
		return fmt.Errorf("maxEvidenceAge: %s: must be positive and exceed the renewal interval, half the node SVID TTL (leave the field out for %s)", age, DefaultMaxEvidenceAge)
	} else if age > MaxMaxEvidenceAge {
		return fmt.Errorf("maxEvidenceAge: %s is longer than %s: evidence that old says little about the node now", age, shortDuration(MaxMaxEvidenceAge))
	}
	if len(p.TrustedRoots) == 0 {
		return fmt.Errorf("trustedRoots: empty list trusts nothing; list at least one root (leave the field out for the AMD roots)")
	}
	for _, part := range []struct {
		name string
		v    uint8
	}{{"fmc", p.MinimumTCB.FMC}, {"bootloader", p.MinimumTCB.Bootloader}, {"tee", p.MinimumTCB.TEE}, {"snp", p.MinimumTCB.SNP}} {
		if part.v > 127 {
			return fmt.Errorf("minimumTCB.%s: %d exceeds 127", part.name, part.v)
		}
	}
	seen := map[string]bool{}
	for i, r := range p.TrustedRoots {
		switch r.Kind {
		case RootAMD:
			if r.File != "" {
				return fmt.Errorf("trustedRoots[%d]: kind amd takes no file (the AMD roots are pinned in the binary)", i)
			}
		case RootIntel:
			if r.File != "" {
				return fmt.Errorf("trustedRoots[%d]: kind intel takes no file (Intel's SGX root CA is pinned in the binary)", i)
			}
		case RootSimulated, RootSimulatedTDX:
			if r.File == "" {
				return fmt.Errorf("trustedRoots[%d]: kind %s needs file: a simulated root is trusted only when named by file", i, r.Kind)
			}
		default:
			return fmt.Errorf("trustedRoots[%d]: unknown kind %q (want %q, %q, %q or %q)", i, r.Kind, RootAMD, RootIntel, RootSimulated, RootSimulatedTDX)
		}
		if seen[r.String()] {
			return fmt.Errorf("trustedRoots[%d]: %s listed twice", i, r)
		}
		seen[r.String()] = true
	}
	return nil
}

// checkMeasurements checks a measurement list's lengths, and refuses a list
// holding only the all-zero placeholder unless the policy trusts only
// simulated roots: no SEV-SNP guest reports an all-zero measurement, but a
// simulated node does by default, so under a hardware root that placeholder
// is an example value left in place, not an image anyone approved.
func (p *Policy) checkMeasurements(field string, ms []HexBytes) error {
	placeholder := len(ms) > 0
	for i, m := range ms {
		if len(m) != abi.MeasurementSize {
			return fmt.Errorf("%s[%d]: %d bytes, want %d (96 hex digits)", field, i, len(m), abi.MeasurementSize)
		}
		placeholder = placeholder && allZero(m)
	}
	if placeholder && !p.TrustsOnlySimulated() {
		return fmt.Errorf("%s: only the all-zero placeholder, which no SEV-SNP hardware reports; list the launch measurement of your image (the placeholder is accepted only in a policy whose trustedRoots are all simulated)", field)
	}
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// shortDuration renders whole hours as "24h" rather than "24h0m0s".
func shortDuration(d time.Duration) string {
	if d%time.Hour == 0 {
		return fmt.Sprintf("%dh", d/time.Hour)
	}
	return d.String()
}

// TrustsOnlySimulated reports whether every trusted root is simulated.
func (p *Policy) TrustsOnlySimulated() bool {
	for _, r := range p.TrustedRoots {
		if r.Kind != RootSimulated && r.Kind != RootSimulatedTDX {
			return false
		}
	}
	return len(p.TrustedRoots) > 0
}

// TrustsSimulated reports whether any simulated root is trusted.
func (p *Policy) TrustsSimulated() bool {
	for _, r := range p.TrustedRoots {
		if r.Kind == RootSimulated || r.Kind == RootSimulatedTDX {
			return true
		}
	}
	return false
}

// YAML renders the normalised policy.
func (p *Policy) YAML() ([]byte, error) { return yaml.Marshal(p) }

func (p *Policy) vmplAllowed(v uint32) bool {
	for _, a := range p.AllowedVMPLs {
		if a == v {
			return true
		}
	}
	return false
}

func containsBytes(list []HexBytes, v []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

// exactKeys checks that every object key in v is spelled exactly as a json
// tag of the struct type t (recursing into nested structs and slices).
func exactKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // type errors are reported by the decoder
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		for k, sub := range m {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("unknown field %q (field names are case-sensitive)", path+k)
			}
			if err := exactKeys(sub, ft, path+k+"."); err != nil {
				return err
			}
		}
	case reflect.Slice:
		items, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, it := range items {
			if err := exactKeys(it, t.Elem(), fmt.Sprintf("%s[%d].", strings.TrimSuffix(path, "."), i)); err != nil {
				return err
			}
		}
	}
	return nil
}
