// Package wg is the node's WireGuard device: created or adopted by Ensure,
// configured through wgctrl, routed through netlink.
//
// Like wgctrl-go, it has one small surface (Device) and, behind it, one
// internal interface (backend) with two implementations: the kernel module
// (kernel.go, netlink) and the userspace datapath process (userspace.go,
// `confmesh datapath`, wireguard-go over TUN). Ensure picks between them in
// one place (chooseBackend). After that nothing differs: wgctrl speaks
// netlink to a kernel device and the UAPI socket to a userspace one.
//
// A Device is bound to the network namespace Ensure ran in: its netlink and
// wgctrl handles are opened there, and a datapath it starts inherits it.
// Its methods may then be called from any goroutine.
//
// Agent restarts are free: Ensure adopts a device that already exists (a
// kernel link of type wireguard, or a live UAPI socket with its TUN link)
// instead of recreating it, so tunnels keep forwarding while the agent is
// away. The datapath process is started detached (its own process group,
// ignoring SIGHUP) so it outlives the agent; in a Kubernetes pod, where a restarting container takes
// its children with it, run it as a sidecar container instead and leave
// Config.DatapathCommand empty: Ensure then waits for the sidecar's socket.
package wg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Kind names a backend.
type Kind string

// The backends, in the order Ensure tries them.
const (
	Kernel    Kind = "kernel"
	Userspace Kind = "userspace"
)

// Config describes the device Ensure provides.
type Config struct {
	// Name is the device name, e.g. cm0. Userspace devices' sockets share
	// one directory per host, so in network-namespace tests every node
	// needs its own name.
	Name string
	// MTU of the device (underlay MTU - 80); left as it is when zero.
	MTU int
	// Addresses to put on the device, e.g. the node's pod gateway /32.
	// Ensure adds missing ones and never removes any: an agent that restarts
	// before it knows its pod CIDR must not strip a working gateway.
	Addresses []netip.Prefix
	// DatapathCommand starts the userspace datapath, e.g.
	// {"/usr/local/bin/confmesh", "datapath", "--iface", "cm0", "--pid-file", ".../datapath.pid"}.
	// Empty means the datapath is managed elsewhere (a sidecar container):
	// Ensure only waits for its socket.
	DatapathCommand []string
	// DatapathLog receives the datapath's stdout and stderr (appended);
	// /dev/null when empty.
	DatapathLog string
	// PIDFile is where the datapath writes its PID (the --pid-file of
	// DatapathCommand). Delete falls back to it when the UAPI socket cannot
	// tell who serves it.
	PIDFile string
	// Logger; nil discards.
	Logger *slog.Logger
	// ForceUserspace skips the kernel attempt (tests, and an operator flag).
	ForceUserspace bool
}

// Bounds on waiting for the datapath; Ensure's ctx may cut them shorter.
const (
	startTimeout = 15 * time.Second
	stopTimeout  = 10 * time.Second
	pollInterval = 20 * time.Millisecond
)

// ErrClosed is returned by a Device's methods after Close.
var ErrClosed = errors.New("WireGuard device handle closed")

// Device is the node's WireGuard device. Its methods are safe for
// concurrent use.
type Device struct {
	cfg    Config
	log    *slog.Logger
	b      backend
	reason string

	mu  sync.RWMutex // guards nl and wgc against Close
	nl  *netlink.Handle
	wgc *wgctrl.Client
}

// open read-locks the handles; it fails after Close.
func (d *Device) open() (unlock func(), err error) {
	d.mu.RLock()
	if d.nl == nil {
		d.mu.RUnlock()
		return nil, fmt.Errorf("%s: %w", d.cfg.Name, ErrClosed)
	}
	return d.mu.RUnlock, nil
}

