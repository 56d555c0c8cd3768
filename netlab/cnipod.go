//go:build linux

package netlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// PodSpec is what the runtime would tell the CNI plugin about a pod, in
// CNI_ARGS. Empty fields get defaults: namespace "default", name pod-<k>,
// a random UID.
type PodSpec struct {
	Namespace, Name, UID string
	// ServiceAccount, if set, is written into the node's pod-metadata file
	// (SetPodMetadata) before the plugin runs, so the pod has a workload
	// identity; empty: the node's metadata does not know the pod.
	ServiceAccount string
}

// CNIError is the error result of a failed plugin command (exit status 1,
// a CNI error on stdout).
type CNIError struct {
	Command string
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details"`
}

func (e *CNIError) Error() string {
	s := fmt.Sprintf("confmesh-cni %s: CNI error %d: %s", e.Command, e.Code, e.Msg)
	if e.Details != "" {
		s += " (" + e.Details + ")"
	}
	return s
}

// cniConfList is the network configuration the lab hands the plugin: what
// the agent would install, pointed at the node's agent socket.
func (n *Node) cniConfList() (*libcni.NetworkConfigList, error) {
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "confmesh",
		"plugins": []any{map[string]any{"type": "confmesh-cni", "agentSocket": n.Socket}}})
	return libcni.NetworkConfFromBytes(conf)
}

// runCNI runs the plugin's command (ADD or DEL) for the pod's attachment
// eth0 through libcni, as a container runtime does: the plugin is found by
// its type in CNI_PATH (the directory of Config.CNIBin) and is handed
// CNI_ARGS with K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID. It runs in
// the node's network namespace (it creates the host end of the veth there):
// libcni execs it from a thread switched into that namespace. ADD returns
// the plugin's result; a CNI error result becomes a *CNIError.
func (c *Cluster) runCNI(n *Node, command string, p *Pod) (*current.Result, error) {
	return c.runCNIIn(n.NS, n, command, p)
}

// runCNIIn is runCNI with the plugin exec'd in the network namespace
// netns, which need not be the node's.
func (c *Cluster) runCNIIn(netns string, n *Node, command string, p *Pod) (*current.Result, error) {
	if c.CNIBin == "" {
		return nil, errors.New("netlab: the cluster has no CNI plugin (Config.CNIBin)")
	}
	list, err := n.cniConfList()
	if err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(c.CNIBin)}, filepath.Join(n.StateDir, "cni-cache"), nil)
	rt := &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: filepath.Join(NetnsDir, p.NS), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.PodName}, {"K8S_POD_UID", p.UID}}}
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	var res *current.Result
	err = InNS(netns, func() error {
		if command == "DEL" {
			return cni.DelNetworkList(ctx, list, rt)
		}
		out, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(out)
		return err
	})
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return nil, &CNIError{Command: command, Code: te.Code, Msg: te.Msg, Details: te.Details}
		}
		return nil, fmt.Errorf("confmesh-cni %s for %s on %s: %v", command, p.Name, n.Name, err)
	}
	return res, nil
}

// AddCNIPod makes the next pod on node n with the real CNI plugin: a fresh
// network namespace, then `confmesh-cni` ADD run in the node's namespace
// against the node's agent socket; the pod IP is the one in the plugin's
// result (the agent allocates it). A refused ADD returns a *CNIError (and
// the pod's empty namespace stays until Teardown).
func (c *Cluster) AddCNIPod(n *Node, spec PodSpec) (*Pod, error) {
	return c.AddCNIPodFrom(n.NS, n, spec)
}

// AddCNIPodFrom is AddCNIPod with the plugin exec'd in the network
// namespace from (AddNamespace) instead of the node's, against node n's
// agent socket: the plugin run from the wrong place.
func (c *Cluster) AddCNIPodFrom(from string, n *Node, spec PodSpec) (*Pod, error) {
	n.mu.Lock()
	n.pods++
	k := n.pods
	n.mu.Unlock()
	p := &Pod{Name: fmt.Sprintf("%s/pod-%d", n.Name, k), NS: fmt.Sprintf("%sp%d", n.NS, k), Node: n, CNI: true,
		Namespace: spec.Namespace, PodName: spec.Name, UID: spec.UID}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	if p.PodName == "" {
		p.PodName = fmt.Sprintf("%s-pod-%d", n.Name, k)
	}
	if p.UID == "" {
		p.UID = randomUID()
	}
	p.ContainerID = p.NS // unique per run and cluster, like a sandbox ID
	c.trackNS(p.NS)
	if err := AddNetns(p.NS); err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if spec.ServiceAccount != "" {
		if err := n.SetPodMetadata(p.Namespace, p.PodName, spec.ServiceAccount); err != nil {
			return nil, fmt.Errorf("pod %s: %w", p.Name, err)
		}
		p.ServiceAccount = spec.ServiceAccount
	}
	res, err := c.runCNIIn(from, n, "ADD", p)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	if len(res.IPs) == 0 {
		c.deleteCNIPod(p) // do not leave an attachment nobody knows of
		return nil, fmt.Errorf("pod %s: confmesh-cni ADD result has no address", p.Name)
	}
	addr, ok := netip.AddrFromSlice(res.IPs[0].Address.IP)
	if !ok {
		c.deleteCNIPod(p)
		return nil, fmt.Errorf("pod %s: confmesh-cni ADD result address %v", p.Name, res.IPs[0].Address)
	}
	p.IP = addr.Unmap()
	for _, i := range res.Interfaces {
		if i.Sandbox == "" {
			p.HostIf = i.Name
		}
	}
	c.mu.Lock()
	c.pods = append(c.pods, p)
	c.mu.Unlock()
	return p, nil
}

// DeletePod runs the plugin's DEL for a pod it made (idempotent; a
// hand-made pod is left alone). The namespace stays until Teardown.
func (c *Cluster) DeletePod(p *Pod) error {
	if !p.CNI {
		return nil
	}
	c.mu.Lock()
	done := p.deleted
	p.deleted = true
	c.mu.Unlock()
	if done {
		return nil
	}
	return c.deleteCNIPod(p)
}

// RemovePod runs the plugin's DEL for a pod it made, deletes the pod's
// network namespace and forgets the pod (pod churn: a long run would
// otherwise keep every namespace it ever made until Teardown).
func (c *Cluster) RemovePod(p *Pod) error {
	if err := c.DeletePod(p); err != nil {
		return err
	}
	if err := DelNetns(p.NS); err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	c.mu.Lock()
	c.pods = slices.DeleteFunc(c.pods, func(q *Pod) bool { return q == p })
	c.namespaces = slices.DeleteFunc(c.namespaces, func(ns string) bool { return ns == p.NS })
	c.mu.Unlock()
	return nil
}

func (c *Cluster) deleteCNIPod(p *Pod) error {
	if _, err := c.runCNI(p.Node, "DEL", p); err != nil {
		return fmt.Errorf("pod %s: %w", p.Name, err)
	}
	return nil
}

func randomUID() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
