package soak

import (
	"math"
	"slices"
	"sort"
	"time"
)

// Window is the span in which an event may disturb traffic: from the start
// of the action to its end plus a settle time.
type Window struct {
	Kind       Kind
	Start, End time.Time
}

// Stream is one probe stream's record: the send time of every probe, by
// sequence number, and which never arrived.
type Stream struct {
	Name string
	Sent []time.Time
	Lost []bool
}

// Bucket is what the events of one kind did to the probes sent in their
// windows.
type Bucket struct {
	Kind          Kind    `json:"kind"`
	Events        int     `json:"events"`
	WindowSeconds float64 `json:"window_seconds"`
	Sent          int     `json:"probes_sent"`
	Lost          int     `json:"probes_lost"`
	LossPercent   float64 `json:"loss_percent"`
	// LongestGapMs is the longest run of consecutive lost probes of one
	// stream that began in a window of this kind, as time (first to last
	// lost send, plus one interval).
	LongestGapMs float64 `json:"longest_gap_ms"`
}

// KindAt is the kind of the window covering t; where windows overlap, the
// one that started last (the newest disturbance) takes the probe. Outside
// every window it is KindNone. windows must be sorted by Start.
func KindAt(windows []Window, t time.Time) Kind {
	i := sort.Search(len(windows), func(i int) bool { return windows[i].Start.After(t) })
	for j := i - 1; j >= 0; j-- {
		if t.Before(windows[j].End) {
			return windows[j].Kind
		}
	}
	return KindNone
}

// Attribute charges every probe (sent, and lost or not) to the kind of the
// window its send time falls in (KindAt) and returns one bucket per kind
// that had a window or a probe, in the order of kinds (others after, by
// name). interval is the streams' probe interval (for the gap lengths).
func Attribute(streams []Stream, windows []Window, interval time.Duration, kinds []Kind) []Bucket {
	ws := slices.Clone(windows)
	slices.SortStableFunc(ws, func(a, b Window) int { return a.Start.Compare(b.Start) })
	byKind := map[Kind]*Bucket{}
	get := func(k Kind) *Bucket {
		b, ok := byKind[k]
		if !ok {
			b = &Bucket{Kind: k}
			byKind[k] = b
		}
		return b
	}
	for _, w := range ws {
		b := get(w.Kind)
		b.Events++
		b.WindowSeconds += w.End.Sub(w.Start).Seconds()
	}
	for _, s := range streams {
		runStart, runKind := -1, KindNone
		closeRun := func(last int) {
			if runStart < 0 {
				return
			}
			gap := s.Sent[last].Sub(s.Sent[runStart]) + interval
			b := get(runKind)
			b.LongestGapMs = max(b.LongestGapMs, float64(gap.Milliseconds()))
			runStart = -1
		}
		for i, at := range s.Sent {
			k := KindAt(ws, at)
			b := get(k)
			b.Sent++
			lost := i < len(s.Lost) && s.Lost[i]
			if !lost {
				closeRun(i - 1)
				continue
			}
			b.Lost++
			if runStart < 0 {
				runStart, runKind = i, k
			}
		}
		closeRun(len(s.Sent) - 1)
	}
	var out []Bucket
	for _, k := range kinds {
		if b, ok := byKind[k]; ok {
			out = append(out, *b)
			delete(byKind, k)
		}
	}
	var rest []Kind
	for k := range byKind {
		rest = append(rest, k)
	}
	slices.Sort(rest)
	for _, k := range rest {
		out = append(out, *byKind[k])
	}
	for i := range out {
		if out[i].Sent > 0 {
			out[i].LossPercent = math.Round(float64(out[i].Lost)*100000/float64(out[i].Sent)) / 1000
		}
		out[i].WindowSeconds = math.Round(out[i].WindowSeconds*10) / 10
	}
	return out
}
