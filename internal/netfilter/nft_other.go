//go:build !linux

package netfilter

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

// ErrUnsupported is returned by the kernel-facing functions on systems
// without nftables.
var ErrUnsupported = fmt.Errorf("netfilter: nftables strict mode needs Linux, not %s: %w", runtime.GOOS, errors.ErrUnsupported)

// Install is unavailable off Linux.
func Install(r Rules) error {
	if err := r.Validate(); err != nil {
		return err
	}
	return ErrUnsupported
}

// Remove is unavailable off Linux.
func Remove(table string) error { return ErrUnsupported }

// Installed is unavailable off Linux.
func Installed(table string) (bool, error) { return false, ErrUnsupported }

// Counters is unavailable off Linux.
func Counters(table string) (out, in uint64, err error) { return 0, 0, ErrUnsupported }

// ReadDrops is unavailable off Linux.
func ReadDrops(table string) (Drops, error) { return Drops{}, ErrUnsupported }

// Verify is unavailable off Linux.
func Verify(r Rules) error { return ErrUnsupported }

// SyncPods is unavailable off Linux.
func SyncPods(r Rules) error { return ErrUnsupported }

// Watch is unavailable off Linux.
func Watch(ctx context.Context) (<-chan struct{}, error) { return nil, ErrUnsupported }
