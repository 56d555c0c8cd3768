package datapath

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"
)

// DefaultMemoryLimit is the datapath's soft memory limit (Go's
// runtime/debug.SetMemoryLimit) when Config.MemoryLimit is zero and
// GOMEMLIMIT is unset. wireguard-go gives every packet a 64 KiB buffer from
// unbounded pools; without a limit the heap follows GOGC to twice the
// largest burst ever in flight and stays there (over 500 MiB after a few
// GB of multi-stream TCP). With the limit the collector runs earlier
// instead, and the runtime returns what is freed, so the process stays
// under 256 MiB resident; docs/benchmarks.md has the measurements.
const DefaultMemoryLimit = 224 << 20

// DefaultIdleRelease is how often the datapath checks whether it has been
// idle (allocated next to nothing since the last check) and then hands
// every free page back to the kernel.
const DefaultIdleRelease = 5 * time.Second

// idleAllocBytes is how little the heap may grow over one check for the
// datapath to count as idle: a few keepalives and handshakes, no traffic.
const idleAllocBytes = 1 << 20

// memoryLimit picks the limit to set: the configured one; with none
// configured, GOMEMLIMIT when set (the runtime already applies it, so
// nothing to set: -1), else DefaultMemoryLimit. A negative configured
// limit means none (math.MaxInt64, the runtime's "no limit").
func memoryLimit(configured int64, env string) int64 {
	switch {
	case configured > 0:
		return configured
	case configured < 0:
		return int64(^uint64(0) >> 1)
	case env != "":
		return -1
	default:
		return DefaultMemoryLimit
	}
}

// applyMemoryLimit sets the runtime's soft memory limit and reports it.
func applyMemoryLimit(cfg Config, log *slog.Logger) {
	limit := memoryLimit(cfg.MemoryLimit, os.Getenv("GOMEMLIMIT"))
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	if cur := debug.SetMemoryLimit(-1); cur == int64(^uint64(0)>>1) {
		log.Info("no memory limit")
	} else {
		log.Info("memory limit", "bytes", cur, "mib", cur>>20)
	}
}

// releaseWhenIdle checks every interval how much the heap allocated since
// the last check; on the first quiet check after traffic it runs a
// collection and returns all free memory to the kernel (twice: sync.Pool
// keeps freed buffers for one more cycle). It returns when ctx ends.
func releaseWhenIdle(ctx context.Context, interval time.Duration, log *slog.Logger) {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	last, released := read(), true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := read()
		busy := now-last >= idleAllocBytes
		last = now
		switch {
		case busy:
			released = false
		case !released:
			debug.FreeOSMemory()
			debug.FreeOSMemory()
			released = true
			last = read()
			log.Debug("idle: returned free memory to the kernel")
		}
	}
}

// ParseSize reads a byte count: a plain number of bytes or one with a
// KiB, MiB or GiB suffix ("160MiB"); "0" or "off" mean no limit (-1).
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "off" || s == "0" {
		return -1, nil
	}
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB or GiB, or 0/off", s)
	}
	return n * mult, nil
}
