package wg

import (
	"context"
	"errors"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// A backend provides the link that carries the WireGuard device. Both are
// configured the same way afterwards (wgctrl, netlink); they differ only in
// how the device comes to exist, how its liveness is judged and how it goes.
type backend interface {
	kind() Kind
	// adopt reports whether a live device of this kind called Name is
	// already there (and takes it over); an error means something of that
	// name exists that must not be adopted or replaced.
	adopt(ctx context.Context) (bool, error)
	// create makes a new device.
	create(ctx context.Context) error
	// alive reports nil while the device is present and served.
	alive() error
	// destroy removes the device and waits until it is gone.
	destroy(ctx context.Context) error
	// pid is the process serving the device, 0 if none or unknown.
	pid() int
}

// kernelUnsupported reports whether err means "this kernel cannot make
// WireGuard links" (no module, or one that cannot be loaded), as opposed to
// a failure of an otherwise supported operation.
func kernelUnsupported(err error) bool {
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENODEV) {
		return true
	}
	msg := strings.ToLower(err.Error())
	return strings.Contains(msg, "operation not supported") || strings.Contains(msg, "unknown device type")
}

// listRetry runs a netlink dump, retrying when the kernel reports the dump
// was interrupted by a concurrent change (results then may be inconsistent).
func listRetry[T any](f func() ([]T, error)) ([]T, error) {
	var (
		v   []T
		err error
	)
	for range 5 {
		v, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}
