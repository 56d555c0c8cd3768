// Package ipam hands out per-node pod CIDRs from the cluster CIDR. It is
// pure: the caller passes the prefixes already in use (from the store), so
// allocation is stable across restarts and released by deleting the node.
package ipam

import (
	"errors"
	"fmt"
	"math/big"
	"net/netip"
)

// ErrExhausted means every node prefix of the cluster CIDR is in use.
var ErrExhausted = errors.New("cluster CIDR exhausted")

// Allocator carves node prefixes of one length out of a cluster CIDR.
type Allocator struct {
	cluster netip.Prefix
	nodeLen int
}

// New validates the cluster CIDR and the node prefix length.
func New(clusterCIDR string, nodePrefixLen int) (*Allocator, error) {
	p, err := netip.ParsePrefix(clusterCIDR)
	if err != nil {
		return nil, fmt.Errorf("cluster CIDR %q: %w", clusterCIDR, err)
	}
	if p != p.Masked() {
		return nil, fmt.Errorf("cluster CIDR %q has host bits set (did you mean %s?)", clusterCIDR, p.Masked())
	}
	if nodePrefixLen <= p.Bits() || nodePrefixLen > p.Addr().BitLen() {
		return nil, fmt.Errorf("node prefix length /%d must be longer than the cluster CIDR's /%d and at most /%d", nodePrefixLen, p.Bits(), p.Addr().BitLen())
	}
	if p.Addr().BitLen()-nodePrefixLen < 2 {
		return nil, fmt.Errorf("node prefix /%d leaves no room for pods", nodePrefixLen)
	}
	return &Allocator{cluster: p, nodeLen: nodePrefixLen}, nil
}

// Cluster returns the cluster CIDR.
func (a *Allocator) Cluster() netip.Prefix { return a.cluster }

// Size is how many node prefixes the cluster CIDR holds (capped at 1<<20).
func (a *Allocator) Size() int {
	n := a.nodeLen - a.cluster.Bits()
	if n > 20 {
		n = 20
	}
	return 1 << n
}

// Contains reports whether p is a node prefix of this allocator.
func (a *Allocator) Contains(p netip.Prefix) bool {
	return p.Bits() == a.nodeLen && a.cluster.Contains(p.Addr()) && p == p.Masked()
}

// Allocate returns the lowest node prefix not in used. Entries of used that
// are not node prefixes of this cluster are ignored.
func (a *Allocator) Allocate(used []netip.Prefix) (netip.Prefix, error) {
	taken := make(map[netip.Prefix]bool, len(used))
	for _, u := range used {
		taken[u] = true
	}
	for i := 0; i < a.Size(); i++ {
		p := a.nth(i)
		if !taken[p] {
			return p, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%w: all %d /%d prefixes of %s are allocated", ErrExhausted, a.Size(), a.nodeLen, a.cluster)
}

func (a *Allocator) nth(i int) netip.Prefix {
	base := new(big.Int).SetBytes(a.cluster.Addr().AsSlice())
	step := new(big.Int).Lsh(big.NewInt(int64(i)), uint(a.cluster.Addr().BitLen()-a.nodeLen))
	b := base.Add(base, step).Bytes()
	buf := make([]byte, a.cluster.Addr().BitLen()/8)
	copy(buf[len(buf)-len(b):], b)
	addr, _ := netip.AddrFromSlice(buf)
	return netip.PrefixFrom(addr, a.nodeLen)
}
