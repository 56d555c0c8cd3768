package cpclient

import (
	"errors"
	"fmt"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Refusal is the control plane's verdict on this node in answer to a Join
// or Renew, as opposed to an outage or a stale challenge: the same request
// would be refused again. It wraps the gRPC status error.
type Refusal struct {
	// Op is "join" or "renew".
	Op string
	// Reason is the control plane's label (cpv1.RefusalReason): "revoked",
	// "debug", "measurement", "name_taken", ...; empty when it sent none
	// (a renewal by a node no longer in the peer set).
	Reason string
	err    error
}

func (r *Refusal) Error() string { return fmt.Sprintf("%s: %v", r.Op, r.err) }

// Unwrap returns the gRPC status error.
func (r *Refusal) Unwrap() error { return r.err }

// Revoked says whether an operator revoked the node: permanent.
func (r *Refusal) Revoked() bool { return r.Reason == cpv1.ReasonRevoked }

// Message is the control plane's own words.
func (r *Refusal) Message() string { return status.Convert(r.err).Message() }

// RefusalFrom makes a failed Join or Renew call (op "join" or "renew") a
// *Refusal when the control plane refused (PermissionDenied, AlreadyExists,
// InvalidArgument), else wraps it with op.
func RefusalFrom(op string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch st.Code() {
	case codes.PermissionDenied, codes.AlreadyExists, codes.InvalidArgument:
		reason, _ := cpv1.RefusalReason(st)
		return &Refusal{Op: op, Reason: reason, err: err}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// AsRefusal returns the Refusal in err's chain, if any.
func AsRefusal(err error) (*Refusal, bool) {
	var r *Refusal
	ok := errors.As(err, &r)
	return r, ok
}
