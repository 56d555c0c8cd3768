//go:build linux

package netfilter

import (
	"context"
	"fmt"
	"reflect"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Verify compares what the kernel holds in the current network namespace
// with what Install(r) programs: the table (not dormant), exactly the two
// base chains with their hooks, priorities and policies, exactly the
// compiled rules in order, the three counters, the three pod sets with
// exactly r's pods. It returns nil when they agree, an error wrapping
// ErrTableMissing when the table is gone, and otherwise an error wrapping
// ErrTableAltered that names the first difference found. It only reads.
func Verify(r Rules) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netfilter: open nftables: %w", err)
	}
	t := tableOf(r.Table)
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("netfilter: verify table inet %s: %w", t.Name, err)
	}
	var kt *nftables.Table
	for _, x := range tables {
		if x.Name == t.Name {
			kt = x
		}
	}
	if kt == nil {
		return fmt.Errorf("%w: table inet %s does not exist", ErrTableMissing, t.Name)
	}
	altered := func(format string, args ...any) error {
		return fmt.Errorf("%w: table inet %s: "+format, append([]any{ErrTableAltered, t.Name}, args...)...)
	}
	if kt.Flags&unix.NFT_TABLE_F_DORMANT != 0 {
		return altered("it is dormant (its chains see no packets)")
	}

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("netfilter: verify table inet %s: list chains: %w", t.Name, err)
	}
	out, in := wantedChains(t)
	got := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != t.Name {
			continue
		}
		if ch.Name != ChainOut && ch.Name != ChainIn {
			return altered("foreign chain %q", ch.Name)
		}
		got[ch.Name] = ch
	}
	for _, want := range []*nftables.Chain{out, in} {
		ch := got[want.Name]
		if ch == nil {
			return altered("chain %s is missing", want.Name)
		}
		if !sameBaseChain(ch, want) || ch.Policy == nil || *ch.Policy != *want.Policy {
			return altered("chain %s has another type, hook, priority or policy", want.Name)
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("netfilter: verify table inet %s: rules of %s: %w", t.Name, want.Name, err)
		}
		specs := r.specs(want.Name)
		if len(rules) != len(specs) {
			return altered("chain %s holds %d rules, want %d", want.Name, len(rules), len(specs))
		}
		for i, s := range specs {
			if !reflect.DeepEqual(normalize(rules[i].Exprs), s.exprs(nil)) {
				return altered("chain %s: rule %d differs from %q", want.Name, i, s.describe())
			}
		}
	}

	objs, err := c.GetObjects(t)
	if err != nil {
		return fmt.Errorf("netfilter: verify table inet %s: objects: %w", t.Name, err)
	}
	counters := map[string]bool{}
	for _, o := range objs {
		if co, ok := o.(*nftables.CounterObj); ok {
			counters[co.Name] = true
		}
	}
	for _, name := range []string{CounterOut, CounterIn, CounterSpoof} {
		if !counters[name] {
			return altered("counter %s is missing", name)
		}
	}

	have, err := c.GetSets(t)
	if err != nil {
		return fmt.Errorf("netfilter: verify table inet %s: sets: %w", t.Name, err)
	}
	byName := map[string]*nftables.Set{}
	for _, s := range have {
		byName[s.Name] = s
	}
	elems := r.elements()
	for _, w := range wantedSets(t) {
		s := byName[w.Name]
		if s == nil {
			return altered("set %s is missing", w.Name)
		}
		if !sameSet(s, w) {
			return altered("set %s has another type or flags", w.Name)
		}
		s.Table = t
		ks, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("netfilter: verify table inet %s: elements of %s: %w", t.Name, w.Name, err)
		}
		if a, b := keys(ks), keys(elems[w.Name]); !reflect.DeepEqual(a, b) {
			return altered("set %s holds %d elements, want %d (or other ones)", w.Name, len(a), len(b))
		}
	}
	return nil
}

// normalize makes expressions read back from the kernel comparable with
// compiled ones: a lookup comes back without the transaction set ID.
func normalize(es []expr.Any) []expr.Any {
	out := make([]expr.Any, len(es))
	for i, e := range es {
		if l, ok := e.(*expr.Lookup); ok {
			cp := *l
			cp.SetID = 0
			e = &cp
		}
		out[i] = e
	}
	return out
}

func keys(es []nftables.SetElement) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, string(e.Key))
	}
	sort.Strings(out)
	return out
}

// SyncPods brings the pod sets of the installed table to exactly r's pods
// in one transaction (elements added and deleted, nothing else touched):
// what the agent does when the CNI plugin adds or removes a pod. It fails,
// changing nothing, when the table or a set is missing (Install then).
func SyncPods(r Rules) error {
	c, unlock, err := openValidated(r)
	if err != nil {
		return err
	}
	defer unlock()
	t := tableOf(r.Table)
	want := r.elements()
	changed := false
	for _, w := range wantedSets(t) {
		s, err := c.GetSetByName(t, w.Name)
		if err != nil {
			return fmt.Errorf("netfilter: sync pods: set %s of table inet %s: %w", w.Name, t.Name, err)
		}
		s.Table = t
		have, err := c.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("netfilter: sync pods: elements of %s: %w", w.Name, err)
		}
		haveK := map[string]bool{}
		for _, e := range have {
			haveK[string(e.Key)] = true
		}
		wantK := map[string]bool{}
		var add, del []nftables.SetElement
		for _, e := range want[w.Name] {
			wantK[string(e.Key)] = true
			if !haveK[string(e.Key)] {
				add = append(add, e)
			}
		}
		for _, e := range have {
			if !wantK[string(e.Key)] {
				del = append(del, nftables.SetElement{Key: e.Key})
			}
		}
		if len(add) > 0 {
			if err := c.SetAddElements(s, add); err != nil {
				return fmt.Errorf("netfilter: sync pods: %w", err)
			}
		}
		if len(del) > 0 {
			// Added first, so that an element someone else removed
			// meanwhile does not fail the whole transaction.
			if err := c.SetAddElements(s, del); err != nil {
				return fmt.Errorf("netfilter: sync pods: %w", err)
			}
			if err := c.SetDeleteElements(s, del); err != nil {
				return fmt.Errorf("netfilter: sync pods: %w", err)
			}
		}
		changed = changed || len(add)+len(del) > 0
	}
	if !changed {
		return nil
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netfilter: sync pods of table inet %s (nothing changed): %w", t.Name, err)
	}
	return nil
}

// Watch reports changes to the nftables ruleset of the current network
// namespace: it sends on the returned channel (capacity 1, never blocking:
// a pending signal covers later changes) after every committed nftables
// transaction, by anyone, until ctx ends or the kernel's notifications
// fail (e.g. the socket's buffer overflowed); then the channel is closed
// and the caller should verify, and call Watch again. The netlink socket
// is opened in the calling thread's namespace.
func Watch(ctx context.Context) (<-chan struct{}, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("netfilter: open nftables: %w", err)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	events, err := c.AddGenerationalMonitor(mon)
	if err != nil {
		return nil, fmt.Errorf("netfilter: subscribe to nftables changes: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		defer mon.Close()
		for {
			select {
			case <-ctx.Done():
				go drain(events)
				return
			case ev, ok := <-events:
				if !ok {
					return
				}
				if ev.GeneratedBy != nil && ev.GeneratedBy.Error != nil {
					go drain(events)
					return
				}
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}

// drain empties a monitor channel until the monitor closes it, so its
// goroutine never blocks on a send nobody reads.
func drain(ch chan *nftables.MonitorEvents) {
	for range ch {
	}
}
