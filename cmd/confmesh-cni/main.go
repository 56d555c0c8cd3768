// Command confmesh-cni is the confmesh CNI plugin, exec'd by the container
// runtime for every pod. All logic is in package cni; the agent does the
// rest over its unix socket.

// The runtime execs the plugin for every pod, many at once: skip reading
// the cgroup hierarchy (a walk of /proc/self/mountinfo, which grows with
// every pod's netns mount) to size GOMAXPROCS, and its periodic re-check.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"runtime"

	"github.com/confmesh/confmesh/cni"
)

func init() {
	// Namespace switches (setns) apply to one OS thread: keep main on the
	// thread it started on.
	runtime.LockOSThread()
	// The plugin's work is sequential (its goroutines hand off to each
	// other: gRPC's reader, namespace switches). With a P per core the
	// idle ones spin looking for work at every hand-off, on a node where
	// many plugin processes compete for the cores: one P cuts the CPU per
	// ADD and DEL by about 15% (`confmesh bench cni`, docs/benchmarks.md).
	runtime.GOMAXPROCS(1)
}

func main() {
	cni.Main(&cni.Plugin{})
}
