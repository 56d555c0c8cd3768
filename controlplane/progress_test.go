package controlplane_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cpv1 "github.com/confmesh/confmesh/api/controlplane/v1"
	"github.com/confmesh/confmesh/controlplane"
	"github.com/confmesh/confmesh/controlplane/cptest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSilentStoreWatchIsBroken: replica A's store watch goes silent (no
// error; nothing, not even progress, arrives). Within the progress
// deadline A counts its store lost since the watch's last progress:
// /readyz fails and joins are refused at once, and its open watches end
// StaleWatchLimit after that last progress, so a revocation made on B
// meanwhile leaves every peer set A serves. When the store answers again
// A lists it and serves without the revoked node.
func TestSilentStoreWatchIsBroken(t *testing.T) {
	const deadline, limit = 4 * time.Second, 6 * time.Second
	rs := startReplicas(t, 2, func(_ int, cfg *controlplane.Config) {
		cfg.StoreProgressDeadline, cfg.StaleWatchLimit = deadline, limit
	})
	a, b, stA := rs.cps[0], rs.cps[1], rs.stores[0]
	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, b)
	y.Join(t, a)
	wy := watch(t, y.MTLS(t, a), 0)
	wy.waitFor(t, "node-x on A", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-x"] != nil })

	stA.HoldWatch()
	silent := time.Now()
	if _, err := b.AdminClient(t).RevokeNode(ctxT(t), &cpv1.RevokeNodeRequest{Name: "node-x"}); err != nil {
		t.Fatal(err)
	}
	// The deadline, the watchdog's tick and slack for a loaded machine.
	within(t, deadline+6*time.Second, "A's /readyz failing", func() bool { code, _ := readyzOf(t, a); return code == http.StatusServiceUnavailable })
	if _, body := readyzOf(t, a); !strings.Contains(body, "neither changes nor progress") {
		t.Errorf("/readyz body %q does not name the silence", body)
	}
	if _, err := newAgent(t, "node-n").TryJoin(t, a); status.Code(err) != codes.Unavailable {
		t.Fatalf("join on the silent replica: %v, want Unavailable", err)
	}
	within(t, limit+4*time.Second, "A's watch ending", func() bool { _, err := wy.snapshotEvents(); return err != nil })
	ended := time.Since(silent)
	if _, err := wy.snapshotEvents(); status.Code(err) != codes.Unavailable {
		t.Fatalf("A's watch ended with %v, want Unavailable", err)
	}
	if ended > limit+2*time.Second {
		t.Fatalf("A's watch ended %s after its store went silent; limit %s", ended.Round(time.Millisecond), limit)
	}
	t.Logf("A unready and its watch ended %s after the silence began (limit %s)", ended.Round(time.Millisecond), limit)

	stA.ReleaseWatch()
	within(t, 10*time.Second, "A ready again", func() bool { code, _ := readyzOf(t, a); return code == http.StatusOK })
	back := watch(t, y.MTLS(t, a), 0)
	back.waitFor(t, "a snapshot on A", func(evs []*cpv1.WatchEvent, _ error) bool { return len(evs) > 0 })
	if evs, _ := back.snapshotEvents(); peers(evs)["node-x"] != nil {
		t.Fatalf("A serves the revoked node after listing again: %v", describe(evs))
	}
	if v := metricValue(t, a, "confmesh_controlplane_store_watch_breaks_total"); v != 1 {
		t.Errorf("store_watch_breaks_total %v, want 1", v)
	}
}

// TestHungDiskFailsClosed: the standalone control plane's bbolt file sits
// on a file system that stops completing writes (fsfreeze on a loop-mounted
// ext4: a hung disk, no error). Its store probe does not return, so within
// the progress deadline /readyz fails and joins are refused, and its open
// watches end at the stale-watch limit; once the disk answers again it is
// ready and admits again.
func TestHungDiskFailsClosed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: mounts a loop device and freezes it")
	}
	const deadline, limit = 4 * time.Second, 6 * time.Second
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "disk.img"), filepath.Join(dir, "mnt")
	run := func(name string, args ...string) {
		t.Helper()
		if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	run("truncate", "-s", "32M", img)
	run("mkfs.ext4", "-q", "-F", img)
	run("mount", "-o", "loop", img, mnt) // loop devices mounted so are freed at unmount
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })

	c := cptest.Start(t, cptest.Options{Dir: mnt, Tune: func(cfg *controlplane.Config) {
		cfg.StoreProgressDeadline, cfg.StaleWatchLimit = deadline, limit
	}})
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); c.Server.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })
	frozen := false
	thaw := func() {
		if frozen {
			run("fsfreeze", "--unfreeze", mnt)
			frozen = false
		}
	}
	t.Cleanup(thaw) // first: the control plane's shutdown waits for its blocked write

	x, y := newAgent(t, "node-x"), newAgent(t, "node-y")
	x.Join(t, c)
	y.Join(t, c)
	wy := watch(t, y.MTLS(t, c), 0)
	wy.waitFor(t, "node-x", func(evs []*cpv1.WatchEvent, _ error) bool { return peers(evs)["node-x"] != nil })
	if code, body := readyzOf(t, c); code != http.StatusOK {
		t.Fatalf("/readyz %d %s before the disk hangs", code, body)
	}

	run("fsfreeze", "--freeze", mnt)
	frozen = true
	hung := time.Now()
	within(t, deadline+6*time.Second, "/readyz failing", func() bool { code, _ := readyzOf(t, c); return code == http.StatusServiceUnavailable })
	if _, body := readyzOf(t, c); !strings.Contains(body, "has not completed") {
		t.Errorf("/readyz body %q does not name the hung write", body)
	}
	if _, err := newAgent(t, "node-n").TryJoin(t, c); status.Code(err) != codes.Unavailable {
		t.Fatalf("join on a hung store: %v, want Unavailable", err)
	}
	within(t, limit+4*time.Second, "the watch ending", func() bool { _, err := wy.snapshotEvents(); return err != nil })
	if _, err := wy.snapshotEvents(); status.Code(err) != codes.Unavailable {
		t.Fatalf("watch on a hung store ended with %v, want Unavailable", err)
	}
	t.Logf("unready and watches ended %s after the disk hung (limit %s)", time.Since(hung).Round(time.Millisecond), limit)

	thaw()
	within(t, 10*time.Second, "ready again", func() bool { code, _ := readyzOf(t, c); return code == http.StatusOK })
	newAgent(t, "node-n").Join(t, c)
}
