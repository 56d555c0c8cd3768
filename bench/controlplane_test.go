package bench

import (
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"google.golang.org/protobuf/proto"
)

// TestParseStatCPU: utime + stime are fields 14 and 15, counted after the
// command name, which may itself hold spaces and parentheses.
func TestParseStatCPU(t *testing.T) {
	stat := "4242 (conf (mesh) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 0 0\n"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3250*time.Millisecond {
		t.Fatalf("parseStatCPU = %s, %v; want 3.25s", got, err)
	}
	for _, bad := range []string{"4242 no-paren S 1", "4242 (x) S 1 2", "4242 (x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 ab 75 0"} {
		if _, err := parseStatCPU([]byte(bad)); err == nil {
			t.Errorf("parseStatCPU(%q) succeeded", bad)
		}
	}
}

// TestWatchEventRevision reads the revision of every kind of event without
// decoding the rest.
func TestWatchEventRevision(t *testing.T) {
	for _, ev := range []*cpv1.WatchEvent{
		{Revision: 7, Event: &cpv1.WatchEvent_Upsert{Upsert: &cpv1.Peer{Name: "a", PodCidrs: []string{"10.0.0.0/28"}}}},
		{Revision: 300, Event: &cpv1.WatchEvent_Snapshot{Snapshot: &cpv1.Snapshot{Peers: []*cpv1.Peer{{Name: "b"}}}}},
		{Revision: 1 << 40, Event: &cpv1.WatchEvent_Delete{Delete: "c"}},
		{Revision: 0},
	} {
		b, err := proto.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := watchEventRevision(b); err != nil || got != ev.GetRevision() {
			t.Errorf("revision of %v = %d, %v", ev, got, err)
		}
	}
	if _, err := watchEventRevision([]byte{0x0a, 0x05, 0x01}); err == nil {
		t.Error("truncated event accepted")
	}
}
