//go:build linux

package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Runs names a family of lab runs: the e2e tests ("cme2e-", /run/cme2e)
// or the demo ("cmdemo-", /run/cmdemo). Every name a run creates starts
// with NamePrefix + its 4-hex-digit run ID + "-": network namespaces,
// WireGuard devices (and so their UAPI sockets), the control plane's
// --sim-name, temporary directories. A run holds an exclusive flock on
// LockDir/<run ID>.lock while it lives, so Sweep removes exactly the
// leftovers of runs that have ended (crashed, killed, kept on purpose) and
// never touches a run that is still going, nor anything without the prefix.
type Runs struct {
	NamePrefix string // e.g. "cme2e-"; must end in "-"
	LockDir    string // e.g. "/run/cme2e"
	// ClusterIDWidth is how many base-36 digits a cluster ID has (default
	// 2). A WireGuard device name is at most 15 bytes: NamePrefix + run ID
	// + "-" + cluster ID + "n" + node number must fit.
	ClusterIDWidth int
}

// Run is one live run: it holds its lock until Release.
type Run struct {
	Runs
	ID     string // 4 hex digits
	Prefix string // NamePrefix + ID + "-"

	lock *os.File
	seq  atomic.Int64
}

// Start picks a free run ID and takes its lock.
func (rs Runs) Start() (*Run, error) {
	if !strings.HasSuffix(rs.NamePrefix, "-") || rs.LockDir == "" {
		return nil, fmt.Errorf("netlab: name prefix %q must end in '-' and a lock directory is needed", rs.NamePrefix)
	}
	if err := os.MkdirAll(rs.LockDir, 0o700); err != nil {
		return nil, err
	}
	for range 100 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		id := hex.EncodeToString(b[:])
		f, err := os.OpenFile(filepath.Join(rs.LockDir, id+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // a live run has this ID
			continue
		}
		return &Run{Runs: rs, ID: id, Prefix: rs.NamePrefix + id + "-", lock: f}, nil
	}
	return nil, fmt.Errorf("no free run ID in %s after 100 tries", rs.LockDir)
}

// Release removes the lock file and drops the lock: from now on Sweep
// treats whatever the run left as leftovers.
func (r *Run) Release() {
	if r == nil || r.lock == nil {
		return
	}
	os.Remove(r.lock.Name())
	r.lock.Close()
	r.lock = nil
}

// NextClusterPrefix returns the name prefix of the run's next cluster:
// the run prefix followed by a base-36 sequence number, e.g. "cme2e-1a2b-03".
func (r *Run) NextClusterPrefix() (string, error) {
	width := r.ClusterIDWidth
	if width <= 0 {
		width = 2
	}
	seq := r.seq.Add(1)
	id := strconv.FormatInt(seq, 36)
	if len(id) > width {
		return "", fmt.Errorf("netlab: more than %d clusters in one run", seq-1)
	}
	return r.Prefix + strings.Repeat("0", width-len(id)) + id, nil
}

// TempDir creates a temporary directory named with the run prefix (so
// Sweep removes it once the run has ended) and returns its path.
func (r *Run) TempDir(what string) (string, error) {
	return os.MkdirTemp("", r.Prefix+what+"-")
}
