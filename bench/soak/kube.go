//go:build linux

package soak

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/confmesh/confmesh/internal/kubetest"
	"github.com/confmesh/confmesh/netlab"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// kubeNamespace is where the replicas keep their Secret and Lease (as
// manifests/base installs them).
const kubeNamespace = "confmesh-system"

// failoverLimit bounds how long every agent may take to move to the
// surviving replica (a loaded 2-core machine).
const failoverLimit = 45 * time.Second

// kubeSetup is ModeKubernetes's netlab ControlPlaneSetup: a real etcd +
// kube-apiserver in a namespace of the lab's own on the underlay
// (netlab.SharedServiceIP:6443), manifests/base's CRDs and RBAC installed,
// and the replicas' flags for the Kubernetes store: they authenticate as
// the control plane's service account, with exactly the rights rbac.yaml
// grants it. The API server is l.api, stopped by Run.
func (l *lab) kubeSetup(c *netlab.Cluster) ([]string, error) {
	start := time.Now()
	ns := c.Prefix + "-api"
	if err := c.AttachNS(ns, "api", netlab.SharedServiceIP); err != nil {
		return nil, fmt.Errorf("API server namespace: %w", err)
	}
	cpUser := kubetest.ServiceAccountUser(kubeNamespace, "confmesh-controlplane")
	dir := filepath.Join(c.Dir, "apiserver")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	api, err := kubetest.Start(kubetest.Options{Users: []kubetest.User{cpUser}, BindAddress: netlab.SharedServiceIP.String(),
		Port: 6443, NetNS: ns, Dir: dir, ToolsDir: l.cfg.K8sTools})
	if err != nil {
		return nil, fmt.Errorf("etcd + kube-apiserver: %w", err)
	}
	l.api = api
	admin, err := kubernetes.NewForConfig(api.Config(api.Admin))
	if err != nil {
		return nil, err
	}
	if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeNamespace}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	base := filepath.Join(l.cfg.RepoRoot, "manifests", "base")
	if _, err := kubetest.ApplyRBACFile(admin, filepath.Join(base, "rbac.yaml"), kubeNamespace); err != nil {
		return nil, err
	}
	if _, err := kubetest.InstallCRDsFile(api.Config(api.Admin), filepath.Join(base, "crds.yaml")); err != nil {
		return nil, err
	}
	kc := filepath.Join(c.Dir, "controlplane.kubeconfig")
	if err := api.WriteKubeconfig(kc, cpUser); err != nil {
		return nil, err
	}
	l.cfg.Logf("etcd + kube-apiserver at %s, CRDs and RBAC of %s installed, in %s", api.URL, base, time.Since(start).Round(time.Millisecond))
	return []string{"--store", "kubernetes", "--kubeconfig", kc, "--store-namespace", kubeNamespace}, nil
}

// stopAPI stops the API server and etcd (by PID) if they run.
func (l *lab) stopAPI() {
	if l.api != nil {
		l.api.Stop()
		l.api = nil
	}
}

// failover SIGKILLs the replica most stable agents use, waits until every
// agent uses the other one (those that were on the killed one with one
// more failover counted), starts the killed replica again and waits for
// the full mesh.
func (l *lab) failover() (string, error) {
	cps := l.c.ControlPlanes()
	if len(cps) < 2 {
		return "", errors.New("a failover needs two control-plane replicas")
	}
	addrs := make([]string, len(cps))
	for i, cp := range cps {
		addrs[i] = cp.Addr
	}
	uses := map[string]string{}
	before := map[string]uint64{}
	for _, n := range l.active() {
		st, err := n.Status()
		if err != nil {
			return "", fmt.Errorf("%s status: %w", n.Name, err)
		}
		before[n.Name] = st.ControlPlaneFailovers
		if l.isStable(n) {
			uses[n.Name] = st.ControlPlane
		}
	}
	i, err := FailoverVictim(addrs, uses)
	if err != nil {
		return "", err
	}
	victim, survivor := cps[i], cps[(i+1)%len(cps)]
	killed := time.Now()
	if err := victim.Kill(); err != nil {
		return victim.Name, err
	}
	err = netlab.Eventually(failoverLimit, 100*time.Millisecond, func() error {
		for _, n := range l.active() {
			st, err := n.Status()
			if err != nil {
				return err
			}
			if st.ControlPlane != survivor.Addr {
				return fmt.Errorf("%s uses %q after %d failovers, want %s", n.Name, st.ControlPlane, st.ControlPlaneFailovers, survivor.Addr)
			}
			if st.ControlPlaneFailovers <= before[n.Name] && l.isStable(n) && uses[n.Name] == victim.Addr {
				return fmt.Errorf("%s: failovers still %d", n.Name, st.ControlPlaneFailovers)
			}
		}
		return nil
	})
	if err != nil {
		return victim.Name, fmt.Errorf("agents not on %s %s after SIGKILL of %s: %w", survivor.Name, failoverLimit, victim.Name, err)
	}
	moved := time.Since(killed)
	if err := victim.Start(); err != nil {
		return victim.Name, fmt.Errorf("restart %s: %w", victim.Name, err)
	}
	back := time.Since(killed)
	var on []string
	for name, addr := range uses {
		if addr == victim.Addr {
			on = append(on, name)
		}
	}
	return fmt.Sprintf("%s SIGKILLed (used by %d of %d stable agents), every agent on %s after %s, %s serving again after %s",
		victim.Name, len(on), len(uses), survivor.Name, moved.Round(time.Millisecond), victim.Name, back.Round(time.Millisecond)), l.waitMesh()
}

// isStable reports whether n is one of the stable nodes.
func (l *lab) isStable(n *netlab.Node) bool {
	for _, s := range l.stable {
		if s == n {
			return true
		}
	}
	return false
}
