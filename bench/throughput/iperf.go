//go:build linux

package throughput

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Iperf3 drives the load with iperf3 (both ends, in the path's namespaces,
// through `ip netns exec`): a one-off server, then a client with -P
// streams for the duration in whole seconds (at least one).
type Iperf3 struct {
	Path    string // the iperf3 binary
	Version string
}

// FindIperf3 returns the iperf3 on PATH, or an error when there is none.
func FindIperf3() (*Iperf3, error) {
	p, err := exec.LookPath("iperf3")
	if err != nil {
		return nil, err
	}
	out, _ := exec.Command(p, "--version").Output()
	v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return &Iperf3{Path: p, Version: strings.TrimSpace(v)}, nil
}

// Name implements Generator.
func (g *Iperf3) Name() string { return g.Version }

// iperfSeconds rounds d to whole seconds for iperf3 -t (at least 1).
func iperfSeconds(d time.Duration) int { return max(1, int(math.Round(d.Seconds()))) }

// iperfResult is the part of iperf3 -J's report we read.
type iperfResult struct {
	End struct {
		SumReceived struct {
			Seconds float64 `json:"seconds"`
			Bytes   float64 `json:"bytes"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// Streams implements Generator.
func (g *Iperf3) Streams(ctx context.Context, p Path, port, streams int, d time.Duration) (Load, error) {
	secs := iperfSeconds(d)
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+30*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, "ip", "netns", "exec", p.ToNS, g.Path, "-s", "-1", "-B", p.To.String(), "-p", strconv.Itoa(port))
	if err := srv.Start(); err != nil {
		return Load{}, fmt.Errorf("%s: iperf3 server: %w", p.Variant, err)
	}
	defer func() {
		_ = srv.Process.Kill()
		_ = srv.Wait()
	}()
	// The one-off server takes a moment to listen: retry a refused client.
	var out []byte
	var cpu0, cpu1 float64
	for attempt := 0; ; attempt++ {
		var err error
		if cpu0, err = CPUSum(p.PIDs); err != nil {
			return Load{}, fmt.Errorf("%s: tunnel process CPU: %w", p.Variant, err)
		}
		cli := exec.CommandContext(ctx, "ip", "netns", "exec", p.From, g.Path, "-c", p.To.String(), "-p", strconv.Itoa(port),
			"-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-J", "--connect-timeout", "5000")
		out, err = cli.Output()
		c1, cerr := CPUSum(p.PIDs)
		if cerr != nil {
			return Load{}, fmt.Errorf("%s: tunnel process CPU: %w", p.Variant, cerr)
		}
		cpu1 = c1
		var r iperfResult
		_ = json.Unmarshal(out, &r)
		// iperf3 -J may exit 0 with only an error in its report.
		if err == nil && r.Error == "" {
			break
		}
		if attempt < 30 && strings.Contains(r.Error, "unable to connect") && ctx.Err() == nil {
			if serr := sleepCtx(ctx, 100*time.Millisecond); serr != nil {
				return Load{}, serr
			}
			continue
		}
		if r.Error != "" {
			err = errors.New(r.Error)
		}
		return Load{}, fmt.Errorf("%s: iperf3 client: %w", p.Variant, err)
	}
	var r iperfResult
	if err := json.Unmarshal(out, &r); err != nil {
		return Load{}, fmt.Errorf("%s: iperf3 -J output: %w", p.Variant, err)
	}
	s := r.End.SumReceived
	if s.Seconds <= 0 || s.Bytes <= 0 {
		return Load{}, fmt.Errorf("%s: iperf3 received nothing (%s)", p.Variant, strings.TrimSpace(r.Error))
	}
	return Load{Bytes: int64(s.Bytes), Elapsed: time.Duration(s.Seconds * float64(time.Second)), CPU: cpu1 - cpu0}, nil
}
