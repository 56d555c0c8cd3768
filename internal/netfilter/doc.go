// Package netfilter programs confmesh's strict, fail-closed mode: an nftables
// table (family inet, one table for IPv4 and IPv6, default name "confmesh")
// that guarantees no packet to another node's pods leaves the node in
// plaintext, and no packet claiming to come from another node's pods is
// accepted unless it came out of the WireGuard device.
//
// # What Install programs
//
// Describe prints it; for cluster 10.98.0.0/16, local 10.98.1.0/24, device cm0:
//
//	table inet confmesh
//	counter inet confmesh strict_out_drop
//	counter inet confmesh strict_in_drop
//	chain inet confmesh out { type filter hook postrouting priority 200; policy accept; }
//	rule inet confmesh out ip daddr 10.98.0.0/16 oifname != "cm0" meta oiftype != loopback ip daddr != 10.98.1.0/24 counter name "strict_out_drop" drop
//	chain inet confmesh in { type filter hook prerouting priority -300; policy accept; }
//	rule inet confmesh in ip saddr 10.98.0.0/16 iifname != "cm0" meta iiftype != loopback ip saddr != 10.98.1.0/24 counter name "strict_in_drop" drop
//
// One self-contained rule per cluster CIDR and chain; each carries every
// condition (no accept/return shortcuts), so rule order does not matter. Both
// chains have policy accept: the table only ever drops, everything that is
// not remote-pod traffic is left to the rest of the node's firewall.
//
//   - out, postrouting, priority 200 (srcnat+100): sees forwarded pod traffic
//     and host-originated traffic after the routing decision, with the final
//     output interface. It runs after every standard priority that may still
//     change a packet (mangle, filter, security, srcnat), so nothing with a
//     standard priority rewrites a packet after it has been checked, and
//     before the conntrack helpers (300) and conntrack confirmation (last), so
//     a dropped flow never gets a confirmed conntrack entry. A missing route,
//     a deleted WireGuard device or a rogue route via the underlay all end
//     in a drop.
//   - in, prerouting, priority -300 (raw): before routing, conntrack (-200)
//     and destination NAT (-100), after defragmentation (-400). Spoofed or
//     plaintext remote-pod traffic arriving on the underlay (or from a local
//     pod claiming a remote pod's address) is dropped before it creates any
//     state.
//
// The device is matched by name (oifname/iifname), so the rules are in force
// before the device exists: at boot everything remote is dropped until the
// tunnel is up. With no local CIDRs (before join) everything in the cluster
// CIDRs is dropped unless it uses the device.
//
// Loopback is exempt (meta oiftype/iiftype loopback, matched by device type,
// not by the renamable name "lo"): a packet routed to the loopback device
// never leaves the node, and a packet that arrives on it was sent by the node
// itself and already passed the out chain. Without this, the node could not
// talk to its own addresses in the cluster CIDR (e.g. the WireGuard device's
// address) before it knows its local CIDR.
//
// # Atomicity and restarts
//
// Install sends one nftables batch, which the kernel commits as one
// transaction: create the table if absent (waking it if dormant), flush its
// rules, delete chains that are not ours or have a stale type, hook or
// priority, create the counters if absent, (re)create both base chains and add
// the rules. Packets see the old rule set or the new one, never a gap; a
// failed batch is rolled back whole, leaving the old rules in force. An agent
// that restarts and re-installs the same rules never opens a window, and the
// table is not owned by the agent's netlink socket (no NFT_TABLE_F_OWNER), so
// it outlives the agent. Only Remove (`confmesh agent cleanup`) deletes it.
//
// # Counters
//
// Drops are counted in named counter objects (strict_out_drop,
// strict_in_drop) referenced from the rules, read back with GETOBJ
// (Counters). Re-installing keeps their values, because re-adding an existing
// counter object is a no-op in the kernel; they reset only when the table is
// removed. Counters returns packets.
//
// # Network namespaces
//
// All kernel-facing functions act on the network namespace of the calling
// OS thread (each call opens its own netlink socket), so they compose with
// ns.NetNS.Do.
//
// # Limits
//
// The underlay addresses (WireGuard endpoints) must not lie inside a cluster
// CIDR: the tunnel's own encrypted packets would be dropped. Traffic that
// leaves through an IPsec transform on another device would be dropped too;
// confmesh uses WireGuard only.
package netfilter
