// Package datapath is the userspace WireGuard data path: wireguard-go over a
// TUN device, served on wireguard-go's UAPI socket. It is what `confmesh
// datapath` runs on nodes whose kernel has no WireGuard module.
//
// The datapath carries no confmesh logic. It creates the device and answers
// UAPI requests; keys, peers and routes come from the agent through wgctrl,
// exactly as they would for a kernel device. Because it is a separate process
// it outlives agent restarts, and the tunnels with it.
package datapath

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"
)

// DefaultSocketDir is where wireguard-go's ipc package puts UAPI sockets
// (<dir>/<iface>.sock). It is fixed: ipc.socketDirectory is an unexported
// variable that only a link-time -X flag can change, ipc.UAPIListen watches
// the socket at that path, and wgctrl's userspace backend looks only there.
// Every process that shares a device (datapath, agent, wg(8)) must therefore
// see the same /var/run/wireguard; in network-namespace tests all nodes share
// it, so device names must differ per node.
const DefaultSocketDir = "/var/run/wireguard"

// DefaultMTU is the device MTU when Config.MTU is zero: a 1500-byte underlay
// minus WireGuard's worst-case (IPv6) overhead of 80 bytes.
const DefaultMTU = 1420

// ErrInvalidConfig marks a Config that Run refuses before touching anything.
var ErrInvalidConfig = errors.New("invalid datapath configuration")

// ErrSocketInUse means a live datapath already serves the interface's UAPI
// socket. Run refuses to start rather than steal it.
var ErrSocketInUse = errors.New("UAPI socket in use")

// Config is the datapath's configuration. Everything else (keys, peers,
// listen port) arrives over the UAPI socket.
type Config struct {
	// Iface is the TUN device name, and the UAPI socket's name.
	Iface string
	// MTU of the TUN device; DefaultMTU when zero.
	MTU int
	// SocketDir must be empty or DefaultSocketDir; see DefaultSocketDir for
	// why it cannot move.
	SocketDir string
	// PIDFile, when set, receives the process ID once the socket is served,
	// and is removed on shutdown.
	PIDFile string
	// MemoryLimit is the Go runtime's soft memory limit in bytes: 0 means
	// GOMEMLIMIT when set, else DefaultMemoryLimit; negative means none.
	MemoryLimit int64
	// MaxInflight bounds, in each direction, the packets read (from the TUN
	// device, or from the UDP socket) and not yet written out on the other
	// side: 0 means DefaultMaxInflight, negative no bound.
	MaxInflight int
	// Procs is the Go runtime's GOMAXPROCS: 0 means GOMAXPROCS when set,
	// else DefaultProcs; negative means Go's own default.
	Procs int
	// IdleRelease is how often the datapath checks for idleness to return
	// free memory to the kernel: 0 means DefaultIdleRelease, negative never.
	IdleRelease time.Duration
	// Logger receives the datapath's and wireguard-go's messages
	// (wireguard-go's verbose lines at debug level). Nil discards them.
	Logger *slog.Logger
}

func (c Config) withDefaults() (Config, error) {
	if err := checkIfaceName(c.Iface); err != nil {
		return c, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.MTU < 68 || c.MTU > 65535 {
		return c, fmt.Errorf("%w: MTU %d out of range 68-65535", ErrInvalidConfig, c.MTU)
	}
	if c.SocketDir != "" && filepath.Clean(c.SocketDir) != DefaultSocketDir {
		return c, fmt.Errorf("%w: socket directory %q: wireguard-go's UAPI socket directory is fixed at %s (set only at link time, and the only place wgctrl looks)",
			ErrInvalidConfig, c.SocketDir, DefaultSocketDir)
	}
	c.SocketDir = DefaultSocketDir
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.IdleRelease == 0 {
		c.IdleRelease = DefaultIdleRelease
	}
	if c.MaxInflight == 0 {
		c.MaxInflight = DefaultMaxInflight
	}
	return c, nil
}

// checkIfaceName accepts names the kernel takes literally (no "%d"
// templates, since the socket is named before the kernel picks a number).
func checkIfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("interface name is empty")
	case len(name) > 15:
		return fmt.Errorf("interface name %q is longer than 15 bytes", name)
	case name == "." || name == ".." || strings.ContainsAny(name, "/%: \t\n"):
		return fmt.Errorf("interface name %q is not a valid device name", name)
	}
	return nil
}

