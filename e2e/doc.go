// Package e2e holds confmesh's multi-node end-to-end tests and the harness
// they run on: a control plane and several node agents, each a real
// `confmesh` process in its own network namespace, joined by a bridge in an
// "underlay" namespace, attesting with the simulated TEE (sim-snp).
//
// The tests need root (network namespaces, TUN devices, nftables, raw packet
// sockets) and skip with a message otherwise. docs/e2e.md describes the
// topology, what each test asserts, and how leftovers are cleaned up.
package e2e
