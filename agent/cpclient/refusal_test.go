package cpclient

import (
	"errors"
	"testing"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestRefusalFrom: only the control plane's verdicts become a Refusal,
// with the reason it attached; outages and stale challenges stay plain
// errors, so the agent retries them.
func TestRefusalFrom(t *testing.T) {
	labelled := func(c codes.Code, reason string) error {
		return cpv1.WithRefusalReason(status.Error(c, "no"), reason)
	}
	for _, tc := range []struct {
		name    string
		err     error
		refusal bool
		reason  string
		revoked bool
	}{
		{"revoked", labelled(codes.PermissionDenied, "revoked"), true, "revoked", true},
		{"debug guest", labelled(codes.PermissionDenied, "debug"), true, "debug", false},
		{"name taken", labelled(codes.AlreadyExists, "name_taken"), true, "name_taken", false},
		{"bad request", labelled(codes.InvalidArgument, "bad_request"), true, "bad_request", false},
		{"unlabelled", status.Error(codes.PermissionDenied, "left the peer set"), true, "", false},
		{"stale challenge", labelled(codes.FailedPrecondition, "challenge"), false, "", false},
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), false, "", false},
		{"exhausted", labelled(codes.ResourceExhausted, "cidr_exhausted"), false, "", false},
		{"not gRPC", errors.New("dial: timeout"), false, "", false},
	} {
		err := RefusalFrom("join", tc.err)
		r, ok := AsRefusal(err)
		if ok != tc.refusal {
			t.Errorf("%s: refusal %v, want %v (%v)", tc.name, ok, tc.refusal, err)
			continue
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: %v does not wrap the call's error", tc.name, err)
		}
		if ok && (r.Reason != tc.reason || r.Revoked() != tc.revoked || r.Message() != "no" && tc.reason != "") {
			t.Errorf("%s: reason %q revoked %v message %q", tc.name, r.Reason, r.Revoked(), r.Message())
		}
	}
}
