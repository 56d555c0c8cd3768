package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Names and numbers Install programs. They are part of the package's contract:
// metrics, `confmesh status` and the tests read the counters by these names.
const (
	// DefaultTable is the table name used when Rules.Table is empty.
	DefaultTable = "confmesh"

	// ChainOut is the postrouting base chain that stops plaintext leaving the node.
	ChainOut = "out"
	// ChainIn is the prerouting base chain that stops remote-pod traffic arriving
	// outside the tunnel.
	ChainIn = "in"

	// CounterOut counts packets dropped by ChainOut.
	CounterOut = "strict_out_drop"
	// CounterIn counts packets dropped by ChainIn.
	CounterIn = "strict_in_drop"

	// PriorityOut is ChainOut's priority on the postrouting hook: srcnat+100.
	// It runs after every standard postrouting priority that may still touch
	// a packet (mangle -150, filter 0, security 50, srcnat 100), so no chain
	// with a standard priority, in any table, can rewrite a packet after we
	// have checked it. It runs before the conntrack helpers (300) and
	// conntrack confirmation (last), so a dropped flow never gets a confirmed
	// conntrack entry.
	PriorityOut = 200
	// PriorityIn is ChainIn's priority on the prerouting hook: raw (-300).
	// It runs after defragmentation (-400) and before conntrack (-200),
	// destination NAT (-100) and routing, so a spoofed or plaintext packet is
	// dropped before it creates conntrack state or is rewritten.
	PriorityIn = -300
)

// maxTableName is NFT_NAME_MAXLEN (256) less the terminating NUL.
const maxTableName = 255

// maxDeviceName is IFNAMSIZ (16) less the terminating NUL.
const maxDeviceName = 15

// ErrInvalidRules is wrapped by every error Validate returns.
var ErrInvalidRules = errors.New("netfilter: invalid strict-mode rules")

// Rules describes the strict-mode table of one node.
type Rules struct {
	// Table is the nftables table name (family inet); DefaultTable if empty.
	Table string
	// ClusterCIDRs are the cluster pod network(s), IPv4 and/or IPv6.
	ClusterCIDRs []netip.Prefix
	// LocalCIDRs are this node's own pod CIDRs. Traffic to and from them
	// (local pods on veths) is exempt. Empty before the node has joined: then
	// everything in the cluster CIDRs must go through Device.
	LocalCIDRs []netip.Prefix
	// Device is the WireGuard device name (e.g. cm0): the only interface
	// through which remote-pod traffic may leave or arrive. It is matched by
	// name, so the rules hold (and drop) before the device exists.
	Device string
}

func (r Rules) table() string {
	if r.Table == "" {
		return DefaultTable
	}
	return r.Table
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidRules}, args...)...)
}

// Validate reports the first problem with r, naming it. Every error wraps
// ErrInvalidRules.
func (r Rules) Validate() error {
	if t := r.Table; t != "" {
		if len(t) > maxTableName {
			return invalid("table name is %d bytes long, the limit is %d", len(t), maxTableName)
		}
		if strings.IndexByte(t, 0) >= 0 {
			return invalid("table name %q contains a NUL byte", t)
		}
	}
	if err := validDevice(r.Device); err != nil {
		return err
	}
	if len(r.ClusterCIDRs) == 0 {
		return invalid("no cluster CIDR: strict mode needs the cluster pod network it protects")
	}
	for i, p := range r.ClusterCIDRs {
		if err := validPrefix("cluster", i, p); err != nil {
			return err
		}
		if p.Bits() == 0 {
			return invalid("cluster CIDR %s covers the whole address family; it would also drop the tunnel's own underlay traffic", p)
		}
	}
	for i, p := range r.LocalCIDRs {
		if err := validPrefix("local", i, p); err != nil {
			return err
		}
		if !insideAny(p, r.ClusterCIDRs) {
			return invalid("local CIDR %s is not inside any cluster CIDR (%s)", p, joinPrefixes(r.ClusterCIDRs, ", "))
		}
	}
	return nil
}

