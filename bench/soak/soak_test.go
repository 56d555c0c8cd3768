package soak

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPlanCyclesWithinDuration(t *testing.T) {
	ev, err := Plan(3*time.Minute, 30*time.Second, 5*time.Second, Cycle)
	if err != nil {
		t.Fatal(err)
	}
	// 30s..150s fit before 175s; 180s does not.
	want := []Event{{30 * time.Second, KindNodeJoin}, {60 * time.Second, KindPolicyReload}, {90 * time.Second, KindControlPlane},
		{120 * time.Second, KindNodeLeave}, {150 * time.Second, KindNodeJoin}}
	if len(ev) != len(want) {
		t.Fatalf("plan %v, want %v", ev, want)
	}
	for i := range want {
		if ev[i] != want[i] {
			t.Errorf("event %d: %v, want %v", i, ev[i], want[i])
		}
	}
	for _, bad := range [][3]time.Duration{{0, time.Second, 0}, {time.Minute, 0, 0}, {time.Minute, time.Second, -1}} {
		if _, err := Plan(bad[0], bad[1], bad[2], Cycle); err == nil {
			t.Errorf("Plan(%v) accepted", bad)
		}
	}
	if _, err := Plan(time.Minute, time.Second, 0, nil); err == nil {
		t.Error("Plan with no kinds accepted")
	}
}

func TestAttributeChargesLossToTheEventWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 20, 0, 0, 0, time.UTC)
	iv := 100 * time.Millisecond
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	// Two streams of 100 probes over 10 s.
	mk := func(lost ...int) Stream {
		s := Stream{Name: "s", Sent: make([]time.Time, 100), Lost: make([]bool, 100)}
		for i := range s.Sent {
			s.Sent[i] = at(time.Duration(i) * iv)
		}
		for _, i := range lost {
			s.Lost[i] = true
		}
		return s
	}
	windows := []Window{
		{Kind: KindPolicyReload, Start: at(6 * time.Second), End: at(8 * time.Second)},
		{Kind: KindNodeJoin, Start: at(2 * time.Second), End: at(4 * time.Second)},
		// Overlaps the join's tail: probes from 3.5 s go to the rotation.
		{Kind: KindKeyRotation, Start: at(3500 * time.Millisecond), End: at(4500 * time.Millisecond)},
	}
	// Stream A: 20-24 lost (join: 2.0-2.4 s), 36-38 (rotation), 90 (none).
	// Stream B: 60-69 lost (reload, a 1 s gap).
	streams := []Stream{mk(20, 21, 22, 23, 24, 36, 37, 38, 90), mk(60, 61, 62, 63, 64, 65, 66, 67, 68, 69)}
	got := Attribute(streams, windows, iv, []Kind{KindNone, KindNodeJoin, KindPolicyReload, KindKeyRotation})
	want := []Bucket{
		// none: 0-1.9 s, 4.5-5.9 s, 8-9.9 s = 20+15+20 = 55 probes per stream.
		{Kind: KindNone, Sent: 110, Lost: 1, LossPercent: 0.909, LongestGapMs: 100},
		{Kind: KindNodeJoin, Events: 1, WindowSeconds: 2, Sent: 30, Lost: 5, LossPercent: 16.667, LongestGapMs: 500},
		{Kind: KindPolicyReload, Events: 1, WindowSeconds: 2, Sent: 40, Lost: 10, LossPercent: 25, LongestGapMs: 1000},
		{Kind: KindKeyRotation, Events: 1, WindowSeconds: 1, Sent: 20, Lost: 3, LossPercent: 15, LongestGapMs: 300},
	}
	if len(got) != len(want) {
		t.Fatalf("buckets %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("bucket %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestKindAtPrefersTheNewestCoveringWindow(t *testing.T) {
	t0 := time.Unix(1000, 0)
	ws := []Window{
		{Kind: KindControlPlane, Start: t0, End: t0.Add(10 * time.Second)},
		{Kind: KindKeyRotation, Start: t0.Add(2 * time.Second), End: t0.Add(3 * time.Second)},
	}
	for _, c := range []struct {
		d    time.Duration
		want Kind
	}{{-time.Second, KindNone}, {time.Second, KindControlPlane}, {2500 * time.Millisecond, KindKeyRotation},
		{5 * time.Second, KindControlPlane}, {10 * time.Second, KindNone}} {
		if got := KindAt(ws, t0.Add(c.d)); got != c.want {
			t.Errorf("at %s: %s, want %s", c.d, got, c.want)
		}
	}
}

func TestBoundsJudgeGrowth(t *testing.T) {
	t0 := time.Unix(0, 0)
	mk := func(life time.Duration, rss0, rss1 uint64, g0, g1 int) *Proc {
		p := &Proc{Component: "agent"}
		p.Add(Sample{At: t0, RSSBytes: rss0 << 20, Goroutines: g0})
		p.Add(Sample{At: t0.Add(life), RSSBytes: rss1 << 20, Goroutines: g1})
		return p
	}
	b := DefaultBounds
	for _, c := range []struct {
		name    string
		p       *Proc
		checked bool
		problem string
	}{
		{"steady", mk(30*time.Minute, 40, 55, 40, 55), true, ""},
		{"rss leak", mk(30*time.Minute, 40, 80, 40, 40), true, "RSS 40 MiB -> 80 MiB (bound 76 MiB)"},
		{"goroutine leak", mk(30*time.Minute, 40, 40, 40, 61), true, "goroutines 40 -> 61 (bound 60)"},
		{"short-lived", mk(time.Minute, 40, 400, 40, 4000), false, ""},
		{"no metrics", mk(30*time.Minute, 40, 41, -1, -1), true, ""},
	} {
		b.Judge(c.p)
		if c.p.Checked != c.checked || c.p.Problem != c.problem {
			t.Errorf("%s: checked=%v problem=%q, want %v %q", c.name, c.p.Checked, c.p.Problem, c.checked, c.problem)
		}
	}
}

func TestParseProcStatusAndGoroutines(t *testing.T) {
	rss, th, err := ParseProcStatus([]byte("Name:\tconfmesh\nVmRSS:\t   51200 kB\nThreads:\t12\n"))
	if err != nil || rss != 50<<20 || th != 12 {
		t.Errorf("ParseProcStatus: %d %d %v", rss, th, err)
	}
	if _, _, err := ParseProcStatus([]byte("Name:\tkthreadd\nThreads:\t1\n")); err == nil {
		t.Error("status without VmRSS accepted")
	}
	g, err := ParseGoroutines([]byte("# HELP go_goroutines x\n# TYPE go_goroutines gauge\ngo_goroutines 42\ngo_threads 9\n"))
	if err != nil || g != 42 {
		t.Errorf("ParseGoroutines: %d %v", g, err)
	}
	if _, err := ParseGoroutines([]byte("go_threads 9\n")); err == nil {
		t.Error("metrics without go_goroutines accepted")
	}
}

func TestErrorTallyAndRotationTimes(t *testing.T) {
	log := strings.Join([]string{
		`time=2026-12-07T20:00:01.5Z level=INFO msg="WireGuard key rotated"`,
		`time=2026-12-07T20:00:02Z level=ERROR msg="sync routes" err="file exists"`,
		`time=2026-12-07T20:00:03Z level=ERROR msg="sync routes" err="no such device"`,
		`time=2026-12-07T20:00:04Z level=WARN msg="slow"`,
		`time=2026-12-07T20:00:05Z level=ERROR msg=bare err=x`,
		`{"time":"2026-12-07T20:00:06Z","level":"ERROR","msg":"watch broken"}`,
		`panic: runtime error: index out of range`,
		`time=2026-12-07T20:03:01Z level=INFO msg="WireGuard key rotated"`,
	}, "\n")
	var tally ErrorTally
	if err := tally.Scan("agent", strings.NewReader(log)); err != nil {
		t.Fatal(err)
	}
	if tally.Total != 5 {
		t.Errorf("total %d, want 5", tally.Total)
	}
	errs := tally.Errors()
	if len(errs) != 4 || errs[0].Message != "sync routes" || errs[0].Count != 2 || !strings.Contains(errs[0].Example, "file exists") {
		t.Errorf("errors %+v", errs)
	}
	rot := RotationTimes(log)
	if len(rot) != 2 || !rot[0].Equal(time.Date(2026, 12, 7, 20, 0, 1, 5e8, time.UTC)) {
		t.Errorf("rotations %v", rot)
	}
	r := &Report{Loss: []Bucket{{Kind: KindNodeJoin, Events: 1, Sent: 10, Lost: 1}}, Errors: errs, ErrorsLogged: 5}
	var buf bytes.Buffer
	r.Render(&buf)
	for _, want := range []string{"node-join", "sync routes", "result: pass"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, buf.String())
		}
	}
}
