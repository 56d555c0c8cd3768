// Package netfilter programs confmesh's strict, fail-closed mode: an nftables
// table (family inet, one table for IPv4 and IPv6, default name "confmesh")
// that guarantees no packet to a cluster address leaves the node in
// plaintext, nothing with a cluster source or destination arrives from the
// underlay in clear, and each local pod sends only from its own address.
//
// # What Install programs
//
// Describe prints it; for cluster 10.98.0.0/16, local 10.98.1.0/24, device
// cm0 and one pod 10.98.1.5 whose host veth is cm1111aaaa:
//
//	table inet confmesh
//	counter inet confmesh strict_out_drop
//	counter inet confmesh strict_in_drop
//	counter inet confmesh strict_spoof_drop
//	set inet confmesh pod_ifs { type ifname; }
//	set inet confmesh pod_addrs4 { type ifname . ipv4_addr; }
//	set inet confmesh pod_addrs6 { type ifname . ipv6_addr; }
//	element inet confmesh pod_ifs { "cm1111aaaa" }
//	element inet confmesh pod_addrs4 { "cm1111aaaa" . 10.98.1.5 }
//	chain inet confmesh out { type filter hook postrouting priority 200; policy accept; }
//	rule inet confmesh out ip daddr 10.98.0.0/16 oifname != "cm0" meta oiftype != loopback oifname . ip daddr != @pod_addrs4 counter name "strict_out_drop" drop
//	chain inet confmesh in { type filter hook prerouting priority -300; policy accept; }
//	rule inet confmesh in ip saddr 10.98.0.0/16 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop
//	rule inet confmesh in ip daddr 10.98.0.0/16 iifname != "cm0" meta iiftype != loopback iifname != @pod_ifs counter name "strict_in_drop" drop
//	rule inet confmesh in iifname @pod_ifs iifname . ip saddr != @pod_addrs4 counter name "strict_spoof_drop" drop
//
// The out chain lets a packet to a cluster address leave only through the
// device, loopback or the veth of the pod that holds the address. The in
// chain drops cluster-sourced or cluster-destined packets arriving neither
// through the device nor loopback nor a pod veth (the underlay, in clear),
// and, on a pod veth, any source but that pod's address (for IPv6, link-local
// sources are let through for neighbour discovery). Pods enter and leave the
// sets element by element (SyncPods), in one transaction each.
//
// Every rule is a list of conditions in one model (rules.go) from which both
// Describe and the kernel expressions are rendered. Each rule carries every
// condition (no accept/return shortcuts), so rule order does not matter
// except for which counter counts a packet, and the in chain's rules are
// disjoint. Both chains have policy accept: the table only ever drops,
// everything else is left to the rest of the node's firewall.
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
//     and destination NAT (-100), after defragmentation (-400). Plaintext
//     cluster traffic arriving from the underlay, whatever source it claims,
//     and a pod's packet from an address that is not its own are dropped
//     before they create any state (or, for NodePort-style DNAT, before the
//     destination is rewritten: the out chain then checks the pod address).
//
// The device and the pod interfaces are matched by name (oifname/iifname),
// so the rules are in force before the interfaces exist: at boot everything
// remote is dropped until the tunnel is up, and a pod's veth that is not in
// the sets is treated as any other interface. With no pods (before join)
// everything in the cluster CIDRs is dropped unless it uses the device.
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
// rules, delete chains and sets that are not ours or have a stale shape,
// create the counters if absent, (re)create the sets with exactly the wanted
// pods and both base chains, and add the rules. Packets see the old rule set
// or the new one, never a gap; a failed batch is rolled back whole, leaving the old rules in force. An agent
// that restarts and re-installs the same rules never opens a window, and the
// table is not owned by the agent's netlink socket (no NFT_TABLE_F_OWNER), so
// it outlives the agent. Only Remove (`confmesh agent cleanup`) deletes it.
//
// # Counters
//
// Drops are counted in named counter objects (strict_out_drop,
// strict_in_drop, strict_spoof_drop) referenced from the rules, read back
// with GETOBJ (ReadDrops). Re-installing keeps their values, because re-adding an existing
// counter object is a no-op in the kernel; they reset only when the table is
// removed. ReadDrops returns packets.
//
// # Watching
//
// Verify compares the kernel with what Install(r) programs and says what
// differs (ErrTableMissing, ErrTableAltered); Watch delivers a signal after
// every committed nftables transaction in the namespace (netlink
// notifications). The agent combines the two with a periodic check and
// re-installs at once when something removed or changed the table.
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
