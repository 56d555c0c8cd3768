package controlplane

import (
	"bytes"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane/store"
	"google.golang.org/protobuf/proto"
)

// TestSnapshotFromEncodedPeers: a snapshot assembled from the cache's
// encoded peers decodes to the same message as one built and marshalled
// the ordinary way, leaves out the watcher itself and rejected nodes, and
// the agent service's codec sends it (and only it) as the bytes it holds.
func TestSnapshotFromEncodedPeers(t *testing.T) {
	now := time.Unix(1700000000, 0)
	var recs []*store.NodeRecord
	for i, name := range []string{"c", "a", "me", "b", "gone"} {
		state := store.StateActive
		if name == "gone" {
			state = store.StateRejected
		}
		recs = append(recs, &store.NodeRecord{Name: name, Endpoint: "198.18.0.1:51820", WireGuardKey: bytes.Repeat([]byte{byte(i + 1)}, 32),
			PodCIDR: "10.0.0.0/28", SVID: [][]byte{{byte(i)}}, AttestedAt: now, ExpiresAt: now.Add(time.Hour), State: state})
	}
	c, err := newNodeCache(recs)
	if err != nil {
		t.Fatal(err)
	}
	for _, rev := range []uint64{0, 1, 300} {
		ev := newSnapshotEvent(rev, c.activePeerWire("me"))
		got := &cpv1.WatchEvent{}
		if err := proto.Unmarshal(bytes.Join(ev.wire.parts, nil), got); err != nil {
			t.Fatalf("rev %d: %v", rev, err)
		}
		want := &cpv1.WatchEvent{Revision: rev, Event: &cpv1.WatchEvent_Snapshot{Snapshot: &cpv1.Snapshot{
			Peers: []*cpv1.Peer{c.peers["a"], c.peers["b"], c.peers["c"]}}}}
		if !proto.Equal(got, want) {
			t.Fatalf("rev %d: snapshot decodes to\n%v\nwant\n%v", rev, got, want)
		}
		enc, err := ev.encoded()
		if err != nil || enc != ev.wire {
			t.Fatalf("encoded() = %p, %v; want the snapshot's own bytes", enc, err)
		}
	}

	codec := newWireCodec()
	out, err := codec.Marshal(&encodedMsg{parts: [][]byte{{1}, {2, 3}}})
	if err != nil || !bytes.Equal(out.Materialize(), []byte{1, 2, 3}) {
		t.Fatalf("codec sends %v, %v; want the bytes as they are", out.Materialize(), err)
	}
	delta := &cpv1.WatchEvent{Revision: 9, Event: &cpv1.WatchEvent_Delete{Delete: "a"}}
	out, err = codec.Marshal(delta)
	plain, _ := proto.Marshal(delta)
	if err != nil || !bytes.Equal(out.Materialize(), plain) {
		t.Fatalf("codec encodes a message as %x, %v; want %x", out.Materialize(), err, plain)
	}
	he := newHubEvent(delta)
	if enc, err := he.encoded(); err != nil || !bytes.Equal(bytes.Join(enc.parts, nil), plain) {
		t.Fatalf("hub event encodes as %x, %v; want %x", enc.parts, err, plain)
	}
}
