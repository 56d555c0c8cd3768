package controlplane

import (
	"sort"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
)

// nodeCache mirrors the store's node records in memory, with the peer
// message of every active node built once, so a join or a watch snapshot
// costs no decoding of every record. The store stays the source of truth:
// the cache is loaded from it at start and changed only right after a
// successful store write. Guarded by Server.mu.
type nodeCache struct {
	recs  map[string]*store.NodeRecord
	peers map[string]*cpv1.Peer // active nodes only
	wire  map[string][]byte     // peers[name] as a Snapshot.peers field (peerField)
}

func newNodeCache(recs []*store.NodeRecord) (*nodeCache, error) {
	c := &nodeCache{recs: map[string]*store.NodeRecord{}, peers: map[string]*cpv1.Peer{}, wire: map[string][]byte{}}
	for _, r := range recs {
		if err := c.put(r); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// put records rec (which the caller no longer mutates) and returns nil, or
// the error of building its peer message.
func (c *nodeCache) put(rec *store.NodeRecord) error {
	c.recs[rec.Name] = rec
	delete(c.peers, rec.Name)
	delete(c.wire, rec.Name)
	if rec.State != store.StateActive {
		return nil
	}
	p, err := peerFromRecord(rec)
	if err != nil {
		return err
	}
	b, err := peerField(p)
	if err != nil {
		return err
	}
	c.peers[rec.Name], c.wire[rec.Name] = p, b
	return nil
}

func (c *nodeCache) remove(name string) {
	delete(c.recs, name)
	delete(c.peers, name)
	delete(c.wire, name)
}

// list returns copies of the records, sorted by name.
func (c *nodeCache) list() []*store.NodeRecord {
	out := make([]*store.NodeRecord, 0, len(c.recs))
	for _, r := range c.recs {
		cp := *r
		out = append(out, &cp)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// activePeerWire returns the encoded peer fields of active nodes other
// than me, sorted by name. The slices are shared and must not be modified.
func (c *nodeCache) activePeerWire(me string) [][]byte {
	names := make([]string, 0, len(c.wire))
	for name := range c.wire {
		if name != me {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	out := make([][]byte, len(names))
	for i, name := range names {
		out[i] = c.wire[name]
	}
	return out
}

func (c *nodeCache) counts() map[string]int {
	counts := map[string]int{store.StateActive: 0, store.StateRejected: 0}
	for _, r := range c.recs {
		counts[r.State]++
	}
	return counts
}
