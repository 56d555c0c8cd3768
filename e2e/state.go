//go:build linux

package e2e

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"syscall"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/internal/netfilter"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Status is `confmesh status -o json`.
type Status struct {
	Node                string `json:"node"`
	Attested            bool   `json:"attested"`
	Ready               bool   `json:"ready"`
	ReadyReason         string `json:"readyReason"`
	TEE                 string `json:"tee"`
	Measurement         string `json:"measurement"`
	SPIFFEID            string `json:"spiffeID"`
	Datapath            string `json:"datapath"`
	Device              string `json:"device"`
	StrictMode          bool   `json:"strictMode"`
	PodCIDR             string `json:"podCIDR"`
	WireGuardKey        string `json:"wireguardKey"`
	TrustsSimulatedRoot bool   `json:"trustsSimulatedRoot"`
	Peers               []Peer `json:"peers"`
}

// Peer is one entry of `confmesh peers -o json`.
type Peer struct {
	Name         string   `json:"name"`
	Endpoint     string   `json:"endpoint"`
	State        string   `json:"state"` // verified or refused
	Reason       string   `json:"reason"`
	PodCIDRs     []string `json:"podCIDRs"`
	WireGuardKey string   `json:"wireguardKey"`
}

// NodeRecord is one entry of `confmesh nodes -o json`.
type NodeRecord struct {
	Name               string `json:"name"`
	State              string `json:"state"`
	Reason             string `json:"reason"`
	Endpoint           string `json:"endpoint"`
	PodCIDR            string `json:"podCIDR"`
	WireGuardPublicKey string `json:"wireguardPublicKey"`
}

// cli runs the confmesh binary and decodes its JSON output into v.
func (c *Cluster) cli(v any, args ...string) error {
	out, err := run(c.Bin, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("confmesh %v: decode %q: %w", args, out, err)
	}
	return nil
}

// Status runs `confmesh status -o json` against the node's agent socket.
func (n *Node) Status() (*Status, error) {
	var st Status
	if err := n.c.cli(&st, "status", "--socket", n.Socket, "-o", "json"); err != nil {
		return nil, err
	}
	return &st, nil
}

// Peers runs `confmesh peers -o json` against the node's agent socket.
func (n *Node) Peers() ([]Peer, error) {
	var ps []Peer
	if err := n.c.cli(&ps, "peers", "--socket", n.Socket, "-o", "json"); err != nil {
		return nil, err
	}
	return ps, nil
}

// ListNodes runs `confmesh nodes -o json` through the control plane's
// admin socket (a unix socket: reachable from any network namespace).
func (c *Cluster) ListNodes() ([]NodeRecord, error) {
	var ns []NodeRecord
	err := c.cli(&ns, "nodes", "--admin-socket", c.CP.AdminSocket, "--admin-dir", c.CP.AdminDir, "-o", "json")
	return ns, err
}

// Revoke runs `confmesh nodes revoke NAME`.
func (c *Cluster) Revoke(name string) (string, error) {
	return run(c.Bin, "nodes", "revoke", name, "--admin-socket", c.CP.AdminSocket, "--admin-dir", c.CP.AdminDir)
}

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
	return readPIDFile(n.StateDir + "/datapath.pid")
}

func keyFromHex(h string) (wgtypes.Key, error) {
	b, err := hex.DecodeString(h)
	if err != nil {
		return wgtypes.Key{}, err
	}
	return wgtypes.NewKey(b)
}

// killPID SIGKILLs a process the harness owns.
func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
