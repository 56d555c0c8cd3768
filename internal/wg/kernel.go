package wg

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// kernelBackend is the in-kernel WireGuard module, reached through netlink.
type kernelBackend struct {
	nl   *netlink.Handle
	name string
}

func (k *kernelBackend) kind() Kind { return Kernel }
func (k *kernelBackend) pid() int   { return 0 }

func (k *kernelBackend) adopt(context.Context) (bool, error) {
	l, err := k.nl.LinkByName(k.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return false, nil
		}
		return false, fmt.Errorf("look up link: %w", err)
	}
	return l.Type() == "wireguard", nil
}

func (k *kernelBackend) create(context.Context) error {
	return k.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: k.name}})
}

func (k *kernelBackend) alive() error {
	l, err := k.nl.LinkByName(k.name)
	if err != nil {
		return err
	}
	if l.Type() != "wireguard" {
		return fmt.Errorf("link is a %s, not wireguard", l.Type())
	}
	return nil
}

func (k *kernelBackend) destroy(context.Context) error {
	l, err := k.nl.LinkByName(k.name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return err
	}
	return k.nl.LinkDel(l)
}
