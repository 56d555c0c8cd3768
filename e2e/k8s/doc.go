// Package k8s is the real-cluster e2e: `make k8s-e2e` starts a Kubernetes
// control plane and three nodes (kubelet + containerd + runc, each node in
// its own network and mount namespace on one underlay bridge), installs
// confmesh with `kubectl apply -k manifests/overlays/sim`, and checks
// pod-to-pod traffic through the tunnels, identities from service
// accounts, a rogue node, a rollout and the uninstall (docs/install.md).
package k8s
