package agent

import (
	"context"
	"testing"

	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
)

// TestPodCannotNameItsServiceAccount (attack): whoever calls RegisterPod
// (the plugin, passing on what the pod's spec or CNI_ARGS said) claims a
// service account; an agent that does not know the pod from its
// pod-metadata source must give it no identity at all, neither the claimed
// service account nor a default one.
func TestPodCannotNameItsServiceAccount(t *testing.T) {
	a := newTestAgent(t)
	ctx := context.Background()
	for _, p := range []*agentv1.Pod{
		{ContainerId: "c1", Netns: "/var/run/netns/c1", Namespace: "shop", Name: "intruder", Uid: "u1", ServiceAccount: "payments"},
		{ContainerId: "c2", Netns: "/var/run/netns/c2", Namespace: "shop", Name: "stranger", Uid: "u2"},
	} {
		if err := a.RegisterPod(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	pods, err := workloadBackend{a}.Pods()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		t.Errorf("pod %s/%s unknown to the pod-metadata source got the identity of service account %q", p.Namespace, p.Name, p.ServiceAccount)
	}
}
