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

// wantedSets returns the three pod sets of table t.
func wantedSets(t *nftables.Table) []*nftables.Set {
	return []*nftables.Set{
		// Native byte order, as nft(8) itself marks an ifname set: without
		// the mark nft prints the names back to front (NUL padding first,
		// so as ""), and a saved ruleset does not load.
		{Table: t, Name: SetPodInterfaces, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian},
		{Table: t, Name: SetPodAddrs4, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr), Concatenation: true},
		{Table: t, Name: SetPodAddrs6, KeyType: nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIP6Addr), Concatenation: true},
	}
}

// sameSet reports whether the kernel's set got has the shape of want.
func sameSet(got, want *nftables.Set) bool {
	return got.Name == want.Name && got.KeyType.Name == want.KeyType.Name && got.KeyType.Bytes == want.KeyType.Bytes &&
		got.Concatenation == want.Concatenation && !got.IsMap && !got.Interval && !got.HasTimeout && !got.Constant && !got.Anonymous
}

// elements returns the set elements of r's pods, per set name.
func (r Rules) elements() map[string][]nftables.SetElement {
	ifs, a4, a6 := r.podElements()
	out := map[string][]nftables.SetElement{}
	for _, n := range ifs {
		out[SetPodInterfaces] = append(out[SetPodInterfaces], nftables.SetElement{Key: ifname(n)})
	}
	for _, p := range a4 {
		out[SetPodAddrs4] = append(out[SetPodAddrs4], nftables.SetElement{Key: podKey(p)})
	}
	for _, p := range a6 {
		out[SetPodAddrs6] = append(out[SetPodAddrs6], nftables.SetElement{Key: podKey(p)})
	}
	return out
}

// podKey is the ifname . address key of p: the interface name padded to
// IFNAMSIZ, then the address (each field a multiple of 4 bytes).
func podKey(p Pod) []byte {
	return append(ifname(p.Interface), p.Addr.AsSlice()...)
}

// openValidated validates r, takes installMu (every writer of the table
// holds it) and opens an nftables connection; unlock releases installMu.
func openValidated(r Rules) (c *nftables.Conn, unlock func(), err error) {
	if err := r.Validate(); err != nil {
		return nil, nil, err
	}
	installMu.Lock()
	c, err = nftables.New()
	if err != nil {
		installMu.Unlock()
		return nil, nil, fmt.Errorf("netfilter: open nftables: %w", err)
	}
	return c, installMu.Unlock, nil
}

// Install programs r into the current network namespace in one nftables
// transaction: create the table if absent (and wake it if dormant), flush
// all its rules, delete any chain or set that is not one of ours or has a
// stale shape, (re)create the counters, the pod sets (with exactly r's
// pods) and both base chains, and add the drop rules. The kernel applies
// the batch atomically, so a packet sees either the old rule set or the
// new one, never an empty table; if any part fails the whole batch is
// rolled back and the old rules stay in force.
//
// The named counters are created only if absent: re-installing keeps their
// values (a counter object has no update operation in the kernel).
func Install(r Rules) error {
	c, unlock, err := openValidated(r)
	if err != nil {
		return err
	}
	defer unlock()
	t := tableOf(r.Table)
	out, in := wantedChains(t)
	sets := wantedSets(t)

	// What the table holds now (nothing if it is absent), so stale chains
	// and sets can be replaced inside the same transaction.
	var staleChains []*nftables.Chain
	var staleSets []*nftables.Set
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
			staleChains = append(staleChains, &nftables.Chain{Name: ch.Name, Table: t})
		}
		have, err := c.GetSets(t)
		if err != nil {
			return fmt.Errorf("netfilter: install table inet %s: list sets: %w", t.Name, err)
		}
	next:
		for _, s := range have {
			for _, w := range sets {
				if sameSet(s, w) {
					continue next
				}
			}
			staleSets = append(staleSets, &nftables.Set{Name: s.Name, Table: t})
		}
	}

	c.AddTable(t)   // NLM_F_CREATE without EXCL: create, or update (flags 0 wakes a dormant table)
	c.FlushTable(t) // every rule of every chain in the table (also jumps into stale chains)
	for _, ch := range staleChains {
		c.DelChain(ch)
	}
	for _, s := range staleSets {
		c.DelSet(s)
	}
	for _, name := range []string{CounterOut, CounterIn, CounterSpoof} {
		c.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	elems := r.elements()
	ids := map[string]uint32{}
	for _, s := range sets {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("netfilter: install table inet %s: set %s: %w", t.Name, s.Name, err)
		}
		ids[s.Name] = s.ID
		c.FlushSet(s)
		if e := elems[s.Name]; len(e) > 0 {
			if err := c.SetAddElements(s, e); err != nil {
				return fmt.Errorf("netfilter: install table inet %s: elements of %s: %w", t.Name, s.Name, err)
			}
		}
	}
	c.AddChain(out)
	c.AddChain(in)
	for _, ch := range []*nftables.Chain{out, in} {
		for _, s := range r.specs(ch.Name) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: s.exprs(ids)})
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
	d, err := ReadDrops(table)
	return d.Out, d.In, err
}

