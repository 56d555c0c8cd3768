package soak

import (
	"errors"
	"fmt"
	"slices"
)

// The control-plane modes of a soak (`--control-planes`).
const (
	// ModeAuto is ModeKubernetes when the API server tools are built,
	// else ModeStandalone.
	ModeAuto = "auto"
	// ModeStandalone is one control plane on its bbolt store; its event
	// is KindControlPlane (SIGKILL and restart: an outage).
	ModeStandalone = "standalone"
	// ModeKubernetes is two control-plane replicas on the Kubernetes
	// store of a real kube-apiserver + etcd; its event is
	// KindControlPlaneFailover.
	ModeKubernetes = "kubernetes"
)

// ResolveMode turns the --control-planes flag into the mode the soak runs.
// toolsErr is why the API server tools cannot be used (nil: they can).
// For ModeAuto without the tools it returns ModeStandalone and a note
// saying so; ModeKubernetes without them is an error naming the command
// that builds them; anything else is an error naming the accepted values.
func ResolveMode(flag string, toolsErr error) (mode, note string, err error) {
	switch flag {
	case ModeStandalone:
		return ModeStandalone, "", nil
	case ModeKubernetes:
		if toolsErr != nil {
			return "", "", fmt.Errorf("--control-planes kubernetes needs etcd and kube-apiserver: %w", toolsErr)
		}
		return ModeKubernetes, "", nil
	case ModeAuto, "":
		if toolsErr != nil {
			return ModeStandalone, fmt.Sprintf("no control-plane failovers: %v; soaking with one standalone control plane (kill and restart)", toolsErr), nil
		}
		return ModeKubernetes, "", nil
	}
	return "", "", fmt.Errorf("--control-planes %q: want %s, %s or %s", flag, ModeAuto, ModeKubernetes, ModeStandalone)
}

// CycleFor is the scheduled event cycle of a mode: Cycle, with the
// control-plane kill replaced by a failover in ModeKubernetes.
func CycleFor(mode string) ([]Kind, error) {
	switch mode {
	case ModeStandalone:
		return slices.Clone(Cycle), nil
	case ModeKubernetes:
		c := slices.Clone(Cycle)
		for i, k := range c {
			if k == KindControlPlane {
				c[i] = KindControlPlaneFailover
			}
		}
		return c, nil
	}
	return nil, fmt.Errorf("soak: unknown control-plane mode %q", mode)
}

// ReplicasOf is how many control-plane replicas a mode runs.
func ReplicasOf(mode string) int {
	if mode == ModeKubernetes {
		return 2
	}
	return 1
}

// FailoverVictim picks the replica a failover kills: the one most of the
// stable agents use (uses maps each stable agent to the replica address it
// reports), the earlier of replicas on a tie. It is an error when no
// stable agent uses any of the replicas.
func FailoverVictim(replicas []string, uses map[string]string) (int, error) {
	count := make([]int, len(replicas))
	for _, addr := range uses {
		if i := slices.Index(replicas, addr); i >= 0 {
			count[i]++
		}
	}
	best := -1
	for i, n := range count {
		if n > 0 && (best < 0 || n > count[best]) {
			best = i
		}
	}
	if best < 0 {
		return -1, errors.New("no stable agent uses any control-plane replica")
	}
	return best, nil
}
