package identity

import (
	"bytes"
	"crypto/sha256"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/confmesh/confmesh/internal/attest"
)

// wireGuardKeySize is the size of a WireGuard (X25519) public key.
const wireGuardKeySize = 32

// Claims is the attestation summary every node and workload SVID carries in
// its claims extension (see ClaimsOID). A peer compares these claims with the
// evidence it verifies itself; the claims never replace that verification.
type Claims struct {
	TEE          string // "sev-snp", "sim-snp", "tdx"
	Measurement  []byte // launch measurement, 48 bytes for SNP
	ReportedTCB  uint64 // raw reported TCB version
	ChipIDDigest []byte // SHA-256 of the 64-byte chip ID; empty if the TEE has none
	ReportDigest []byte // SHA-256 of the raw report (attest.Claims.ReportDigest)
	WireGuardKey []byte // the node's 32-byte WireGuard public key
	NodeID       string // the node's SPIFFE ID (set in workload SVIDs and node SVIDs alike)
}

// ClaimsFromAttestation builds the certificate claims of a node from its
// verified report claims c, its WireGuard public key and its node SPIFFE ID.
// Byte slices are copied. A nil c yields claims with only the key and node
// ID, which Extension refuses (no TEE), so a missing verification cannot
// slip into a certificate.
func ClaimsFromAttestation(c *attest.Claims, wireGuardKey []byte, nodeID spiffeid.ID) Claims {
	out := Claims{
		WireGuardKey: clone(wireGuardKey),
		NodeID:       nodeID.String(),
	}
	if c == nil {
		return out
	}
	out.TEE = c.TEE
	out.Measurement = clone(c.Measurement)
	out.ReportedTCB = c.ReportedTCB.Raw
	if len(c.ChipID) > 0 {
		d := sha256.Sum256(c.ChipID)
		out.ChipIDDigest = d[:]
	}
	out.ReportDigest = clone(c.ReportDigest)
	return out
}

// Equal reports whether c and o carry the same claims. Nil and empty byte
// slices are equal.
func (c Claims) Equal(o Claims) bool {
	return c.TEE == o.TEE &&
		bytes.Equal(c.Measurement, o.Measurement) &&
		c.ReportedTCB == o.ReportedTCB &&
		bytes.Equal(c.ChipIDDigest, o.ChipIDDigest) &&
		bytes.Equal(c.ReportDigest, o.ReportDigest) &&
		bytes.Equal(c.WireGuardKey, o.WireGuardKey) &&
		c.NodeID == o.NodeID
}

// validate checks the invariants every encoded claims value must hold: a TEE
// type, a 32-byte WireGuard key, SHA-256-sized digests when present, and a
// node ID that is a confmesh node SPIFFE ID when present.
func (c Claims) validate() error {
	if c.TEE == "" {
		return fmt.Errorf("TEE type is empty")
	}
	if len(c.WireGuardKey) != wireGuardKeySize {
		return fmt.Errorf("WireGuard key is %d bytes, want %d", len(c.WireGuardKey), wireGuardKeySize)
	}
	if n := len(c.ChipIDDigest); n != 0 && n != sha256.Size {
		return fmt.Errorf("chip ID digest is %d bytes, want %d", n, sha256.Size)
	}
	if n := len(c.ReportDigest); n != 0 && n != sha256.Size {
		return fmt.Errorf("report digest is %d bytes, want %d", n, sha256.Size)
	}
	if c.NodeID != "" {
		id, err := spiffeid.FromString(c.NodeID)
		if err != nil {
			return fmt.Errorf("node ID %q: %w", c.NodeID, err)
		}
		if _, ok := NodeNameFromID(id); !ok {
			return fmt.Errorf("node ID %q is not a confmesh node SPIFFE ID", c.NodeID)
		}
	}
	return nil
}

func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return bytes.Clone(b)
}