// ReadDrops returns the packet counts of the three drop counters.
func ReadDrops(table string) (Drops, error) {
	c, err := nftables.New()
	if err != nil {
		return Drops{}, fmt.Errorf("netfilter: open nftables: %w", err)
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
	var d Drops
	for _, x := range []struct {
		name string
		v    *uint64
	}{{CounterOut, &d.Out}, {CounterIn, &d.In}, {CounterSpoof, &d.Spoof}} {
		if *x.v, err = read(x.name); err != nil {
			return Drops{}, err
		}
	}
	return d, nil
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
// them, after an explicit meta nfproto match (implicit in nft syntax).
// setIDs gives the transaction IDs of sets created in the same batch (nil:
// none, as when comparing with what the kernel reports).
func (s ruleSpec) exprs(setIDs map[string]uint32) []expr.Any {
	proto := byte(unix.NFPROTO_IPV6)
	if s.v4 {
		proto = unix.NFPROTO_IPV4
	}
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
	for _, c := range s.conds {
		e = append(e, c.exprs(s.v4, setIDs)...)
	}
	return append(e,
		&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: s.counter},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}

func cmpOp(neq bool) expr.CmpOp {
	if neq {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// exprs compiles one condition. Everything is evaluated in register 1
// except the address of an ifname . address lookup, which goes to
// register 2 (NFT_REG_2: the 32-bit registers right after the 16 bytes of
// the interface name, as nft lays out a concatenation).
func (c cond) exprs(v4 bool, setIDs map[string]uint32) []expr.Any {
	nameKey, typeKey := expr.MetaKeyIIFNAME, expr.MetaKeyIIFTYPE
	if c.out {
		nameKey, typeKey = expr.MetaKeyOIFNAME, expr.MetaKeyOIFTYPE
	}
	switch c.kind {
	case condAddr:
		return addrMatch(c.prefix, c.dst, c.neq)
	case condIfname:
		return []expr.Any{
			&expr.Meta{Key: nameKey, Register: 1},
			&expr.Cmp{Op: cmpOp(c.neq), Register: 1, Data: ifname(c.name)},
		}
	case condNotLoop:
		return []expr.Any{
			&expr.Meta{Key: typeKey, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint16(unix.ARPHRD_LOOPBACK)},
		}
	case condIfSet:
		return []expr.Any{
			&expr.Meta{Key: nameKey, Register: 1},
			&expr.Lookup{SourceRegister: 1, SetName: c.name, SetID: setIDs[c.name], Invert: c.neq},
		}
	case condIfAddrSet:
		return []expr.Any{
			&expr.Meta{Key: nameKey, Register: 1},
			addrLoad(v4, c.dst, 2),
			&expr.Lookup{SourceRegister: 1, SetName: c.name, SetID: setIDs[c.name], Invert: c.neq},
		}
	}
	panic(fmt.Sprintf("netfilter: condition kind %d has no compiler", c.kind))
}

// addrLoad loads the source (or destination) address into reg.
func addrLoad(v4, dst bool, reg uint32) *expr.Payload {
	var off, n uint32 = 12, 4 // IPv4 saddr
	if !v4 {
		off, n = 8, 16 // IPv6 saddr
	}
	if dst {
		off += n // daddr follows saddr in both headers
	}
	return &expr.Payload{
		OperationType: expr.PayloadLoad,
		DestRegister:  reg,
		Base:          expr.PayloadBaseNetworkHeader,
		Offset:        off,
		Len:           n,
	}
}

// addrMatch loads the source (or destination) address and compares its
// first p.Bits() bits with p.
func addrMatch(p netip.Prefix, dst, neq bool) []expr.Any {
	load := addrLoad(p.Addr().Is4(), dst, 1)
	e := []expr.Any{load}
	if p.Bits() < p.Addr().BitLen() {
		e = append(e, &expr.Bitwise{
			SourceRegister: 1,
			DestRegister:   1,
			Len:            load.Len,
			Mask:           mask(p.Bits(), int(load.Len)),
			Xor:            make([]byte, load.Len),
		})
	}
	return append(e, &expr.Cmp{Op: cmpOp(neq), Register: 1, Data: p.Addr().AsSlice()})
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
