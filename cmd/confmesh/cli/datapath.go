package cli

import (
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/confmesh/confmesh/internal/datapath"
	"github.com/spf13/cobra"
)

func newDatapathCmd() *cobra.Command {
	var cfg datapath.Config
	var level string
	cmd := &cobra.Command{
		Use:   "datapath --iface NAME [--mtu N] [--pid-file FILE] [--log-level LEVEL]",
		Short: "Run the userspace WireGuard datapath (wireguard-go over TUN) for one device",
		Long: `Create the TUN device NAME with wireguard-go and serve its UAPI socket
` + datapath.DefaultSocketDir + `/NAME.sock until SIGINT or SIGTERM, then remove both and
exit 0. The agent starts it (or runs it as a sidecar) when the kernel has no
WireGuard module, and configures it through wgctrl like a kernel device; the
datapath itself holds no confmesh logic and keeps forwarding across agent
restarts.

It refuses to start while another datapath serves NAME's socket, and removes
a stale socket left by one that died. The socket directory is wireguard-go's
fixed default, so every device name on a host (across network namespaces)
must be unique.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(level)); err != nil {
				return usageErrorf("--log-level %q: want debug, info, warn or error", level)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: lvl}))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			err := datapath.Run(ctx, cfg)
			switch {
			case errors.Is(err, datapath.ErrInvalidConfig):
				return usageErrorf("%v", err)
			case err != nil:
				return failf("datapath: %v", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&cfg.Iface, "iface", "", "WireGuard device name (required)")
	cmd.Flags().IntVar(&cfg.MTU, "mtu", datapath.DefaultMTU, "device MTU (underlay MTU - 80)")
	cmd.Flags().StringVar(&cfg.PIDFile, "pid-file", "", "write the process ID here while running")
	cmd.Flags().StringVar(&level, "log-level", "info", "debug, info, warn or error (debug includes wireguard-go's per-packet lines)")
	_ = cmd.MarkFlagRequired("iface")
	return cmd
}
