package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPluginLinksNoKubernetesClient: the plugin is exec'd for every pod and
// must start fast and link little; the Kubernetes client belongs to the
// agent (its pod-metadata source), never to the plugin.
func TestPluginLinksNoKubernetesClient(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list unavailable: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "k8s.io/") || strings.Contains(dep, "/agent/podmeta/kube") {
			t.Errorf("confmesh-cni depends on %s: keep the Kubernetes client in the agent", dep)
		}
	}
}