// Ensure returns the WireGuard device cfg.Name, creating it if needed: it
// adopts a running device of that name, else creates a kernel device, else
// (no kernel WireGuard, or ForceUserspace) starts the userspace datapath and
// waits for its socket. It then sets the MTU, adds the addresses and brings
// the link up. Call it in the network namespace the device belongs in.
func Ensure(ctx context.Context, cfg Config) (_ *Device, err error) {
	if err := checkName(cfg.Name); err != nil {
		return nil, err
	}
	for _, p := range cfg.Addresses {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("WireGuard device %s: invalid address %s", cfg.Name, p)
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Device{cfg: cfg, log: cfg.Logger.With("device", cfg.Name)}
	if d.nl, err = netlink.NewHandle(); err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	if d.wgc, err = wgctrl.New(); err != nil {
		d.nl.Close()
		return nil, fmt.Errorf("wgctrl: %w", err)
	}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()

	kern := &kernelBackend{nl: d.nl, name: cfg.Name}
	user := &userspaceBackend{nl: d.nl, cfg: cfg, log: d.log}
	for _, b := range []backend{kern, user} {
		ok, err := b.adopt(ctx)
		if err != nil {
			return nil, fmt.Errorf("WireGuard device %s: %w", cfg.Name, err)
		}
		if ok {
			d.b, d.reason = b, "adopted the running device"
			break
		}
	}

	created := false
	if d.b == nil {
		if l, err := d.nl.LinkByName(cfg.Name); err == nil {
			return nil, fmt.Errorf("WireGuard device %s: a %s link of that name exists; not touching it", cfg.Name, l.Type())
		}
		var kernelErr error
		if !cfg.ForceUserspace {
			kernelErr = kern.create(ctx)
		}
		kind, reason := chooseBackend(kernelErr, cfg.ForceUserspace)
		d.reason = reason
		switch kind {
		case Kernel:
			d.b = kern
		case Userspace:
			if err := user.create(ctx); err != nil {
				return nil, fmt.Errorf("WireGuard device %s: userspace datapath (%s): %w", cfg.Name, reason, err)
			}
			d.b = user
		}
		created = true
	}
	d.log.Info("WireGuard device ready", "backend", d.b.kind(), "reason", d.reason, "pid", d.b.pid())

	if err := d.setupLink(); err != nil {
		if created {
			if derr := d.b.destroy(ctx); derr != nil {
				d.log.Warn("remove half-set-up device", "err", derr)
			}
		}
		return nil, fmt.Errorf("WireGuard device %s: %w", cfg.Name, err)
	}
	if _, err := d.wgc.Device(cfg.Name); err != nil {
		return nil, fmt.Errorf("WireGuard device %s: wgctrl cannot see it: %w", cfg.Name, err)
	}
	return d, nil
}

// chooseBackend is the one place the backend is decided, from the outcome
// of the kernel attempt (nil: a kernel device now exists). Any kernel failure
// falls back to userspace; the reason says whether the kernel simply lacks
// WireGuard (the expected case on such nodes) or failed otherwise.
func chooseBackend(kernelErr error, forceUserspace bool) (Kind, string) {
	switch {
	case forceUserspace:
		return Userspace, "userspace forced by configuration"
	case kernelErr == nil:
		return Kernel, "the kernel supports WireGuard"
	case kernelUnsupported(kernelErr):
		return Userspace, fmt.Sprintf("the kernel has no WireGuard support (%v)", kernelErr)
	default:
		return Userspace, fmt.Sprintf("creating a kernel WireGuard device failed (%v)", kernelErr)
	}
}

// Kind reports which backend provides the device.
func (d *Device) Kind() Kind { return d.b.kind() }

// Name is the device name.
func (d *Device) Name() string { return d.cfg.Name }

// PID is the userspace datapath's process ID, 0 for a kernel device or when
// it is not known (a sidecar in another PID namespace without a PID file).
func (d *Device) PID() int { return d.b.pid() }

// Configure sets the private key and listen port, leaving peers alone. It
// writes only what differs from the device's current configuration: an
// adopted device (an agent restart) already has both, and wireguard-go
// closes and re-opens its UDP socket on every listen-port write, losing
// the packets in flight (a lost handshake message costs REKEY_TIMEOUT).
func (d *Device) Configure(privateKey wgtypes.Key, listenPort int) error {
	unlock, err := d.open()
	if err != nil {
		return err
	}
	defer unlock()
	cur, err := d.wgc.Device(d.cfg.Name)
	if err != nil {
		return fmt.Errorf("configure %s: read it: %w", d.cfg.Name, err)
	}
	var cfg wgtypes.Config
	if cur.PrivateKey != privateKey {
		cfg.PrivateKey = &privateKey
	}
	if cur.ListenPort != listenPort {
		cfg.ListenPort = &listenPort
	}
	if cfg.PrivateKey == nil && cfg.ListenPort == nil {
		return nil
	}
	if err := d.wgc.ConfigureDevice(d.cfg.Name, cfg); err != nil {
		return fmt.Errorf("configure %s: %w", d.cfg.Name, err)
	}
	return nil
}

// State reads the device's configuration and peer statistics.
func (d *Device) State() (*wgtypes.Device, error) {
	unlock, err := d.open()
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := d.wgc.Device(d.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.cfg.Name, err)
	}
	return st, nil
}

