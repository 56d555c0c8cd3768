package cli

import "github.com/confmesh/confmesh/bench/soak"

// checkControlPlanesFlag refuses a --control-planes value other than
// auto, kubernetes or standalone (a usage error: nothing runs).
func checkControlPlanesFlag(v string) error {
	switch v {
	case soak.ModeAuto, soak.ModeKubernetes, soak.ModeStandalone:
		return nil
	}
	return usageErrorf("--control-planes %q: want %s, %s or %s", v, soak.ModeAuto, soak.ModeKubernetes, soak.ModeStandalone)
}
