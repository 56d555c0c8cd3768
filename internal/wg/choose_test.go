package wg

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestChooseBackend(t *testing.T) {
	tests := []struct {
		name       string
		kernelErr  error
		force      bool
		want       Kind
		wantReason string
	}{
		{"kernel ok", nil, false, Kernel, "kernel supports WireGuard"},
		{"EOPNOTSUPP from netlink", unix.EOPNOTSUPP, false, Userspace, "no WireGuard support"},
		{"wrapped EOPNOTSUPP", fmt.Errorf("link add: %w", unix.EOPNOTSUPP), false, Userspace, "no WireGuard support"},
		{"operation not supported text", errors.New("operation not supported"), false, Userspace, "no WireGuard support"},
		{"iproute2 unknown device type", errors.New(`Error: Unknown device type.`), false, Userspace, "no WireGuard support"},
		{"other failure still falls back", unix.EPERM, false, Userspace, "creating a kernel WireGuard device failed"},
		{"forced with kernel ok", nil, true, Userspace, "forced"},
		{"forced with kernel error", unix.EOPNOTSUPP, true, Userspace, "forced"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, reason := chooseBackend(tt.kernelErr, tt.force)
			if got != tt.want {
				t.Errorf("chooseBackend(%v, %v) = %s, want %s", tt.kernelErr, tt.force, got, tt.want)
			}
			if !strings.Contains(reason, tt.wantReason) {
				t.Errorf("reason %q does not contain %q", reason, tt.wantReason)
			}
			if tt.kernelErr != nil && !tt.force && !strings.Contains(reason, tt.kernelErr.Error()) {
				t.Errorf("reason %q does not name the kernel error %q", reason, tt.kernelErr)
			}
		})
	}
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"cm0", "cmwga0", "abcdefghijklmno"} {
		if err := checkName(ok); err != nil {
			t.Errorf("checkName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", "abcdefghijklmnop", "a/b", "cm%d", "a b", "é"} {
		if err := checkName(bad); err == nil {
			t.Errorf("checkName(%q) = nil, want an error", bad)
		}
	}
}
