//go:build linux

package netlab

import (
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// WGDevice reads the node's WireGuard device with wgctrl inside its namespace.
func (n *Node) WGDevice() (*wgtypes.Device, error) {
	var dev *wgtypes.Device
	err := InNS(n.NS, func() error {
		wc, err := wgctrl.New()
		if err != nil {
			return err
		}
		defer wc.Close()
		dev, err = wc.Device(n.Device)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%s: wgctrl %s: %w", n.Name, n.Device, err)
	}
	return dev, nil
}

// HasPeerKey reports whether k is among the node's WireGuard peers.
func (n *Node) HasPeerKey(k wgtypes.Key) (bool, error) {
	dev, err := n.WGDevice()
	if err != nil {
		return false, err
	}
	for _, p := range dev.Peers {
		if p.PublicKey == k {
			return true, nil
		}
	}
	return false, nil
}

// StrictCounters reads the strict-mode drop counters (packets) in the
// node's namespace.
func (n *Node) StrictCounters() (out, in uint64, err error) {
	err = InNS(n.NS, func() error {
		var e error
		out, in, e = netfilter.Counters(agent.DefaultTable)
		return e
	})
	return out, in, err
}

// DatapathPID reads the datapath's PID file.
func (n *Node) DatapathPID() (int, error) {
	return ReadPIDFile(filepath.Join(n.StateDir, "datapath.pid"))
}

// KeyFromHex parses a WireGuard key written as hex (`confmesh status -o json`).
func KeyFromHex(h string) (wgtypes.Key, error) {
	b, err := hex.DecodeString(h)
	if err != nil {
		return wgtypes.Key{}, err
	}
	return wgtypes.NewKey(b)
}