// SocketPath is the UAPI socket of the device called iface.
func SocketPath(iface string) string {
	return filepath.Join(DefaultSocketDir, iface+".sock")
}

// Run creates the TUN device cfg.Iface, serves its UAPI socket and blocks
// until ctx is cancelled, then closes the socket and the device (which
// removes the TUN) and removes the PID file. It returns nil after a
// cancellation and an error when it cannot start or the device or socket
// fails underneath it (someone deleted the socket file, for example).
//
// Run refuses to start, with ErrSocketInUse, while another process serves the
// same socket, and removes a stale socket file (nobody accepting) first.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	log := cfg.Logger.With("iface", cfg.Iface)
	sock := SocketPath(cfg.Iface)

	// Before the TUN: a second instance must not disturb the first one's
	// device or socket.
	if err := claimSocket(sock); err != nil {
		return err
	}

	tdev, err := tun.CreateTUN(cfg.Iface, cfg.MTU)
	if err != nil {
		return fmt.Errorf("create TUN device %s: %w", cfg.Iface, err)
	}
	if name, err := tdev.Name(); err == nil && name != cfg.Iface {
		tdev.Close()
		return fmt.Errorf("create TUN device %s: the kernel named it %s", cfg.Iface, name)
	}
	// From here on dev.Close closes the TUN as well, which deletes the link.
	btun, bind := bound(tdev, conn.NewDefaultBind(), cfg.MaxInflight)
	dev := device.NewDevice(btun, bind, wgLogger(ctx, log))
	defer dev.Close()

	f, err := ipc.UAPIOpen(cfg.Iface)
	if err != nil {
		return fmt.Errorf("open UAPI socket %s: %w", sock, err)
	}
	uapi, err := ipc.UAPIListen(cfg.Iface, f)
	f.Close() // UAPIListen holds its own duplicate
	if err != nil {
		return fmt.Errorf("listen on UAPI socket %s: %w", sock, err)
	}
	defer uapi.Close() // unlinks the socket file

	if cfg.PIDFile != "" {
		if err := writePIDFile(cfg.PIDFile); err != nil {
			return err
		}
		defer removePIDFile(cfg.PIDFile, log)
	}

	applyMemoryLimit(cfg, log)
	applyProcs(cfg, log)
	if cfg.IdleRelease > 0 {
		go releaseWhenIdle(ctx, cfg.IdleRelease, log)
	}

	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			go dev.IpcHandle(c)
		}
	}()

	log.Info("datapath running", "mtu", cfg.MTU, "socket", sock, "max_inflight", cfg.MaxInflight)
	select {
	case <-ctx.Done():
		log.Info("datapath stopping", "cause", context.Cause(ctx))
		return nil
	case err := <-acceptErr:
		if errors.Is(err, net.ErrClosed) {
			err = errors.New("listener closed")
		}
		return fmt.Errorf("UAPI socket %s: %w", sock, err)
	case <-dev.Wait():
		return errors.New("WireGuard device closed")
	}
}

// wgLogger routes wireguard-go's printf logging into slog. Verbose lines are
// per-packet on the hot path, so they are dropped before formatting unless
// debug logging is on.
func wgLogger(ctx context.Context, log *slog.Logger) *device.Logger {
	l := &device.Logger{
		Verbosef: device.DiscardLogf,
		Errorf: func(format string, args ...any) {
			log.Error(fmt.Sprintf(format, args...), "component", "wireguard-go")
		},
	}
	if log.Enabled(ctx, slog.LevelDebug) {
		l.Verbosef = func(format string, args ...any) {
			log.Debug(fmt.Sprintf(format, args...), "component", "wireguard-go")
		}
	}
	return l
}
