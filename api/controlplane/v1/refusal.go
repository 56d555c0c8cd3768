package controlplanev1

import (
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RefusalDomain is the ErrorInfo domain of the control plane's refusals:
// a refused Join or Renew carries an ErrorInfo whose reason is the
// refusal's label (the confmesh_controlplane_joins_total reason), e.g.
// "revoked", "debug", "measurement", "name_taken".
const RefusalDomain = "confmesh.controlplane.v1"

// ReasonRevoked is the label of a refusal because an operator revoked the
// node (its chip or WireGuard key): permanent.
const ReasonRevoked = "revoked"

// WithRefusalReason returns err (a gRPC status error) with an ErrorInfo
// naming reason; err itself if it is no status or cannot carry details.
func WithRefusalReason(err error, reason string) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() == codes.OK {
		return err
	}
	withInfo, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: RefusalDomain})
	if derr != nil {
		return err
	}
	return withInfo.Err()
}

// RefusalReason is the label a refusal carries (WithRefusalReason), and
// false when it carries none.
func RefusalReason(st *status.Status) (string, bool) {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == RefusalDomain {
			return info.GetReason(), true
		}
	}
	return "", false
}
