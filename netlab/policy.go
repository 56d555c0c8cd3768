//go:build linux

package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/confmesh/confmesh/internal/attest/sim"
	"github.com/confmesh/confmesh/internal/attest/simtdx"
)

// ZeroMeasurement is what a simulated node reports unless told otherwise.
var ZeroMeasurement = strings.Repeat("00", 48)

// OtherMeasurement is a measurement no lab policy accepts.
var OtherMeasurement = strings.Repeat("ab", 48)

// Policy is the part of an attestation policy a lab varies. The rest is
// fixed: the cluster's simulated root, VMPL 0, no SMT, no migration agent,
// evidence at most 90 minutes old.
type Policy struct {
	// AllowDebug accepts debug guests (a lax policy).
	AllowDebug bool
	// Measurements accepted, 96 hex digits each; ZeroMeasurement when empty.
	Measurements []string
	// ControlPlaneMeasurements are the control plane measurements an agent
	// accepts; ZeroMeasurement (what the lab's control plane reports) when
	// empty.
	ControlPlaneMeasurements []string
	// TrustNoControlPlane leaves controlPlane out: an agent with this policy
	// refuses to dial any control plane.
	TrustNoControlPlane bool
	// SimTDXRoot, when set, also trusts that simulated TDX root and accepts
	// TDX quotes whose MRTD is one of Measurements (the cluster sets it
	// when it has sim-tdx nodes).
	SimTDXRoot string
}

// YAML renders the policy trusting the simulated root file root.
func (p Policy) YAML(root string) string {
	ms := p.Measurements
	if len(ms) == 0 {
		ms = []string{ZeroMeasurement}
	}
	var b strings.Builder
	b.WriteString("# written by netlab (confmesh e2e tests and demo)\ntrustDomain: confmesh.local\nmeasurements:\n")
	for _, m := range ms {
		fmt.Fprintf(&b, "  - %q\n", m) // quoted: YAML reads all-digit hex as a number
	}
	cps := p.ControlPlaneMeasurements
	if len(cps) == 0 {
		cps = []string{ZeroMeasurement}
	}
	if !p.TrustNoControlPlane {
		b.WriteString("controlPlane:\n  measurements:\n")
		for _, m := range cps {
			fmt.Fprintf(&b, "    - %q\n", m)
		}
	}
	fmt.Fprintf(&b, "allowDebug: %v\nallowSMT: false\nallowMigrationAgent: false\nallowedVMPLs: [0]\nmaxEvidenceAge: 90m\n", p.AllowDebug)
	fmt.Fprintf(&b, "trustedRoots:\n  - kind: simulated\n    file: %q\n", root)
	if p.SimTDXRoot != "" {
		fmt.Fprintf(&b, "  - kind: simulated-tdx\n    file: %q\ntdx:\n  mrtds:\n", p.SimTDXRoot)
		for _, m := range ms {
			fmt.Fprintf(&b, "    - %q\n", m)
		}
	}
	return b.String()
}

// WritePolicy writes p, trusting the simulated root file root, to path,
// atomically (a temporary file renamed into place, as a ConfigMap update
// swaps its files): a component that reloads on a change of the file never
// reads it half written (bench soak's policy reloads saw "policy is empty"
// once in 15 reloads with a plain write).
func WritePolicy(path, root string, p Policy) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(p.YAML(root)), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// The simulated CA (RSA-2048 test keys, freshly generated) is made once per
// process and saved into each cluster's directory.
var (
	caOnce sync.Once
	caMu   sync.Mutex // Save records the directory in the CA
	simCA  *sim.CA
	caErr  error
)

// SaveSimCA writes the process's simulated CA into dir and returns its root
// file.
func SaveSimCA(dir string) (string, error) {
	caOnce.Do(func() { simCA, caErr = sim.NewTestCA("") })
	if caErr != nil {
		return "", caErr
	}
	caMu.Lock()
	defer caMu.Unlock()
	if err := simCA.Save(dir); err != nil {
		return "", err
	}
	return filepath.Join(dir, sim.RootFile), nil
}

// The simulated TDX CA (ECDSA P-256) is made once per process too.
var (
	tdxOnce sync.Once
	tdxCA   *simtdx.CA
	tdxErr  error
)

// SaveSimTDXCA writes the process's simulated TDX CA into dir and returns
// its root file.
func SaveSimTDXCA(dir string) (string, error) {
	tdxOnce.Do(func() { tdxCA, tdxErr = simtdx.NewCA() })
	if tdxErr != nil {
		return "", tdxErr
	}
	caMu.Lock()
	defer caMu.Unlock()
	if err := tdxCA.Save(dir); err != nil {
		return "", err
	}
	return filepath.Join(dir, simtdx.RootFile), nil
}
