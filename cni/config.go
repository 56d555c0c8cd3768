// Package cni is the confmesh CNI plugin: ADD, DEL, CHECK, STATUS, GC and
// VERSION for spec versions 0.3.0 to 1.1.0. It is deliberately thin: the
// node agent decides whether pods may be networked (the node is attested,
// strict rules are in place), owns IP address management and keeps the pod
// records; the plugin asks it over the agent's unix socket, builds the
// point-to-point veth and returns a typed result. cmd/confmesh-cni is its
// main, and it must link nothing heavier than gRPC and netlink.
package cni

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/confmesh/confmesh/internal/hostveth"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Defaults for configuration fields left out.
const (
	DefaultAgentSocket  = "/run/confmesh/agent.sock"
	DefaultAgentTimeout = 10 * time.Second
	DefaultGCGrace      = time.Minute
	// PluginType is the binary name runtimes look up in the CNI bin dir.
	PluginType = "confmesh-cni"
	// HostVethPrefix starts every host-side veth name.
	HostVethPrefix = hostveth.Prefix
)

// SupportedVersions are the CNI spec versions the plugin speaks. Results
// are printed in the version the configuration asks for.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// VersionInfo is SupportedVersions for skel.
var VersionInfo = version.PluginSupports(SupportedVersions...)

// NetConf is the plugin's configuration: the standard fields plus
//
//	agentSocket   path of the agent's local API socket (default /run/confmesh/agent.sock)
//	agentTimeout  how long one command may wait for the agent, as a Go
//	              duration ("10s" by default)
//	gcGracePeriod GC leaves reservations younger than this alone, since
//	              their ADD may still be running ("1m" by default)
//
// The agent writes both into the conflist it installs.
type NetConf struct {
	types.PluginConf
	AgentSocket   string `json:"agentSocket,omitempty"`
	AgentTimeout  string `json:"agentTimeout,omitempty"`
	GCGracePeriod string `json:"gcGracePeriod,omitempty"`

	// OldGCAttachments is cni.dev/attachments, the key the spec first
	// named for GC; PluginConf.ValidAttachments is cni.dev/valid-attachments.
	OldGCAttachments []types.GCAttachment `json:"cni.dev/attachments,omitempty"`

	timeout time.Duration
	gcGrace time.Duration
}

// MaxConfigSize bounds the network configuration read from stdin, checked
// before it is decoded; a confmesh configuration with a prevResult is a
// few KiB.
const MaxConfigSize = 1 << 20

// ParseConfig decodes and validates the configuration read from stdin.
// Errors are CNI errors: 6 when the JSON does not decode, 7 when a field
// holds a value the plugin cannot use, 1 for an unsupported cniVersion.
func ParseConfig(data []byte) (*NetConf, error) {
	if len(data) > MaxConfigSize {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("network configuration is %d bytes, limit %d", len(data), MaxConfigSize), "")
	}
	var c NetConf
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("network configuration is not valid JSON: %v", err), "")
	}
	if c.Name == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, `network configuration: field "name" is missing`, "")
	}
	if c.CNIVersion == "" {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, `network configuration: field "cniVersion" is missing`,
			fmt.Sprintf("confmesh-cni supports %s", strings.Join(SupportedVersions, ", ")))
	}
	if !supported(c.CNIVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cniVersion %q is not supported", c.CNIVersion),
			fmt.Sprintf("confmesh-cni supports %s", strings.Join(SupportedVersions, ", ")))
	}
	if c.AgentSocket == "" {
		c.AgentSocket = DefaultAgentSocket
	}
	if !filepath.IsAbs(c.AgentSocket) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("agentSocket %q: want an absolute path", c.AgentSocket), "")
	}
	c.timeout = DefaultAgentTimeout
	if c.AgentTimeout != "" {
		d, err := time.ParseDuration(c.AgentTimeout)
		if err != nil || d <= 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("agentTimeout %q: want a positive duration such as \"10s\"", c.AgentTimeout), "")
		}
		c.timeout = d
	}
	c.gcGrace = DefaultGCGrace
	if c.GCGracePeriod != "" {
		d, err := time.ParseDuration(c.GCGracePeriod)
		if err != nil || d < 0 {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("gcGracePeriod %q: want a duration such as \"1m\"", c.GCGracePeriod), "")
		}
		c.gcGrace = d
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
		}
	}
	return &c, nil
}

func supported(v string) bool {
	for _, s := range SupportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// GCKeep is the set of attachments GC must keep: the union of
// cni.dev/valid-attachments and the older cni.dev/attachments.
func (c *NetConf) GCKeep() map[types.GCAttachment]bool {
	out := make(map[types.GCAttachment]bool, len(c.PluginConf.ValidAttachments)+len(c.OldGCAttachments))
	for _, a := range c.PluginConf.ValidAttachments {
		out[a] = true
	}
	for _, a := range c.OldGCAttachments {
		out[a] = true
	}
	return out
}

// PodArgs are the Kubernetes fields of CNI_ARGS that the agent records.
type PodArgs struct {
	Namespace, Name, UID string
}

// ParseArgs reads K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID from
// CNI_ARGS ("K=V;K=V"), ignoring every other key (runtimes send several).
func ParseArgs(s string) (PodArgs, error) {
	var p PodArgs
	if s == "" {
		return p, nil
	}
	for _, kv := range strings.Split(s, ";") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv), "")
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		}
	}
	return p, nil
}

// HostVethName is the host-side veth of an attachment: "cm" and 8 hex
// digits of SHA-256(containerID NUL ifname) (hostveth.Name, which the
// agent's strict mode uses to recognise the pod's interface). It is
// derived, not stored, so DEL and GC find the link even when the
// container's netns is gone.
func HostVethName(containerID, ifname string) string { return hostveth.Name(containerID, ifname) }