func validDevice(name string) error {
	switch {
	case name == "":
		return invalid("empty device name: strict mode needs the WireGuard device (e.g. cm0)")
	case len(name) > maxDeviceName:
		return invalid("device name %q is %d bytes long, the kernel's limit is %d", name, len(name), maxDeviceName)
	case name == "." || name == "..":
		return invalid("device name %q is not a valid interface name", name)
	case strings.ContainsAny(name, "/:\x00") || strings.ContainsFunc(name, isSpace):
		return invalid("device name %q contains a character interface names cannot have ('/', ':', NUL or white space)", name)
	}
	return nil
}

func isSpace(r rune) bool {
	switch r {
	case ' ', '\t', '\n', '\v', '\f', '\r':
		return true
	}
	return false
}

func validPrefix(kind string, i int, p netip.Prefix) error {
	if !p.IsValid() {
		return invalid("%s CIDR #%d is not a valid prefix (zero value or bad length)", kind, i)
	}
	if p.Addr().Is4In6() {
		return invalid("%s CIDR %s is an IPv4-mapped IPv6 prefix; it never matches IPv4 packets, write it as IPv4", kind, p)
	}
	if m := p.Masked(); m != p {
		return invalid("%s CIDR %s has host bits set; did you mean %s?", kind, p, m)
	}
	return nil
}

// inside reports whether inner lies entirely within outer.
func inside(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() &&
		outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

func insideAny(p netip.Prefix, outers []netip.Prefix) bool {
	for _, o := range outers {
		if inside(p, o) {
			return true
		}
	}
	return false
}

func joinPrefixes(ps []netip.Prefix, sep string) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, sep)
}

// ruleSpec is one drop rule: the single model behind both Describe and the
// kernel expressions, so the two cannot drift apart.
type ruleSpec struct {
	chain   string         // ChainOut or ChainIn
	cluster netip.Prefix   // match: address in cluster
	exempt  []netip.Prefix // and address in none of these (local CIDRs inside cluster)
}

func (s ruleSpec) out() bool { return s.chain == ChainOut }

func (s ruleSpec) counter() string {
	if s.out() {
		return CounterOut
	}
	return CounterIn
}

// specs returns the drop rules of one chain: one rule per cluster CIDR, in
// the order given, each excluding the local CIDRs that lie inside it.
func (r Rules) specs(chain string) []ruleSpec {
	var out []ruleSpec
	for _, c := range r.ClusterCIDRs {
		s := ruleSpec{chain: chain, cluster: c}
		for _, l := range r.LocalCIDRs {
			if inside(l, c) {
				s.exempt = append(s.exempt, l)
			}
		}
		out = append(out, s)
	}
	return out
}

// describe renders s in nft syntax.
func (s ruleSpec) describe(device string) string {
	fam, addr, ifname, iftype := "ip", "saddr", "iifname", "iiftype"
	if !s.cluster.Addr().Is4() {
		fam = "ip6"
	}
	if s.out() {
		addr, ifname, iftype = "daddr", "oifname", "oiftype"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s %s != %q meta %s != loopback", fam, addr, s.cluster, ifname, device, iftype)
	for _, l := range s.exempt {
		fmt.Fprintf(&b, " %s %s != %s", fam, addr, l)
	}
	fmt.Fprintf(&b, " counter name %q drop", s.counter())
	return b.String()
}

// Describe returns, one per line, what Install programs, in nft syntax
// (each line is a valid `nft add ...` command once prefixed with "add ").
// It is pure: it neither validates r nor touches the kernel.
func Describe(r Rules) []string {
	t := "inet " + r.table()
	lines := []string{
		"table " + t,
		"counter " + t + " " + CounterOut,
		"counter " + t + " " + CounterIn,
		fmt.Sprintf("chain %s %s { type filter hook postrouting priority %d; policy accept; }", t, ChainOut, PriorityOut),
	}
	for _, s := range r.specs(ChainOut) {
		lines = append(lines, fmt.Sprintf("rule %s %s %s", t, ChainOut, s.describe(r.Device)))
	}
	lines = append(lines, fmt.Sprintf("chain %s %s { type filter hook prerouting priority %d; policy accept; }", t, ChainIn, PriorityIn))
	for _, s := range r.specs(ChainIn) {
		lines = append(lines, fmt.Sprintf("rule %s %s %s", t, ChainIn, s.describe(r.Device)))
	}
	return lines
}
