//go:build linux

package testutil

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// NewNetNS creates a network namespace with its loopback up. When the test
// ends it is closed and unmounted; a failure to unmount fails the test.
// Register cleanups that need the namespace (devices, processes in it) after
// calling NewNetNS, so that they run before it goes. It needs root.
func NewNetNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("unmount netns: %v", err)
		}
	})
	InNetNS(t, n, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// InNetNS runs f in network namespace n (on a locked OS thread) and fails
// the test if it returns an error.
func InNetNS(t testing.TB, n ns.NetNS, f func() error) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error { return f() }); err != nil {
		t.Fatal(err)
	}
}
