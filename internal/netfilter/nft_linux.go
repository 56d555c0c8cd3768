//go:build linux

package netfilter

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// installMu serialises Install calls within this process, so two goroutines
// cannot interleave the read of the current chains with the other's batch.
var installMu sync.Mutex

func tableOf(name string) *nftables.Table {
	if name == "" {
		name = DefaultTable
	}
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

// wantedChains returns the two base chains of table t.
func wantedChains(t *nftables.Table) (out, in *nftables.Chain) {
	accept := nftables.ChainPolicyAccept
	out = &nftables.Chain{
		Name:     ChainOut,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityRef(PriorityOut),
		Policy:   &accept,
	}
	in = &nftables.Chain{
		Name:     ChainIn,
		Table:    t,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(PriorityIn),
		Policy:   &accept,
	}
	return out, in
}

// sameBaseChain reports whether the kernel's chain got has the type, hook and
// priority of want, i.e. whether NEWCHAIN on it is an in-place update.
func sameBaseChain(got, want *nftables.Chain) bool {
	return got.Name == want.Name && got.Type == want.Type &&
		got.Hooknum != nil && *got.Hooknum == *want.Hooknum &&
		got.Priority != nil && *got.Priority == *want.Priority
}

// Install programs r into the current network namespace in one nftables
// transaction: create the table if absent (and wake it if dormant), flush
// all its rules, delete any chain that is not one of ours or has a stale
// type/hook/priority, (re)create the counters and both base chains, and add
// the drop rules. The kernel applies the batch atomically, so a packet sees
// either the old rule set or the new one, never an empty table; if any part
// fails the whole batch is rolled back and the old rules stay in force.
//
// The named counters are created only if absent: re-installing keeps their
// values (a counter object has no update operation in the kernel).
func Install(r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	installMu.Lock()
	defer installMu.Unlock()

	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netfilter: open nftables: %w", err)
	}
	t := tableOf(r.Table)
	out, in := wantedChains(t)

	// What the table holds now (nothing if it is absent), so stale chains can
	// be replaced inside the same transaction.
	var stale []*nftables.Chain
	if exists, err := tableExists(c, t.Name); err != nil {
		return fmt.Errorf("netfilter: install table inet %s: %w", t.Name, err)
	} else if exists {
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return fmt.Errorf("netfilter: install table inet %s: list chains: %w", t.Name, err)
		}
		for _, ch := range chains {
			if ch.Table == nil || ch.Table.Name != t.Name {
				continue
			}
			if sameBaseChain(ch, out) || sameBaseChain(ch, in) {
				continue
			}
			stale = append(stale, &nftables.Chain{Name: ch.Name, Table: t})
		}
	}

	c.AddTable(t)   // NLM_F_CREATE without EXCL: create, or update (flags 0 wakes a dormant table)
	c.FlushTable(t) // every rule of every chain in the table (also jumps into stale chains)
	for _, ch := range stale {
		c.DelChain(ch)
	}
	c.AddObj(&nftables.CounterObj{Table: t, Name: CounterOut})
	c.AddObj(&nftables.CounterObj{Table: t, Name: CounterIn})
	c.AddChain(out)
	c.AddChain(in)
	for _, ch := range []*nftables.Chain{out, in} {
		for _, s := range r.specs(ch.Name) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: s.exprs(r.Device)})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netfilter: install table inet %s (nothing changed): %w", t.Name, err)
	}
	return nil
}

// Remove deletes the table (used only by `confmesh agent cleanup`). A table
// that does not exist is not an error.
func Remove(table string) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netfilter: open nftables: %w", err)
	}
	t := tableOf(table)
	exists, err := tableExists(c, t.Name)
	if err != nil {
		return fmt.Errorf("netfilter: remove table inet %s: %w", t.Name, err)
	}
	if !exists {
		return nil
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netfilter: remove table inet %s: %w", t.Name, err)
	}
	return nil
}

