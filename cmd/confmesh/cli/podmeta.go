package cli

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/confmesh/confmesh/agent/podmeta"
	"github.com/confmesh/confmesh/agent/podmeta/kube"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// podMetadataKubernetes is the --pod-metadata value that asks the API server.
const podMetadataKubernetes = "kubernetes"

// openPodMetadata returns the agent's pod-metadata source: the Kubernetes
// API (an informer on this node's pods, stopped with ctx) or a root-only
// file.
func openPodMetadata(ctx context.Context, f agentFlags, log *slog.Logger) (podmeta.Source, error) {
	if f.podMetadata != podMetadataKubernetes {
		if f.kubeconfig != "" {
			return nil, usageErrorf("--kubeconfig is only read with --pod-metadata=%s", podMetadataKubernetes)
		}
		if !filepath.IsAbs(f.podMetadata) {
			return nil, usageErrorf("--pod-metadata %q: want %q or an absolute file path", f.podMetadata, podMetadataKubernetes)
		}
		return podmeta.File{Path: f.podMetadata}, nil
	}
	// Empty kubeconfig: the in-cluster service account (its token, and
	// KUBERNETES_SERVICE_HOST/PORT, which the manifests point at the API
	// server itself: no kube-proxy or cluster DNS is needed).
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, failf("agent: --pod-metadata=%s: %v", podMetadataKubernetes, err)
	}
	cfg.UserAgent = "confmesh-agent/" + f.name
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, failf("agent: --pod-metadata=%s: %v", podMetadataKubernetes, err)
	}
	src, err := kube.Start(ctx, kube.Config{Client: client, NodeName: f.name, Logger: log})
	if err != nil {
		return nil, failf("agent: %v", err)
	}
	log.Info("pod metadata from the Kubernetes API", "server", cfg.Host, "node", f.name)
	return src, nil
}
