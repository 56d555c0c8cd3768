package datapath

import (
	"math"
	"testing"
)

func TestMemoryLimitChoice(t *testing.T) {
	for _, c := range []struct {
		configured int64
		env        string
		want       int64
	}{
		{0, "", DefaultMemoryLimit},
		{0, "1GiB", -1}, // the runtime applies GOMEMLIMIT itself
		{300 << 20, "1GiB", 300 << 20},
		{-1, "", math.MaxInt64},
	} {
		if got := memoryLimit(c.configured, c.env); got != c.want {
			t.Errorf("memoryLimit(%d, %q) = %d, want %d", c.configured, c.env, got, c.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"160MiB": 160 << 20, "1GiB": 1 << 30, "4096": 4096, "512 KiB": 512 << 10, "off": -1, "0": -1} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-5MiB", "12MB", "lots", "99999999999GiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}