// ApplyPeers applies incremental peer changes (add, update, Remove,
// ReplaceAllowedIPs). It never replaces the whole peer set, so peers not
// named in changes keep their sessions.
func (d *Device) ApplyPeers(changes []wgtypes.PeerConfig) error {
	unlock, err := d.open()
	if err != nil {
		return err
	}
	defer unlock()
	if len(changes) == 0 {
		return nil
	}
	if err := d.wgc.ConfigureDevice(d.cfg.Name, wgtypes.Config{Peers: changes}); err != nil {
		return fmt.Errorf("apply %d peer changes to %s: %w", len(changes), d.cfg.Name, err)
	}
	return nil
}

// Healthy returns nil when the link exists, its backend is alive (for
// userspace: the datapath answers on its socket) and wgctrl can read it.
func (d *Device) Healthy() error {
	unlock, err := d.open()
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := d.nl.LinkByName(d.cfg.Name); err != nil {
		return fmt.Errorf("%s: link: %w", d.cfg.Name, err)
	}
	if err := d.b.alive(); err != nil {
		return fmt.Errorf("%s: %w", d.cfg.Name, err)
	}
	if _, err := d.wgc.Device(d.cfg.Name); err != nil {
		return fmt.Errorf("%s: wgctrl: %w", d.cfg.Name, err)
	}
	return nil
}

// Delete removes the device: a kernel link is deleted, a userspace datapath
// is sent SIGTERM and Delete waits (bounded) until the process, its socket
// and its TUN link are gone. Close is still needed afterwards.
func (d *Device) Delete() error {
	unlock, err := d.open()
	if err != nil {
		return err
	}
	defer unlock()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+5*time.Second)
	defer cancel()
	if err := d.b.destroy(ctx); err != nil {
		return fmt.Errorf("delete %s: %w", d.cfg.Name, err)
	}
	d.log.Info("WireGuard device deleted", "backend", d.b.kind())
	return nil
}

// Close releases the netlink and wgctrl handles. The device itself stays:
// closing is what an exiting agent does.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	if d.wgc != nil {
		errs = append(errs, d.wgc.Close())
		d.wgc = nil
	}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	return errors.Join(errs...)
}

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("WireGuard device name is empty")
	case len(name) > 15:
		return fmt.Errorf("WireGuard device name %q is longer than 15 bytes", name)
	}
	for _, r := range name {
		if r == '/' || r == '%' || r == ':' || r <= ' ' || r > '~' {
			return fmt.Errorf("WireGuard device name %q is not a valid interface name", name)
		}
	}
	return nil
}
