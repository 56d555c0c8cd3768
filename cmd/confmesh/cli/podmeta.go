package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/confmesh/confmesh/agent"
	"github.com/confmesh/confmesh/agent/podmeta"
	"github.com/confmesh/confmesh/agent/podmeta/kube"
	"github.com/confmesh/confmesh/agent/uninstall"
	"github.com/confmesh/confmesh/internal/netfilter"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// podMetadataKubernetes is the --pod-metadata value that asks the API server.
const podMetadataKubernetes = "kubernetes"

// clusterSources are what the agent learns from its environment.
type clusterSources struct {
	source    podmeta.Source
	uninstall *uninstall.Watch // nil: never uninstall on stop
}

// openPodMetadata returns the agent's pod-metadata source (the Kubernetes
// API: an informer on this node's pods, stopped with ctx; or a root-only
// file) and, in a cluster with --uninstall-daemonset, the watch on the
// agent's DaemonSet.
func openPodMetadata(ctx context.Context, f agentFlags, log *slog.Logger) (clusterSources, error) {
	if f.podMetadata != podMetadataKubernetes {
		if f.kubeconfig != "" || f.uninstallDaemonSet != "" {
			return clusterSources{}, usageErrorf("--kubeconfig and --uninstall-daemonset are only read with --pod-metadata=%s", podMetadataKubernetes)
		}
		if !filepath.IsAbs(f.podMetadata) {
			return clusterSources{}, usageErrorf("--pod-metadata %q: want %q or an absolute file path", f.podMetadata, podMetadataKubernetes)
		}
		return clusterSources{source: podmeta.File{Path: f.podMetadata}}, nil
	}
	var dsNamespace, dsName string
	if f.uninstallDaemonSet != "" {
		var ok bool
		dsNamespace, dsName, ok = strings.Cut(f.uninstallDaemonSet, "/")
		if !ok || dsNamespace == "" || dsName == "" {
			return clusterSources{}, usageErrorf("--uninstall-daemonset %q: want NAMESPACE/NAME", f.uninstallDaemonSet)
		}
	}
	// Empty kubeconfig: the in-cluster service account (its token, and
	// KUBERNETES_SERVICE_HOST/PORT, which the manifests point at the API
	// server itself: no kube-proxy or cluster DNS is needed).
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return clusterSources{}, failf("agent: --pod-metadata=%s: %v", podMetadataKubernetes, err)
	}
	cfg.UserAgent = "confmesh-agent/" + f.name
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return clusterSources{}, failf("agent: --pod-metadata=%s: %v", podMetadataKubernetes, err)
	}
	var cs clusterSources
	if cs.source, err = kube.Start(ctx, kube.Config{Client: client, NodeName: f.name, Logger: log}); err != nil {
		return clusterSources{}, failf("agent: %v", err)
	}
	if dsName != "" {
		if cs.uninstall, err = uninstall.Start(ctx, client, dsNamespace, dsName); err != nil {
			return clusterSources{}, failf("agent: %v", err)
		}
	}
	log.Info("pod metadata from the Kubernetes API", "server", cfg.Host, "node", f.name, "uninstallWith", f.uninstallDaemonSet)
	return cs, nil
}

// uninstallNode removes everything the agent leaves in place across
// restarts: strict rules, fail-closed routes, the WireGuard device (and a
// datapath the agent started), the CNI plugin and conflist, the state
// directory with the node's keys.
func uninstallNode(f agentFlags) error {
	var errs []error
	if err := netfilter.Remove(agent.DefaultTable); err != nil {
		errs = append(errs, fmt.Errorf("strict rules: %w", err))
	}
	if err := agent.RemoveFailClosedRoutes(); err != nil {
		errs = append(errs, fmt.Errorf("fail-closed routes: %w", err))
	}
	if err := agent.RemoveDevice(f.device, filepath.Join(f.stateDir, "datapath.pid")); err != nil {
		errs = append(errs, fmt.Errorf("device: %w", err))
	}
	if err := (agent.CNIInstall{BinDir: f.cniBinDir, ConfDir: f.cniConfDir}).Uninstall(); err != nil {
		errs = append(errs, fmt.Errorf("CNI plugin: %w", err))
	}
	// The state directory is usually a mount point (a hostPath): empty it.
	entries, err := os.ReadDir(f.stateDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("state: %w", err))
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(f.stateDir, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("state: %w", err))
		}
	}
	return errors.Join(errs...)
}
