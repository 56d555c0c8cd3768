// Package hostveth names the host end of a pod's veth. The CNI plugin
// creates the link under this name and the agent's strict mode recognises
// the pod's interface by it, so both must derive it the same way; it is its
// own package so that the agent need not import the plugin.
package hostveth

import (
	"crypto/sha256"
	"encoding/hex"
)

// Prefix starts every host-side veth name.
const Prefix = "cm"

// Name is the host-side veth of an attachment: Prefix and 8 hex digits of
// SHA-256(containerID NUL ifname), 10 bytes in all (IFNAMSIZ allows 15).
// It is derived, not stored, so DEL and GC find the link even when the
// container's netns is gone, and the agent can name it from its IPAM
// reservation.
func Name(containerID, ifname string) string {
	h := sha256.Sum256([]byte(containerID + "\x00" + ifname))
	return Prefix + hex.EncodeToString(h[:4])
}
