package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/confmesh/confmesh/agent/cpclient"
	"github.com/confmesh/confmesh/agent/workload"
	agentv1 "github.com/confmesh/confmesh/api/agent/v1"
	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStopIfRefused: the control plane's refusal of a join stops the
// agent (revoked or refused, with the reason, not ready, no peers, no
// renewal, NodeInfo refused to the CNI plugin, the state metric set);
// an outage or an unlabelled refusal does not.
func TestStopIfRefused(t *testing.T) {
	for _, tc := range []struct {
		reason, state string
	}{
		{"revoked", StateRevoked},
		{"debug", StateRefused},
	} {
		a := newTestAgent(t)
		a.mu.Lock()
		a.joined, a.haveSnap = true, true
		a.setStateLocked(StateActive, "")
		a.records["node-b"] = &cpv1.Peer{Name: "node-b"}
		a.peerState["node-b"] = peerStatus{record: a.records["node-b"]}
		a.mu.Unlock()

		for _, err := range []error{
			errors.New("dial: connection refused"),
			cpclient.RefusalFrom("join", status.Error(codes.Unavailable, "down")),
			cpclient.RefusalFrom("join", status.Error(codes.PermissionDenied, "unlabelled")),
		} {
			if a.stopIfRefused(err) {
				t.Fatalf("%v stopped the agent", err)
			}
		}
		refusal := cpclient.RefusalFrom("join", cpv1.WithRefusalReason(status.Error(codes.PermissionDenied, "the control plane's words"), tc.reason))
		if !a.stopIfRefused(refusal) {
			t.Fatalf("%s: refusal did not stop the agent", tc.reason)
		}
		st := a.Status()
		if st.State != tc.state || !strings.Contains(st.StateReason, tc.reason) || !strings.Contains(st.StateReason, "the control plane's words") || st.StateSince == nil {
			t.Errorf("%s: status state %q reason %q since %v", tc.reason, st.State, st.StateReason, st.StateSince)
		}
		if st.Ready || !strings.Contains(st.ReadyReason, tc.state) || st.Attested || len(st.Peers) != 0 {
			t.Errorf("%s: ready %v %q attested %v peers %v; want not ready naming %s, not attested, no peers", tc.reason, st.Ready, st.ReadyReason, st.Attested, st.Peers, tc.state)
		}
		if a.renewDue() || !a.stopped() {
			t.Errorf("%s: renewDue %v stopped %v", tc.reason, a.renewDue(), a.stopped())
		}
		if _, err := (&localAPI{a: a}).NodeInfo(t.Context(), &agentv1.NodeInfoRequest{}); status.Code(err) != codes.Unavailable {
			t.Errorf("%s: NodeInfo: %v, want Unavailable", tc.reason, err)
		}
		if _, err := (workloadBackend{a}).SignJWT(t.Context(), workload.Pod{UID: "u"}, []string{"x"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("%s: workload SignJWT: %v, want PermissionDenied without a control plane call", tc.reason, err)
		}
		if v := stateGauge(t, a, tc.state); v != 1 {
			t.Errorf("%s: confmesh_agent_state{state=%q} = %v", tc.reason, tc.state, v)
		}
		if v := stateGauge(t, a, StateActive); v != 0 {
			t.Errorf("%s: confmesh_agent_state{state=active} = %v after stopping", tc.reason, v)
		}
	}
}

// stateGauge reads confmesh_agent_state{state=state} from the registry.
func stateGauge(t *testing.T, a *Agent, state string) float64 {
	t.Helper()
	fams, err := a.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "confmesh_agent_state" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "state" && l.GetValue() == state {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no confmesh_agent_state{state=%q}", state)
	return 0
}
