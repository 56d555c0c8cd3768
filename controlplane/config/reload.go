package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/confmesh/confmesh/internal/attest"
)

// PolicyPollInterval is how often the control plane looks at the policy
// file's modification time and size.
const PolicyPollInterval = 2 * time.Second

// Stamp identifies one version of a file for change detection: its
// modification time and size. (No inotify: it is unreliable across the
// symlink swaps Kubernetes uses to update a mounted ConfigMap, and polling a
// stat every two seconds costs nothing.)
type Stamp struct {
	ModTime time.Time
	Size    int64
}

func stampOf(fi fs.FileInfo) Stamp { return Stamp{ModTime: fi.ModTime(), Size: fi.Size()} }

// Outcome is what one reload attempt did.
type Outcome int

// Outcomes of Poll and Reload.
const (
	// Unchanged: the file has not changed since it was last looked at
	// (Poll only); nothing was done.
	Unchanged Outcome = iota
	// Applied: the new policy is in force.
	Applied
	// Kept: the file could not be read or the policy in it was refused; the
	// previous policy stays in force.
	Kept
)

func (o Outcome) String() string {
	switch o {
	case Unchanged:
		return "unchanged"
	case Applied:
		return "applied"
	case Kept:
		return "kept"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// PolicyReloader decides when the policy file is read again and whether
// what it holds replaces the policy in force. It is not safe for concurrent
// use: one goroutine calls Poll on a ticker and Reload on SIGHUP.
//
// A reload reads the file (Load), refuses it if it does not parse or Check
// fails, and otherwise hands it to Apply. A refused policy is logged with
// its error and the previous one stays in force; the file is not read again
// until it changes (or Reload is called), so a broken file is reported once,
// not every poll.
type PolicyReloader struct {
	// Path is the policy file.
	Path string
	// Load parses the file; attest.LoadPolicy when nil.
	Load func(path string) (*attest.Policy, error)
	// Check, when set, refuses a policy that parses but must not be put in
	// force (another trust domain, an unloadable root, an evidence age that
	// the renewal interval cannot meet). It must cover every reason Apply
	// could refuse, because an error from Apply is taken to mean the policy
	// is in force but re-evaluating the nodes under it failed.
	Check func(*attest.Policy) error
	// Apply puts the policy in force (controlplane.Server.SetPolicy).
	Apply func(*attest.Policy) error
	// Logger; discards when nil.
	Logger *slog.Logger
	// Stat replaces os.Stat (tests).
	Stat func(string) (fs.FileInfo, error)

	last    Stamp
	known   bool   // last holds the stamp of the version last read
	statErr string // the stat error last logged, so it is logged once
}

func (r *PolicyReloader) log() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return r.Logger
}

func (r *PolicyReloader) stat() (Stamp, error) {
	st := r.Stat
	if st == nil {
		st = os.Stat
	}
	fi, err := st(r.Path)
	if err != nil {
		return Stamp{}, err
	}
	return stampOf(fi), nil
}

// Prime records the file's current stamp without reading it: call it right
// after the policy in force was loaded from the file, so the first Poll does
// not reload the same version.
func (r *PolicyReloader) Prime() error {
	s, err := r.stat()
	if err != nil {
		r.known = false
		return err
	}
	r.last, r.known = s, true
	return nil
}

// Changed reports whether the file's stamp differs from the one last
// recorded, and records the new one. A file that cannot be stat'ed is
// reported as an error (and counts as changed once it is back).
func (r *PolicyReloader) Changed() (bool, error) {
	s, err := r.stat()
	if err != nil {
		r.known = false
		return false, err
	}
	if r.known && s.ModTime.Equal(r.last.ModTime) && s.Size == r.last.Size {
		return false, nil
	}
	r.last, r.known = s, true
	return true, nil
}

// Poll reloads the policy if the file changed since it was last read.
func (r *PolicyReloader) Poll() (Outcome, error) {
	changed, err := r.Changed()
	if err != nil {
		if msg := err.Error(); msg != r.statErr {
			r.statErr = msg
			r.log().Error("policy file unreadable; the policy in force stays", "file", r.Path, "err", err)
		}
		return Kept, err
	}
	if r.statErr != "" {
		r.log().Info("policy file is back", "file", r.Path)
		r.statErr = ""
	}
	if !changed {
		return Unchanged, nil
	}
	return r.reload("file changed")
}

// Reload reads the file and applies it whether or not it changed (SIGHUP).
// trigger names what asked for it, for the log.
func (r *PolicyReloader) Reload(trigger string) (Outcome, error) {
	// Record the stamp before reading: a write that lands after the read
	// changes the stamp again and is picked up by the next Poll.
	if s, err := r.stat(); err == nil {
		r.last, r.known = s, true
	} else {
		r.known = false
	}
	return r.reload(trigger)
}

func (r *PolicyReloader) reload(trigger string) (Outcome, error) {
	load := r.Load
	if load == nil {
		load = attest.LoadPolicy
	}
	p, err := load(r.Path)
	if err == nil && r.Check != nil {
		err = r.Check(p)
	}
	if err != nil {
		r.log().Error("policy reload refused; the previous policy stays in force", "trigger", trigger, "file", r.Path, "err", err)
		return Kept, err
	}
	if r.Apply == nil {
		return Kept, errors.New("policy reloader has no Apply")
	}
	if err := r.Apply(p); err != nil {
		r.log().Error("policy reloaded, but re-evaluating the nodes under it failed; the next sweep retries", "trigger", trigger, "file", r.Path, "err", err)
		return Applied, err
	}
	r.log().Info("policy reloaded", "trigger", trigger, "file", r.Path, "measurements", len(p.Measurements))
	return Applied, nil
}
