//go:build !linux

package cli

import "github.com/spf13/cobra"

// newBenchThroughputCmd: the bench builds its lab out of Linux network namespaces.
func newBenchThroughputCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "throughput",
		Short: "Measure TCP throughput: plaintext, stock wireguard-go and confmesh (Linux only)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return failf("confmesh bench throughput needs Linux (network namespaces, TUN, nftables)")
		},
	}
}
