//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"time"
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

// errNotYet is what a polled condition returns while it is not met.
var errNotYet = errors.New("not yet")
