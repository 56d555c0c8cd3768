//go:build linux

package netlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// PodSpec is what the runtime would tell the CNI plugin about a pod, in
// CNI_ARGS. Empty fields get defaults: namespace "default", name pod-<k>,
// a random UID.
type PodSpec struct {
	Namespace, Name, UID string
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

// cniConf is the network configuration the lab hands the plugin: what the
// agent would install, pointed at the node's agent socket.
func (n *Node) cniConf() []byte {
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "confmesh", "type": "confmesh-cni", "agentSocket": n.Socket})
	return conf
}

// runCNI execs the plugin in the node's network namespace (it creates the
// host end of the veth there) with command for the pod's attachment eth0,
// and returns its stdout. A CNI error result becomes a *CNIError.
func (c *Cluster) runCNI(n *Node, command string, p *Pod) ([]byte, error) {
	return c.runCNIIn(n.NS, n, command, p)
}

// runCNIIn is runCNI with the plugin exec'd in the network namespace
// netns, which need not be the node's.
func (c *Cluster) runCNIIn(netns string, n *Node, command string, p *Pod) ([]byte, error) {
	if c.CNIBin == "" {
		return nil, errors.New("netlab: the cluster has no CNI plugin (Config.CNIBin)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", netns, c.CNIBin)
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command,
		"CNI_CONTAINERID="+p.ContainerID,
		"CNI_NETNS="+filepath.Join(NetnsDir, p.NS),
		"CNI_IFNAME=eth0",
		"CNI_PATH="+filepath.Dir(c.CNIBin),
		fmt.Sprintf("CNI_ARGS=K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", p.Namespace, p.PodName, p.UID),
	)
	cmd.Stdin = bytes.NewReader(n.cniConf())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		var ce CNIError
		if json.Unmarshal(stdout.Bytes(), &ce) == nil && ce.Code != 0 {
			ce.Command = command
			return nil, &ce
		}
		return nil, fmt.Errorf("confmesh-cni %s for %s on %s: %v: stdout %q stderr %q", command, p.Name, n.Name, err,
			strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
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
	out, err := c.runCNIIn(from, n, "ADD", p)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", p.Name, err)
	}
	var res struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.IPs) == 0 {
		c.deleteCNIPod(p) // do not leave an attachment nobody knows of
		return nil, fmt.Errorf("pod %s: confmesh-cni ADD result %q: no address (%v)", p.Name, out, err)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil {
		c.deleteCNIPod(p)
		return nil, fmt.Errorf("pod %s: confmesh-cni ADD result address %q: %v", p.Name, res.IPs[0].Address, err)
	}
	p.IP = pfx.Addr()
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
