package datapath

import (
	"log/slog"
	"os"
	"runtime"
)

// DefaultProcs is the datapath's GOMAXPROCS when Config.Procs is zero and
// GOMAXPROCS is unset: half of what Go would pick (the CPUs the process may
// use, or its cgroup's CPU limit), at least 1. The datapath shares the
// node's CPUs with the workloads whose packets it carries; with a P per CPU
// wireguard-go's goroutines (reader, crypto workers, sequential sender and
// receiver) hand packets to each other across threads, and on 2 CPUs the
// scheduler's wake-ups and spinning cost about a sixth of the datapath's CPU
// per GB for no gain in throughput (docs/benchmarks.md, tuning log).
func DefaultProcs(goDefault int) int {
	return max(1, goDefault/2)
}

// procs picks the GOMAXPROCS to set: the configured one; with none
// configured, GOMAXPROCS when set (the runtime already applies it: -1),
// else DefaultProcs. A negative configured value keeps Go's default (-1).
func procs(configured int, env string, goDefault int) int {
	switch {
	case configured > 0:
		return configured
	case configured < 0, env != "":
		return -1
	default:
		return DefaultProcs(goDefault)
	}
}

// applyProcs sets GOMAXPROCS and reports it.
func applyProcs(cfg Config, log *slog.Logger) {
	if n := procs(cfg.Procs, os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)); n > 0 {
		runtime.GOMAXPROCS(n)
	}
	log.Info("GOMAXPROCS", "procs", runtime.GOMAXPROCS(0), "cpus", runtime.NumCPU())
}
