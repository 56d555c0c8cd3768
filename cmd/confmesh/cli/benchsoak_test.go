//go:build linux

package cli

import "testing"

// TestBenchSoakRefusesBadFlags: a soak with flags it cannot run is a usage
// error naming the flag, before anything is built (the soak itself runs
// only in make bench: docs/benchmarks.md).
func TestBenchSoakRefusesBadFlags(t *testing.T) {
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--duration", "30s"}, "--duration must be at least 1m"},
		{[]string{"--probe-interval", "0s"}, "--probe-interval"},
		{[]string{"--nodes", "1"}, "--nodes must be 2 to 20"},
		{[]string{"--churn-pods", "0"}, "--churn-pods"},
		{[]string{"-o", "yaml"}, "yaml"},
	} {
		run(t, append([]string{"bench", "soak"}, c.args...)...).want(t, 2, c.says)
	}
}
