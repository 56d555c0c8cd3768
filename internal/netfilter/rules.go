package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
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
	// CounterIn counts packets ChainIn dropped because they came in clear
	// from outside the node (the underlay) with a cluster source or
	// destination.
	CounterIn = "strict_in_drop"
	// CounterSpoof counts packets ChainIn dropped because a pod sent them
	// from an address that is not its own.
	CounterSpoof = "strict_spoof_drop"

	// SetPodInterfaces holds the names of this node's pod interfaces (the
	// host ends of the veths the CNI plugin made): type ifname.
	SetPodInterfaces = "pod_ifs"
	// SetPodAddrs4 holds each IPv4 pod's interface and address: type
	// ifname . ipv4_addr.
	SetPodAddrs4 = "pod_addrs4"
	// SetPodAddrs6 is SetPodAddrs4 for IPv6: type ifname . ipv6_addr.
	SetPodAddrs6 = "pod_addrs6"

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

// Errors Verify wraps.
var (
	// ErrTableMissing means the strict-mode table does not exist.
	ErrTableMissing = errors.New("netfilter: strict-mode table missing")
	// ErrTableAltered means the table exists but differs from what Install
	// programs.
	ErrTableAltered = errors.New("netfilter: strict-mode table altered")
)

// ErrInvalidRules is wrapped by every error Validate returns.
var ErrInvalidRules = errors.New("netfilter: invalid strict-mode rules")

// Drops are the packet counts of the three drop counters.
type Drops struct {
	Out   uint64 // CounterOut
	In    uint64 // CounterIn
	Spoof uint64 // CounterSpoof
}

// Pod is one pod attachment on this node: the host-side interface the CNI
// plugin created for it and the address the agent assigned to it.
type Pod struct {
	Interface string
	Addr      netip.Addr
}

// Rules describes the strict-mode table of one node.
type Rules struct {
	// Table is the nftables table name (family inet); DefaultTable if empty.
	Table string
	// ClusterCIDRs are the cluster pod network(s), IPv4 and/or IPv6.
	ClusterCIDRs []netip.Prefix
	// LocalCIDRs are this node's own pod CIDRs: every Pods address must lie
	// in one. Empty before the node has joined.
	LocalCIDRs []netip.Prefix
	// Pods are this node's pod attachments: a packet with a cluster address
	// may enter or leave other than through Device only on a pod's own
	// interface, and only from (entering) or to (leaving) that pod's
	// address. Empty: everything in the cluster CIDRs must use Device.
	Pods []Pod
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
	owner := map[netip.Addr]string{}
	for i, p := range r.Pods {
		if err := p.validate(i, r); err != nil {
			return err
		}
		if o, dup := owner[p.Addr]; dup && o != p.Interface {
			return invalid("pod address %s is on two interfaces, %s and %s", p.Addr, o, p.Interface)
		}
		owner[p.Addr] = p.Interface
	}
	return nil
}

