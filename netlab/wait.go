//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"time"
)

// Bounds of the waits the cluster uses.
const (
	ReadyTimeout = 30 * time.Second // agent attested and ready
	MeshTimeout  = 30 * time.Second // every node has every peer
	PollEvery    = 100 * time.Millisecond
)

// permanentError ends an Eventually early.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent wraps err so that Eventually stops retrying and returns it.
func Permanent(err error) error { return permanentError{err} }

// Eventually calls f every interval until it returns nil, returns a
// Permanent error, or timeout has passed; it returns f's last error.
func Eventually(timeout, interval time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var p permanentError
		if errors.As(err, &p) {
			return p.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %s: %w", timeout, err)
		}
		time.Sleep(interval)
	}
}

// ErrNotYet is what a polled condition returns while it is not met.
var ErrNotYet = errors.New("not yet")
