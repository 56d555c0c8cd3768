package soak

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sample is one look at a process: resident memory (VmRSS), OS threads
// and Go goroutines (-1 when its /metrics could not be read).
type Sample struct {
	At         time.Time `json:"at"`
	RSSBytes   uint64    `json:"rss_bytes"`
	Threads    int       `json:"threads"`
	Goroutines int       `json:"goroutines"`
}

// Proc is the samples of one process of the lab: the first and the last
// taken, and the peaks over all of them.
type Proc struct {
	Component string `json:"component"` // agent, datapath, controlplane
	Owner     string `json:"owner"`     // node name or replica name
	PID       int    `json:"pid"`
	First     Sample `json:"start"`
	Last      Sample `json:"end"`
	PeakRSS   uint64 `json:"peak_rss_bytes"`
	PeakGor   int    `json:"peak_goroutines"`
	Samples   int    `json:"samples"`
	// Checked says whether the growth bounds were applied (the process
	// lived long enough), Problem what exceeded them.
	Checked bool   `json:"checked"`
	Problem string `json:"problem,omitempty"`
}

// Add records a sample.
func (p *Proc) Add(s Sample) {
	if p.Samples == 0 {
		p.First = s
	}
	p.Last = s
	p.PeakRSS = max(p.PeakRSS, s.RSSBytes)
	p.PeakGor = max(p.PeakGor, s.Goroutines)
	p.Samples++
}

// Lifetime is the time between the first and the last sample.
func (p *Proc) Lifetime() time.Duration { return p.Last.At.Sub(p.First.At) }

// Bounds are how much a process may grow between its first and its last
// sample before the soak fails: RSS by RSSFactor times plus RSSSlackBytes,
// goroutines by GoroutineFactor times plus GoroutineSlack. Processes
// sampled over less than MinLifetime are not judged (a control plane
// restarted a minute before the end says nothing about leaks).
type Bounds struct {
	RSSFactor       float64
	RSSSlackBytes   uint64
	GoroutineFactor float64
	GoroutineSlack  int
	MinLifetime     time.Duration
}

// DefaultBounds: RSS at most 1.5x + 16 MiB, goroutines at most 1.25x + 10,
// judged for processes sampled over at least 10 minutes.
var DefaultBounds = Bounds{RSSFactor: 1.5, RSSSlackBytes: 16 << 20, GoroutineFactor: 1.25, GoroutineSlack: 10, MinLifetime: 10 * time.Minute}

// String states the bounds for the report.
func (b Bounds) String() string {
	return fmt.Sprintf("end RSS <= %.2fx start + %d MiB, end goroutines <= %.2fx start + %d, for processes sampled over >= %s",
		b.RSSFactor, b.RSSSlackBytes>>20, b.GoroutineFactor, b.GoroutineSlack, b.MinLifetime)
}

// Judge sets p.Checked and p.Problem.
func (b Bounds) Judge(p *Proc) {
	p.Checked, p.Problem = false, ""
	if p.Samples < 2 || p.Lifetime() < b.MinLifetime {
		return
	}
	p.Checked = true
	var probs []string
	if lim := uint64(float64(p.First.RSSBytes)*b.RSSFactor) + b.RSSSlackBytes; p.Last.RSSBytes > lim {
		probs = append(probs, fmt.Sprintf("RSS %d MiB -> %d MiB (bound %d MiB)", p.First.RSSBytes>>20, p.Last.RSSBytes>>20, lim>>20))
	}
	if p.First.Goroutines >= 0 && p.Last.Goroutines >= 0 {
		if lim := int(float64(p.First.Goroutines)*b.GoroutineFactor) + b.GoroutineSlack; p.Last.Goroutines > lim {
			probs = append(probs, fmt.Sprintf("goroutines %d -> %d (bound %d)", p.First.Goroutines, p.Last.Goroutines, lim))
		}
	}
	p.Problem = strings.Join(probs, "; ")
}

// ParseProcStatus reads VmRSS and Threads from /proc/PID/status.
func ParseProcStatus(data []byte) (rss uint64, threads int, err error) {
	var haveRSS, haveThreads bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		switch k {
		case "VmRSS":
			if len(f) != 2 || f[1] != "kB" {
				return 0, 0, fmt.Errorf("VmRSS %q", v)
			}
			kb, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("VmRSS %q: %v", v, err)
			}
			rss, haveRSS = kb<<10, true
		case "Threads":
			if len(f) != 1 {
				return 0, 0, fmt.Errorf("Threads %q", v)
			}
			n, err := strconv.Atoi(f[0])
			if err != nil {
				return 0, 0, fmt.Errorf("Threads %q: %v", v, err)
			}
			threads, haveThreads = n, true
		}
	}
	if !haveRSS || !haveThreads {
		return 0, 0, fmt.Errorf("no VmRSS or Threads line (a zombie or kernel thread?)")
	}
	return rss, threads, nil
}

// ParseGoroutines reads go_goroutines from a Prometheus text exposition.
func ParseGoroutines(data []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return 0, fmt.Errorf("go_goroutines %q: %v", rest, err)
			}
			return int(v), nil
		}
	}
	return 0, fmt.Errorf("no go_goroutines in the metrics")
}
