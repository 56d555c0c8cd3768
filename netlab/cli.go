//go:build linux

package netlab

import (
	"encoding/json"
	"fmt"

	"github.com/confmesh/confmesh/internal/attest"
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
	SVIDExpiry          string `json:"svidExpiry"` // RFC 3339
	Datapath            string `json:"datapath"`
	Device              string `json:"device"`
	StrictMode          bool   `json:"strictMode"`
	PodCIDR             string `json:"podCIDR"`
	WireGuardKey        string `json:"wireguardKey"`
	TrustsSimulatedRoot bool   `json:"trustsSimulatedRoot"`
	// Product is the product line of the node's own TEE (e.g. Milan), from
	// the evidence it attested with, verified under its own policy.
	Product string `json:"product"`
	// State is the node's standing with the control plane: "joining",
	// "active", "revoked" or "refused"; StateReason says why.
	State       string `json:"state"`
	StateReason string `json:"stateReason"`
	// ControlPlane is the control-plane replica the agent used last,
	// ControlPlanes every replica it was given, ControlPlaneFailovers how
	// often it moved from one to another.
	ControlPlane          string   `json:"controlPlane"`
	ControlPlanes         []string `json:"controlPlanes"`
	ControlPlaneFailovers uint64   `json:"controlPlaneFailovers"`
	Peers                 []Peer   `json:"peers"`
	// Strict is what the agent found in the kernel.
	Strict StrictStatus `json:"strict"`
}

// StrictStatus is the "strict" part of `confmesh status -o json`.
type StrictStatus struct {
	Enabled       bool   `json:"enabled"`
	State         string `json:"state"` // installed, missing, altered, off
	Reason        string `json:"reason"`
	Reinstalls    uint64 `json:"reinstalls"`
	LastReinstall string `json:"lastReinstall"`
	RouteRepairs  uint64 `json:"routeRepairs"`
	DropsOut      uint64 `json:"dropsOut"`
	DropsIn       uint64 `json:"dropsIn"`
	DropsSpoof    uint64 `json:"dropsSpoof"`
	Pods          int    `json:"pods"`
}

// Peer is one entry of `confmesh peers -o json`.
type Peer struct {
	Name         string   `json:"name"`
	Endpoint     string   `json:"endpoint"`
	State        string   `json:"state"` // verified or refused
	Reason       string   `json:"reason"`
	PodCIDRs     []string `json:"podCIDRs"`
	WireGuardKey string   `json:"wireguardKey"`
	// Product and ReportedTCB (decoded for the product) come from the
	// evidence the agent verified; empty for a refused peer.
	Product     string      `json:"product"`
	ReportedTCB *attest.TCB `json:"reportedTCB"`
}

// NodeRecord is one entry of `confmesh nodes -o json`.
type NodeRecord struct {
	Name               string `json:"name"`
	State              string `json:"state"`
	Reason             string `json:"reason"`
	Endpoint           string `json:"endpoint"`
	PodCIDR            string `json:"podCIDR"`
	WireGuardPublicKey string `json:"wireguardPublicKey"`
	Since              string `json:"since"`    // revoked or (last) refused at, RFC 3339
	Refusals           int    `json:"refusals"` // refused joins recorded under this name
}

// CLI runs the cluster's confmesh binary with args (bounded) and returns
// its combined output.
func (c *Cluster) CLI(args ...string) (string, error) { return Exec(c.Bin, args...) }

// cliJSON runs the confmesh binary and decodes its JSON output into v.
func (c *Cluster) cliJSON(v any, args ...string) error {
	out, err := c.CLI(args...)
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
	if err := n.c.cliJSON(&st, "status", "--socket", n.Socket, "-o", "json"); err != nil {
		return nil, err
	}
	return &st, nil
}

// Peers runs `confmesh peers -o json` against the node's agent socket.
func (n *Node) Peers() ([]Peer, error) {
	var ps []Peer
	if err := n.c.cliJSON(&ps, "peers", "--socket", n.Socket, "-o", "json"); err != nil {
		return nil, err
	}
	return ps, nil
}

// AdminArgs are the flags that point `confmesh nodes` at the control plane's
// admin socket and credential.
func (c *Cluster) AdminArgs() []string {
	return []string{"--admin-socket", c.CP.AdminSocket, "--admin-dir", c.CP.AdminDir}
}

// ListNodes runs `confmesh nodes -o json` through the control plane's
// admin socket (a unix socket: reachable from any network namespace).
func (c *Cluster) ListNodes() ([]NodeRecord, error) {
	var ns []NodeRecord
	err := c.cliJSON(&ns, append(append([]string{"nodes"}, c.AdminArgs()...), "-o", "json")...)
	return ns, err
}

// ListAllNodes runs `confmesh nodes --all -o json`: also revoked nodes and
// recently refused joins.
func (c *Cluster) ListAllNodes() ([]NodeRecord, error) {
	var ns []NodeRecord
	err := c.cliJSON(&ns, append(append([]string{"nodes", "--all"}, c.AdminArgs()...), "-o", "json")...)
	return ns, err
}

// Revoke runs `confmesh nodes revoke NAME`.
func (c *Cluster) Revoke(name string) (string, error) {
	return c.CLI(append([]string{"nodes", "revoke", name}, c.AdminArgs()...)...)
}
