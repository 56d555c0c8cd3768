//go:build linux

package netlab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// NetnsDir is where `ip netns` keeps its named namespaces.
const NetnsDir = "/run/netns"

// InNS runs f on an OS thread switched into the named network namespace.
// Sockets created inside f stay in that namespace and may be used from any
// goroutine afterwards.
func InNS(name string, f func() error) error {
	n, err := ns.GetNS(filepath.Join(NetnsDir, name))
	if err != nil {
		return fmt.Errorf("netns %s: %w", name, err)
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error { return f() })
}

// AddNetns creates a named network namespace with loopback up and IPv6 off
// (so that nothing but IPv4 and ARP ever crosses the underlay).
func AddNetns(name string) error {
	if err := ip("netns", "add", name); err != nil {
		return err
	}
	if err := ipIn(name, "link", "set", "lo", "up"); err != nil {
		return err
	}
	return InNS(name, func() error {
		for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
			if err := WriteSysctl(k, "1"); err != nil {
				return err
			}
		}
		return nil
	})
}

// WriteSysctl writes /proc/sys/KEY in the calling thread's network namespace.
func WriteSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", key)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// DelNetns deletes a named network namespace; a missing one is not an error.
func DelNetns(name string) error {
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); os.IsNotExist(err) {
		return nil
	}
	return ip("netns", "del", name)
}

// NetnsPIDs lists the processes living in the named namespace.
func NetnsPIDs(name string) []int {
	out, err := Exec("ip", "netns", "pids", name)
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

// AddNamespace creates a network namespace of the cluster named
// <prefix>-<suffix> (AddNetns: loopback up, IPv6 off) that belongs to no
// node; Teardown deletes it.
func (c *Cluster) AddNamespace(suffix string) (string, error) {
	name := c.Prefix + "-" + suffix
	c.trackNS(name)
	if err := AddNetns(name); err != nil {
		return name, err
	}
	return name, nil
}

// ReadSysctl reads /proc/sys/KEY in the named network namespace.
func ReadSysctl(netns, key string) (string, error) {
	var v string
	err := InNS(netns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// Links lists the names of the network interfaces in the named namespace.
func Links(netns string) ([]string, error) {
	var names []string
	err := InNS(netns, func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	})
	return names, err
}
