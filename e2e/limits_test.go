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

// Bounds of the tests' waits, sized for a loaded 2-core CI machine (the
// measured times are logged; these only bound a failure).
const (
	failoverLimit    = 30 * time.Second // every agent on the surviving replica
	settleLimit      = 30 * time.Second // waitTunnelsSettled (TestControlPlaneFailover)
	streamStartLimit = 20 * time.Second // 100 datagrams of each stream sent (1 s unloaded)
	streamEndSlack   = 30 * time.Second // after the streams' nominal duration
	sendLimit        = 20 * time.Second // one datagram through, a handshake (and a retry) included
)
