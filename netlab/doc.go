// Package netlab builds a local confmesh cluster out of network namespaces
// on one Linux machine: an underlay bridge, a control plane and node agents
// (each a real `confmesh` process in its own namespace, attesting with the
// simulated TEE), hand-made pods, and the tools to look at it from the
// outside: wgctrl, the strict-mode counters, `confmesh status`, pod-to-pod
// traffic and a capture of every frame on the underlay.
//
// It is the engine of the e2e tests (package e2e wraps it for testing.TB)
// and of `confmesh demo`. It has no dependency on package testing: every
// function returns an error, and the caller decides what a failure means.
// Everything needs root (network namespaces, TUN, nftables, AF_PACKET).
//
// Names: every namespace, WireGuard device and leftover file a Run creates
// starts with its prefix (for instance "cme2e-1a2b-"), and Sweep removes
// exactly the leftovers of runs that have ended. docs/e2e.md describes the
// topology.
package netlab
