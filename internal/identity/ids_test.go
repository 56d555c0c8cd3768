package identity

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestValidateNodeName(t *testing.T) {
	long253 := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)
	if len(long253) != 253 {
		t.Fatalf("fixture is %d characters", len(long253))
	}
	tests := []struct {
		name    string
		in      string
		wantErr string // "" means valid
	}{
		{"simple", "node-1", ""},
		{"single char", "a", ""},
		{"digits first", "0abc", ""},
		{"dotted", "ip-10-0-0-1.ec2.internal", ""},
		{"253 chars", long253, ""},
		{"long label like kubernetes allows", strings.Repeat("x", 100), ""},
		{"empty", "", "is empty"},
		{"upper-case", "Node1", "upper-case"},
		{"too long", long253 + "e", "the limit is 253"},
		{"slash", "a/b", "invalid character '/'"},
		{"underscore", "a_b", "invalid character '_'"},
		{"space", "a b", "invalid character ' '"},
		{"non-ascii", "nöde", "invalid character"},
		{"leading dash", "-a", "starts or ends with '-'"},
		{"trailing dash", "a-", "starts or ends with '-'"},
		{"dash before dot", "a-.b", "starts or ends with '-'"},
		{"leading dot", ".a", "empty label"},
		{"trailing dot", "a.", "empty label"},
		{"double dot", "a..b", "empty label"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateNodeName(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidateNodeName(%q) = %v, want nil", tt.in, err)
				}
				return
			}
			wantErr(t, err, tt.wantErr)
			if !strings.Contains(err.Error(), "node name") {
				t.Errorf("error %q does not say what was wrong (node name)", err)
			}
		})
	}
}

func TestNodeID(t *testing.T) {
	id, err := NodeID(testTD, "worker-1.zone-a")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := id.String(), "spiffe://example.org/confmesh/node/worker-1.zone-a"; got != want {
		t.Fatalf("NodeID = %s, want %s", got, want)
	}
	for _, bad := range []string{"", "Worker", "a/b", strings.Repeat("a", 254), "a..b"} {
		if id, err := NodeID(testTD, bad); err == nil {
			t.Errorf("NodeID(%q) = %s, want error", bad, id)
		}
	}
	if _, err := NodeID(spiffeid.TrustDomain{}, "n1"); err == nil {
		t.Error("NodeID with zero trust domain succeeded")
	}
}

func TestNodeNameFromID(t *testing.T) {
	for _, name := range []string{"n1", "ip-10-0-0-1.ec2.internal", strings.Repeat("z", 253)} {
		id := mustNodeID(t, testTD, name)
		got, ok := NodeNameFromID(id)
		if !ok || got != name {
			t.Errorf("NodeNameFromID(%s) = %q, %v; want %q, true", id, got, ok, name)
		}
	}
	workload, err := WorkloadID(testTD, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	rejects := []struct {
		name string
		id   spiffeid.ID
	}{
		{"zero", spiffeid.ID{}},
		{"workload", workload},
		{"control plane", ControlPlaneID(testTD)},
		{"admin", AdminID(testTD)},
		{"trust domain", testTD.ID()},
		{"extra segment", spiffeid.RequireFromPath(testTD, "/confmesh/node/a/b")},
		{"upper-case name", spiffeid.RequireFromPath(testTD, "/confmesh/node/Node1")},
		{"underscore name", spiffeid.RequireFromPath(testTD, "/confmesh/node/a_b")},
		{"no name", spiffeid.RequireFromPath(testTD, "/confmesh/node")},
		{"other prefix", spiffeid.RequireFromPath(testTD, "/confmesh/nodes/n1")},
		{"unprefixed", spiffeid.RequireFromPath(testTD, "/node/n1")},
	}
	for _, tt := range rejects {
		t.Run(tt.name, func(t *testing.T) {
			if name, ok := NodeNameFromID(tt.id); ok {
				t.Fatalf("NodeNameFromID(%s) = %q, true; want false", tt.id, name)
			}
		})
	}
}

func TestWorkloadID(t *testing.T) {
	tests := []struct {
		name, ns, sa string
		want         string // expected ID
		wantErr      string
	}{
		{"simple", "default", "web", "spiffe://example.org/ns/default/sa/web", ""},
		{"dotted service account", "kube-system", "coredns.v2", "spiffe://example.org/ns/kube-system/sa/coredns.v2", ""},
		{"63-char namespace", strings.Repeat("n", 63), "sa", "spiffe://example.org/ns/" + strings.Repeat("n", 63) + "/sa/sa", ""},
		{"dots in namespace", "my.ns", "web", "", "no dots"},
		{"upper-case namespace", "Default", "web", "", "upper-case"},
		{"upper-case service account", "default", "Web", "", "upper-case"},
		{"empty namespace", "", "web", "", "namespace is empty"},
		{"empty service account", "default", "", "", "service account name is empty"},
		{"64-char namespace", strings.Repeat("n", 64), "web", "", "the limit is 63"},
		{"254-char service account", "default", strings.Repeat("s", 254), "", "the limit is 253"},
		{"slash in service account", "default", "a/b", "", "invalid character '/'"},
		{"slash in namespace", "a/b", "web", "", "invalid character '/'"},
		{"dash-edged namespace", "-ns", "web", "", "starts or ends with '-'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := WorkloadID(testTD, tt.ns, tt.sa)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Fatalf("WorkloadID = %s, want %s", id, tt.want)
			}
			ns, sa, ok := WorkloadFromID(id)
			if !ok || ns != tt.ns || sa != tt.sa {
				t.Fatalf("WorkloadFromID(%s) = %q, %q, %v", id, ns, sa, ok)
			}
			if _, isNode := NodeNameFromID(id); isNode {
				t.Fatalf("workload ID %s taken for a node ID", id)
			}
		})
	}
	if _, err := WorkloadID(spiffeid.TrustDomain{}, "default", "web"); err == nil {
		t.Error("WorkloadID with zero trust domain succeeded")
	}
}

func TestWorkloadFromIDRejects(t *testing.T) {
	for _, path := range []string{"/ns/default", "/ns/default/sa", "/ns/default/sa/web/x", "/ns/default/xx/web", "/ns/my.ns/sa/web", "/ns/Default/sa/web", "/confmesh/node/n1"} {
		id := spiffeid.RequireFromPath(testTD, path)
		if ns, sa, ok := WorkloadFromID(id); ok {
			t.Errorf("WorkloadFromID(%s) = %q, %q, true; want false", id, ns, sa)
		}
	}
	if _, _, ok := WorkloadFromID(spiffeid.ID{}); ok {
		t.Error("WorkloadFromID(zero) = true")
	}
}

func TestFixedIDs(t *testing.T) {
	if got, want := ControlPlaneID(testTD).String(), "spiffe://example.org/confmesh/controlplane"; got != want {
		t.Errorf("ControlPlaneID = %s, want %s", got, want)
	}
	if got, want := AdminID(testTD).String(), "spiffe://example.org/confmesh/admin"; got != want {
		t.Errorf("AdminID = %s, want %s", got, want)
	}
	if !ControlPlaneID(spiffeid.TrustDomain{}).IsZero() || !AdminID(spiffeid.TrustDomain{}).IsZero() {
		t.Error("fixed IDs of the zero trust domain are not zero")
	}
}
