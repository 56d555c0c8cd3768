package claims

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// JWTClaimName is the private claim of confmesh JWT-SVIDs that carries the
// attestation summary of the node the workload runs on.
const JWTClaimName = "confmesh"

// JWTClaim is the JSON form of the private claim:
//
//	"confmesh": {
//	  "node_id":        "spiffe://<td>/confmesh/node/<name>",
//	  "tee":            "sev-snp",
//	  "measurement":    "<lower-case hex>",
//	  "reported_tcb":   "<16 hex digits>",
//	  "chip_id_digest": "<hex SHA-256>",   (omitted when the TEE has none)
//	  "report_digest":  "<hex SHA-256>"
//	}
type JWTClaim struct {
	NodeID       string `json:"node_id"`
	TEE          string `json:"tee"`
	Measurement  string `json:"measurement"`
	ReportedTCB  string `json:"reported_tcb"`
	ChipIDDigest string `json:"chip_id_digest,omitempty"`
	ReportDigest string `json:"report_digest,omitempty"`
}

// NewJWTClaim encodes c as the private JWT claim (the WireGuard key is left
// out: JWT-SVIDs do not carry it).
func NewJWTClaim(c *Claims) JWTClaim {
	j := JWTClaim{
		TEE:          c.TEE,
		Measurement:  hex.EncodeToString(c.Measurement),
		ReportedTCB:  fmt.Sprintf("%016x", c.ReportedTCB),
		ChipIDDigest: hex.EncodeToString(c.ChipIDDigest),
		ReportDigest: hex.EncodeToString(c.ReportDigest),
	}
	if !c.NodeID.IsZero() {
		j.NodeID = c.NodeID.String()
	}
	return j
}

// FromJWTClaims decodes the private claim from the claims of a JWT-SVID, for
// example jwtsvid.SVID.Claims after jwtsvid.ParseAndValidate, or the claims
// the Workload API's ValidateJWTSVID returns (as a map). Only call it on a
// token whose signature was verified. The error matches ErrNoClaims when the
// token has no "confmesh" claim.
func FromJWTClaims(all map[string]any) (*Claims, error) {
	raw, ok := all[JWTClaimName]
	if !ok {
		return nil, ErrNoClaims
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var j JWTClaim
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("%w: %q claim: %v", ErrMalformed, JWTClaimName, err)
	}
	return j.Claims()
}

// Claims decodes j.
func (j JWTClaim) Claims() (*Claims, error) {
	c := &Claims{TEE: j.TEE}
	var err error
	if c.Measurement, err = hex.DecodeString(j.Measurement); err != nil {
		return nil, fmt.Errorf("%w: measurement: %v", ErrMalformed, err)
	}
	if c.ChipIDDigest, err = hex.DecodeString(j.ChipIDDigest); err != nil {
		return nil, fmt.Errorf("%w: chip ID digest: %v", ErrMalformed, err)
	}
	if c.ReportDigest, err = hex.DecodeString(j.ReportDigest); err != nil {
		return nil, fmt.Errorf("%w: report digest: %v", ErrMalformed, err)
	}
	if j.ReportedTCB == "" {
		return nil, fmt.Errorf("%w: no reported TCB", ErrMalformed)
	}
	if c.ReportedTCB, err = strconv.ParseUint(j.ReportedTCB, 16, 64); err != nil {
		return nil, fmt.Errorf("%w: reported TCB %q: %v", ErrMalformed, j.ReportedTCB, errors.Unwrap(err))
	}
	if c.NodeID, err = parseNodeID(j.NodeID); err != nil {
		return nil, err
	}
	c.Measurement, c.ChipIDDigest, c.ReportDigest = clone(c.Measurement), clone(c.ChipIDDigest), clone(c.ReportDigest)
	if err := c.validate(false); err != nil {
		return nil, err
	}
	return c, nil
}
