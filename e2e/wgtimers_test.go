//go:build linux

package e2e

import "time"

// WireGuard's own timers (the protocol's constants; wireguard-go and the
// kernel module share them).
const (
	// rekeyTimeout is REKEY_TIMEOUT: an initiation not answered within it
	// (plus up to rekeyJitter) is sent again.
	rekeyTimeout = 5 * time.Second
	rekeyJitter  = 333 * time.Millisecond
	// rekeyAfterTime is REKEY_AFTER_TIME: the initiator of a session
	// replaces it by a new handshake when it sends on it after this age.
	rekeyAfterTime = 120 * time.Second
)
