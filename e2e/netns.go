//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// netnsDir is where `ip netns` keeps its named namespaces.
const netnsDir = "/run/netns"

// cmdTimeout bounds every helper command (ip, confmesh status, ...).
const cmdTimeout = 20 * time.Second

// run executes a command with a bounded time and returns its combined
// output; the error carries the command line and the output.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ip runs `ip ARGS...`.
func ip(args ...string) error {
	_, err := run("ip", args...)
	return err
}

// ipIn runs `ip -n NS ARGS...`.
func ipIn(netns string, args ...string) error {
	return ip(append([]string{"-n", netns}, args...)...)
}

// InNS runs f on an OS thread switched into the named network namespace.
// Sockets created inside f stay in that namespace and may be used from any
// goroutine afterwards.
func InNS(name string, f func() error) error {
	n, err := ns.GetNS(filepath.Join(netnsDir, name))
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

// addNetns creates a named network namespace with loopback up and IPv6 off
// (so that nothing but IPv4 and ARP ever crosses the underlay).
func addNetns(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	if err := ipIn(name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	return InNS(name, func() error {
		for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
			if err := writeSysctl(k, "1"); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeSysctl writes /proc/sys/KEY in the calling thread's network namespace.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// delNetns deletes a named network namespace; a missing one is not an error.
func delNetns(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); os.IsNotExist(err) {
		return nil
	}
	return ip("netns", "del", name)
}

// netnsPIDs lists the processes living in the named namespace.
func netnsPIDs(name string) []int {
	out, err := run("ip", "netns", "pids", name)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}
