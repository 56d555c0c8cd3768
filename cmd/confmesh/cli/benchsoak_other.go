//go:build !linux

package cli

import "github.com/spf13/cobra"

// newBenchSoakCmd: the soak runs the namespace lab, which is Linux only.
func newBenchSoakCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "soak",
		Short: "Run the namespace lab for a long time under traffic and events (Linux only)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return failf("confmesh bench soak needs Linux (network namespaces, TUN, nftables)")
		},
	}
}
