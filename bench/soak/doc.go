// Package soak is `confmesh bench soak`: a long run of the namespace lab
// (package netlab) under steady pod-to-pod probe traffic while a schedule of
// events runs (pod churn, node joins and leaves, control-plane kills or,
// with two replicas on a real kube-apiserver, failovers, policy reloads,
// WireGuard key rotations). It reports the probes lost per event type, the
// components' memory and goroutines at the start and the end, and the
// errors they logged.
//
// The pure parts (the schedule, attributing lost probes to event windows,
// the growth bounds, the log scan, the report) are testable without root;
// the lab driver (lab.go) needs root and Linux.
package soak
