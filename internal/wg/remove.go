package wg

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/vishvananda/netlink"
)

// Remove deletes the device name if it exists, whichever backend provides
// it, without creating anything: `confmesh agent cleanup`. A missing device
// is not an error.
func Remove(ctx context.Context, name, pidFile string) error {
	if err := checkName(name); err != nil {
		return err
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer nl.Close()
	kern := &kernelBackend{nl: nl, name: name}
	if ok, err := kern.adopt(ctx); err == nil && ok {
		return kern.destroy(ctx)
	}
	user := &userspaceBackend{nl: nl, cfg: Config{Name: name, PIDFile: pidFile}, log: slog.New(slog.DiscardHandler)}
	return user.destroy(ctx)
}
