// Package throughput measures what confmesh's tunnel costs: TCP throughput,
// CPU per byte and request/response latency between two pods on two
// attested nodes (the userspace datapath, strict mode on), side by side in
// one run with the same traffic over the bare underlay (plaintext) and over
// stock wireguard-go (the upstream daemon of the module version confmesh
// pins, configured with wgctrl, no confmesh). Every load is bounded in time,
// and the variants are interleaved round by round with the order rotated,
// so background load on the machine hits them alike. Everything runs in
// network namespaces the run creates and removes (netlab); see
// docs/benchmarks.md.
package throughput