func (p Pod) validate(i int, r Rules) error {
	if err := validDevice(p.Interface); err != nil {
		return invalid("pod #%d: interface: %v", i, strings.TrimPrefix(err.Error(), ErrInvalidRules.Error()+": "))
	}
	if p.Interface == r.Device {
		return invalid("pod #%d: interface %s is the WireGuard device", i, p.Interface)
	}
	a := p.Addr
	switch {
	case !a.IsValid():
		return invalid("pod #%d (%s): no address", i, p.Interface)
	case a.Is4In6():
		return invalid("pod #%d (%s): address %s is IPv4-mapped IPv6; write it as IPv4", i, p.Interface, a)
	case a.Zone() != "":
		return invalid("pod #%d (%s): address %s has a zone", i, p.Interface, a)
	}
	for _, l := range r.LocalCIDRs {
		if l.Contains(a) {
			return nil
		}
	}
	return invalid("pod #%d (%s): address %s is not inside a local CIDR (%s)", i, p.Interface, a, joinPrefixes(r.LocalCIDRs, ", "))
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

// The rule model: every rule is a list of conditions and a counter, and
// both Describe (nft syntax) and the kernel expressions (nft_linux.go) are
// rendered from it, so the two cannot drift apart.

type condKind int

const (
	condAddr      condKind = iota // ip|ip6 saddr|daddr [!=] prefix
	condIfname                    // iifname|oifname [!=] "name"
	condNotLoop                   // meta iiftype|oiftype != loopback
	condIfSet                     // iifname|oifname [!=] @set
	condIfAddrSet                 // iifname|oifname . ip|ip6 saddr|daddr [!=] @set
)

// cond is one condition of a rule. out selects the output interface
// (oifname, oiftype) instead of the input one; dst selects the destination
// address instead of the source.
type cond struct {
	kind   condKind
	out    bool
	dst    bool
	neq    bool
	prefix netip.Prefix // condAddr
	name   string       // condIfname: the interface; condIfSet, condIfAddrSet: the set
}

// ruleSpec is one drop rule: a family, its conditions (all must hold) and
// the counter it feeds.
type ruleSpec struct {
	chain   string
	v4      bool
	conds   []cond
	counter string
}

func addrSet(v4 bool) string {
	if v4 {
		return SetPodAddrs4
	}
	return SetPodAddrs6
}

var ipv6LinkLocal = netip.MustParsePrefix("fe80::/10")

// specs returns the drop rules of one chain, in order.
//
// out, per cluster CIDR C: daddr in C, leaving neither through the device
// nor loopback nor the interface of the pod that holds daddr.
//
// in, per cluster CIDR C: saddr in C, and then daddr in C, arriving through
// neither the device nor loopback nor a pod interface (that is: from the
// underlay, in clear). Then, once per address family of the cluster CIDRs:
// arriving on a pod interface from an address that is not that pod's
// (IPv6 link-local sources aside: neighbour discovery needs them).
func (r Rules) specs(chain string) []ruleSpec {
	var out []ruleSpec
	notDevice := func(o bool) []cond {
		return []cond{{kind: condIfname, out: o, neq: true, name: r.Device}, {kind: condNotLoop, out: o}}
	}
	if chain == ChainOut {
		for _, c := range r.ClusterCIDRs {
			v4 := c.Addr().Is4()
			conds := append([]cond{{kind: condAddr, dst: true, prefix: c}}, notDevice(true)...)
			conds = append(conds, cond{kind: condIfAddrSet, out: true, dst: true, neq: true, name: addrSet(v4)})
			out = append(out, ruleSpec{chain: ChainOut, v4: v4, conds: conds, counter: CounterOut})
		}
		return out
	}
	fams := map[bool]bool{}
	for _, c := range r.ClusterCIDRs {
		v4 := c.Addr().Is4()
		fams[v4] = true
		for _, dst := range []bool{false, true} {
			conds := append([]cond{{kind: condAddr, dst: dst, prefix: c}}, notDevice(false)...)
			conds = append(conds, cond{kind: condIfSet, neq: true, name: SetPodInterfaces})
			out = append(out, ruleSpec{chain: ChainIn, v4: v4, conds: conds, counter: CounterIn})
		}
	}
	for _, v4 := range []bool{true, false} {
		if !fams[v4] {
			continue
		}
		conds := []cond{{kind: condIfSet, name: SetPodInterfaces}}
		if !v4 {
			conds = append(conds, cond{kind: condAddr, neq: true, prefix: ipv6LinkLocal})
		}
		conds = append(conds, cond{kind: condIfAddrSet, neq: true, name: addrSet(v4)})
		out = append(out, ruleSpec{chain: ChainIn, v4: v4, conds: conds, counter: CounterSpoof})
	}
	return out
}

// describe renders c in nft syntax.
func (c cond) describe(v4 bool) string {
	fam := "ip6"
	if v4 {
		fam = "ip"
	}
	addr, ifname, iftype := "saddr", "iifname", "iiftype"
	if c.dst {
		addr = "daddr"
	}
	if c.out {
		ifname, iftype = "oifname", "oiftype"
	}
	op := " "
	if c.neq {
		op = " != "
	}
	switch c.kind {
	case condAddr:
		return fam + " " + addr + op + c.prefix.String()
	case condIfname:
		return fmt.Sprintf("%s%s%q", ifname, op, c.name)
	case condNotLoop:
		return "meta " + iftype + " != loopback"
	case condIfSet:
		return ifname + op + "@" + c.name
	case condIfAddrSet:
		return ifname + " . " + fam + " " + addr + op + "@" + c.name
	}
	return fmt.Sprintf("<condition kind %d>", c.kind)
}

// describe renders s in nft syntax (the rule's nfproto match is implicit
// in its ip/ip6 expressions).
func (s ruleSpec) describe() string {
	parts := make([]string, 0, len(s.conds)+2)
	for _, c := range s.conds {
		parts = append(parts, c.describe(s.v4))
	}
	parts = append(parts, fmt.Sprintf("counter name %q", s.counter), "drop")
	return strings.Join(parts, " ")
}

// podElements returns the elements of the three pod sets, sorted.
func (r Rules) podElements() (ifs []string, addrs4, addrs6 []Pod) {
	seen := map[string]bool{}
	for _, p := range r.Pods {
		if !seen[p.Interface] {
			seen[p.Interface] = true
			ifs = append(ifs, p.Interface)
		}
		if p.Addr.Is4() {
			addrs4 = append(addrs4, p)
		} else {
			addrs6 = append(addrs6, p)
		}
	}
	sort.Strings(ifs)
	for _, ps := range [][]Pod{addrs4, addrs6} {
		sort.Slice(ps, func(i, j int) bool {
			if ps[i].Interface != ps[j].Interface {
				return ps[i].Interface < ps[j].Interface
			}
			return ps[i].Addr.Less(ps[j].Addr)
		})
	}
	return ifs, addrs4, addrs6
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
		"counter " + t + " " + CounterSpoof,
		"set " + t + " " + SetPodInterfaces + " { type ifname; }",
		"set " + t + " " + SetPodAddrs4 + " { type ifname . ipv4_addr; }",
		"set " + t + " " + SetPodAddrs6 + " { type ifname . ipv6_addr; }",
	}
	ifs, a4, a6 := r.podElements()
	if len(ifs) > 0 {
		q := make([]string, len(ifs))
		for i, n := range ifs {
			q[i] = fmt.Sprintf("%q", n)
		}
		lines = append(lines, "element "+t+" "+SetPodInterfaces+" { "+strings.Join(q, ", ")+" }")
	}
	for _, set := range []struct {
		name string
		pods []Pod
	}{{SetPodAddrs4, a4}, {SetPodAddrs6, a6}} {
		if len(set.pods) == 0 {
			continue
		}
		q := make([]string, len(set.pods))
		for i, p := range set.pods {
			q[i] = fmt.Sprintf("%q . %s", p.Interface, p.Addr)
		}
		lines = append(lines, "element "+t+" "+set.name+" { "+strings.Join(q, ", ")+" }")
	}
	lines = append(lines, fmt.Sprintf("chain %s %s { type filter hook postrouting priority %d; policy accept; }", t, ChainOut, PriorityOut))
	for _, s := range r.specs(ChainOut) {
		lines = append(lines, fmt.Sprintf("rule %s %s %s", t, ChainOut, s.describe()))
	}
	lines = append(lines, fmt.Sprintf("chain %s %s { type filter hook prerouting priority %d; policy accept; }", t, ChainIn, PriorityIn))
	for _, s := range r.specs(ChainIn) {
		lines = append(lines, fmt.Sprintf("rule %s %s %s", t, ChainIn, s.describe()))
	}
	return lines
}
