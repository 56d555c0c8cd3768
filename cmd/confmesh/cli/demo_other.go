//go:build !linux

package cli

import "github.com/spf13/cobra"

// newDemoCmd: the demo builds its cluster out of Linux network namespaces.
func newDemoCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "run a local multi-node confmesh in network namespaces (Linux only)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return failf("confmesh demo needs Linux (network namespaces, TUN, nftables)")
		},
	}
	// The workload verbs run anywhere a Workload API is reachable.
	cmd.AddCommand(newDemoSVIDCmd(), newDemoServeCmd(), newDemoCallCmd())
	return cmd
}
