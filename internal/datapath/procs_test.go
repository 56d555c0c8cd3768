package datapath

import "testing"

func TestProcsChoice(t *testing.T) {
	for _, c := range []struct {
		configured int
		env        string
		goDefault  int
		want       int
	}{
		{0, "", 2, 1},
		{0, "", 1, 1},
		{0, "", 3, 1},
		{0, "", 16, 8},
		{0, "4", 16, -1}, // the runtime applies GOMAXPROCS itself
		{3, "4", 16, 3},
		{-1, "", 16, -1},
	} {
		if got := procs(c.configured, c.env, c.goDefault); got != c.want {
			t.Errorf("procs(%d, %q, %d) = %d, want %d", c.configured, c.env, c.goDefault, got, c.want)
		}
	}
}
