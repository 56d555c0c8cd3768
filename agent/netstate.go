package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// netStateFile remembers the node's pod and cluster CIDRs across restarts,
// so the strict rules a restarted agent installs first already exempt its
// own pods: without it, a restart (worse, a restart during a control-plane
// outage) would cut local pods off until the next successful join.
const netStateFile = "network.json"

type netState struct {
	PodCIDR     netip.Prefix `json:"podCIDR"`
	ClusterCIDR netip.Prefix `json:"clusterCIDR"`
}

func loadNetState(dir string) (netState, error) {
	var st netState
	data, err := os.ReadFile(filepath.Join(dir, netStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return netState{}, fmt.Errorf("%s: %w", netStateFile, err)
	}
	if !st.PodCIDR.IsValid() || !st.ClusterCIDR.IsValid() || !st.ClusterCIDR.Contains(st.PodCIDR.Addr()) {
		return netState{}, fmt.Errorf("%s: pod CIDR %s is not inside cluster CIDR %s", netStateFile, st.PodCIDR, st.ClusterCIDR)
	}
	return st, nil
}

func saveNetState(dir string, st netState) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, netStateFile), data, 0o600)
}
