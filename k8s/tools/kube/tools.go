//go:build tools

// Package kube pins the Kubernetes commands the real-cluster e2e runs. It is
// a module of its own so that the project's `go test ./...` never compiles
// Kubernetes; build.sh builds the commands listed here.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