// Installed reports whether the inet table exists in the current network
// namespace. It does not check the table's contents: Install is idempotent,
// so a caller that wants certainty re-installs.
func Installed(table string) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("netfilter: open nftables: %w", err)
	}
	name := tableOf(table).Name
	ok, err := tableExists(c, name)
	if err != nil {
		return false, fmt.Errorf("netfilter: look up table inet %s: %w", name, err)
	}
	return ok, nil
}

// Counters returns the packet counts of the named counters CounterOut and
// CounterIn (read with GETOBJ, one object each). They are kept across
// re-installs and reset only when the table is removed.
func Counters(table string) (out, in uint64, err error) {
	c, err := nftables.New()
	if err != nil {
		return 0, 0, fmt.Errorf("netfilter: open nftables: %w", err)
	}
	t := tableOf(table)
	read := func(name string) (uint64, error) {
		o, err := c.GetObject(&nftables.CounterObj{Table: t, Name: name})
		if err != nil {
			return 0, fmt.Errorf("netfilter: read counter %s in table inet %s: %w", name, t.Name, err)
		}
		co, ok := o.(*nftables.CounterObj)
		if !ok {
			return 0, fmt.Errorf("netfilter: read counter %s in table inet %s: got %T", name, t.Name, o)
		}
		return co.Packets, nil
	}
	if out, err = read(CounterOut); err != nil {
		return 0, 0, err
	}
	if in, err = read(CounterIn); err != nil {
		return 0, 0, err
	}
	return out, in, nil
}

func tableExists(c *nftables.Conn, name string) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// exprs compiles s to nftables expressions, in the order describe prints
// them:
//
//	meta nfproto ipv4|ipv6 (implicit in nft syntax)
//	ip|ip6 daddr|saddr <cluster>
//	oifname|iifname != <device>
//	meta oiftype|iiftype != loopback
//	ip|ip6 daddr|saddr != <local> (each local CIDR inside cluster)
//	counter name <CounterOut|CounterIn>
//	drop
func (s ruleSpec) exprs(device string) []expr.Any {
	v4 := s.cluster.Addr().Is4()
	proto, nameKey, typeKey := byte(unix.NFPROTO_IPV6), expr.MetaKeyIIFNAME, expr.MetaKeyIIFTYPE
	if v4 {
		proto = unix.NFPROTO_IPV4
	}
	if s.out() {
		nameKey, typeKey = expr.MetaKeyOIFNAME, expr.MetaKeyOIFTYPE
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	e = append(e, s.addrMatch(s.cluster, expr.CmpOpEq)...)
	e = append(e,
		&expr.Meta{Key: nameKey, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(device)},
		&expr.Meta{Key: typeKey, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_LOOPBACK)},
	)
	for _, l := range s.exempt {
		e = append(e, s.addrMatch(l, expr.CmpOpNeq)...)
	}
	return append(e,
		&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: s.counter()},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

// addrMatch loads the rule's address (daddr for out, saddr for in) and
// compares its first p.Bits() bits with p.
func (s ruleSpec) addrMatch(p netip.Prefix, cmp expr.CmpOp) []expr.Any {
	var off, n uint32 = 12, 4 // IPv4 saddr
	if !p.Addr().Is4() {
		off, n = 8, 16 // IPv6 saddr
	}
	if s.out() {
		off += n // daddr follows saddr in both headers
	}
	e := []expr.Any{&expr.Payload{
		OperationType: expr.PayloadLoad,
		DestRegister:  1,
		Base:          expr.PayloadBaseNetworkHeader,
		Offset:        off,
		Len:           n,
	}}
	if p.Bits() < p.Addr().BitLen() {
		e = append(e, &expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            n,
			Mask:           mask(p.Bits(), int(n)),
			Xor:            make([]byte, n),
		})
	}
	return append(e, &expr.Cmp{Op: cmp, Register: 1, Data: p.Addr().AsSlice()})
}

func mask(bits, n int) []byte {
	m := make([]byte, n)
	for i := range m {
		switch {
		case bits >= 8:
			m[i] = 0xff
			bits -= 8
		case bits > 0:
			m[i] = byte(0xff << (8 - bits))
			bits = 0
		}
	}
	return m
}

// ifname is name as the kernel's meta iifname/oifname loads it: IFNAMSIZ
// bytes, NUL padded.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}
