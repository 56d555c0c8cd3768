//go:build linux

package netlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"
)

// CommandTimeout bounds every helper command (ip, confmesh status, ...).
const CommandTimeout = 20 * time.Second

// Exec runs a command with a bounded time and returns its combined output;
// the error carries the command line and the output.
func Exec(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ip runs `ip ARGS...`.
func ip(args ...string) error {
	_, err := Exec("ip", args...)
	return err
}

// ipIn runs `ip -n NS ARGS...`.
func ipIn(netns string, args ...string) error {
	return ip(append([]string{"-n", netns}, args...)...)
}

// CheckHost reports what this machine lacks to run a lab (besides root):
// the ip command from iproute2, and the TUN device the userspace
// WireGuard datapath opens.
func CheckHost() error {
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("the ip command (Debian package iproute2) is required: %w", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("the userspace WireGuard datapath needs /dev/net/tun (modprobe tun): %w", err)
	}
	return nil
}
