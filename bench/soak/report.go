package soak

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// EventRecord is one event as it happened.
type EventRecord struct {
	Kind   Kind      `json:"kind"`
	Start  time.Time `json:"start"`
	TookMs int64     `json:"took_ms"`
	Detail string    `json:"detail,omitempty"`
	Error  string    `json:"error,omitempty"`
}

// Churn is the pod churn's tally.
type Churn struct {
	Adds        int      `json:"adds"`
	Dels        int      `json:"dels"`
	Failures    int      `json:"failures"`
	AddP50Ms    float64  `json:"add_p50_ms"`
	AddP99Ms    float64  `json:"add_p99_ms"`
	FirstErrors []string `json:"first_errors,omitempty"`
}

// Report is the soak's outcome; it is stored under the key "soak" of the
// result set.
type Report struct {
	Command         string        `json:"command"`
	CPUs            int           `json:"cpus"`
	LoadAvgStart    string        `json:"loadavg_start"`
	LoadAvgEnd      string        `json:"loadavg_end"`
	DurationSeconds float64       `json:"duration_seconds"`
	StableNodes     int           `json:"stable_nodes"`
	Replicas        int           `json:"controlplane_replicas"`
	ControlPlanes   string        `json:"controlplane_mode,omitempty"`
	Streams         int           `json:"probe_streams"`
	ProbeIntervalMs float64       `json:"probe_interval_ms"`
	SettleSeconds   float64       `json:"settle_seconds"`
	Loss            []Bucket      `json:"loss"`
	ProbesSent      int           `json:"probes_sent"`
	ProbesLost      int           `json:"probes_lost"`
	Events          []EventRecord `json:"events"`
	Churn           Churn         `json:"pod_churn"`
	Bounds          string        `json:"bounds"`
	Processes       []Proc        `json:"processes"`
	ErrorsLogged    int           `json:"errors_logged"`
	Errors          []LoggedError `json:"errors"`
	// Failures are what made the run fail: failed events, a bound
	// exceeded, a component that died.
	Failures []string `json:"failures"`
}

// Failed reports whether the soak failed.
func (r *Report) Failed() bool { return len(r.Failures) > 0 }

// Render writes the report as tables.
func (r *Report) Render(w io.Writer) {
	mode := ""
	if r.ControlPlanes != "" {
		mode = " (" + r.ControlPlanes + ")"
	}
	fmt.Fprintf(w, "soak: %s, %d stable nodes, %d control-plane replica(s)%s, %d probe streams every %gms, %d CPUs, load %s -> %s\n",
		time.Duration(r.DurationSeconds*float64(time.Second)).Round(time.Second), r.StableNodes, r.Replicas, mode, r.Streams,
		r.ProbeIntervalMs, r.CPUs, r.LoadAvgStart, r.LoadAvgEnd)
	fmt.Fprintf(w, "\nprobes lost per event type (window = event + %gs settle; overlaps go to the newest event):\n", r.SettleSeconds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "event\tcount\twindows s\tsent\tlost\tloss %\tlongest gap ms\t")
	for _, b := range r.Loss {
		fmt.Fprintf(tw, "%s\t%d\t%.1f\t%d\t%d\t%.3f\t%.0f\t\n", b.Kind, b.Events, b.WindowSeconds, b.Sent, b.Lost, b.LossPercent, b.LongestGapMs)
	}
	fmt.Fprintf(tw, "all\t\t\t%d\t%d\t%.3f\t\t\n", r.ProbesSent, r.ProbesLost, pct(r.ProbesLost, r.ProbesSent))
	tw.Flush()

	failed := 0
	for _, e := range r.Events {
		if e.Error != "" {
			failed++
		}
	}
	fmt.Fprintf(w, "\nevents: %d (%d failed); pod churn: %d ADD, %d DEL, %d failed, ADD p50 %.0f ms p99 %.0f ms\n",
		len(r.Events), failed, r.Churn.Adds, r.Churn.Dels, r.Churn.Failures, r.Churn.AddP50Ms, r.Churn.AddP99Ms)

	fmt.Fprintf(w, "\nprocesses (bounds: %s):\n", r.Bounds)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "component\towner\tpid\tsampled\tRSS MiB start\tend\tpeak\tgoroutines start\tend\tpeak\tthreads end\tverdict")
	for _, p := range r.Processes {
		verdict := "ok"
		switch {
		case p.Problem != "":
			verdict = "GROWTH: " + p.Problem
		case !p.Checked:
			verdict = "not judged (short-lived)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.1f\t%.1f\t%.1f\t%d\t%d\t%d\t%d\t%s\n", p.Component, p.Owner, p.PID,
			p.Lifetime().Round(time.Second), mib(p.First.RSSBytes), mib(p.Last.RSSBytes), mib(p.PeakRSS),
			p.First.Goroutines, p.Last.Goroutines, p.PeakGor, p.Last.Threads, verdict)
	}
	tw.Flush()

	fmt.Fprintf(w, "\nerrors logged: %d lines, %d distinct\n", r.ErrorsLogged, len(r.Errors))
	for _, e := range r.Errors {
		fmt.Fprintf(w, "  %5d  %-12s %s\n", e.Count, e.Component, e.Message)
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "\nFAILED:\n  %s\n", strings.Join(r.Failures, "\n  "))
	} else {
		fmt.Fprintln(w, "\nresult: pass (every event completed, no process beyond its bounds, none died)")
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func pct(n, d int) float64 {
	if d == 0 {
		return 0
	}
	return float64(n) * 100 / float64(d)
}
