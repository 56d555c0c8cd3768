package throughput

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// ratio is a/b rounded to 3 decimals; 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return round3(a / b)
}

func maxRSS(ms []Memory) (rss, peak float64) {
	for _, m := range ms {
		rss, peak = math.Max(rss, m.RSS), math.Max(peak, m.Peak)
	}
	return rss, peak
}

// Flat is the result as the documented JSON object: medians over the
// rounds at 1 stream (<variant>_gbps) and at S streams (<variant>_gbps_<S>),
// confmesh's ratios to the other two, per-variant CPU seconds per GB and
// latency, the resident memory (MiB) of the confmesh datapaths (the larger
// of the two), agents and control plane right after the run, and the whole
// Result under "detail".
func (r *Result) Flat() map[string]any {
	s := fmt.Sprintf("_%d", r.Streams)
	out := map[string]any{
		"datapath":             r.Datapath,
		"load_generator":       r.Generator,
		"duration_s":           r.Duration.Seconds(),
		"streams":              r.Streams,
		"rounds":               r.Rounds,
		"cpus":                 r.CPUs,
		"elapsed_s":            math.Round(r.Elapsed.Seconds()*10) / 10,
		"loadavg_1m":           []float64{r.LoadBefore, r.LoadAfter},
		"detail":               r,
		"cpu_s_per_gb":         map[string]float64{},
		"rr_p50_us":            map[string]float64{},
		"rr_p99_us":            map[string]float64{},
		"gbps_min":             map[string]float64{},
		"gbps_max":             map[string]float64{},
		"gbps_min" + s:         map[string]float64{},
		"gbps_max" + s:         map[string]float64{},
		"controlplane_rss_mib": r.CP.RSS,
	}
	for _, v := range Variants {
		vr := r.Variants[v]
		if vr == nil {
			continue
		}
		out[v+"_gbps"] = vr.Gbps1.Median
		out[v+"_gbps"+s] = vr.GbpsS.Median
		out["cpu_s_per_gb"].(map[string]float64)[v] = vr.CPUSPerGB
		out["rr_p50_us"].(map[string]float64)[v] = vr.RRP50us.Median
		out["rr_p99_us"].(map[string]float64)[v] = vr.RRP99us.Median
		out["gbps_min"].(map[string]float64)[v] = vr.Gbps1.Min
		out["gbps_max"].(map[string]float64)[v] = vr.Gbps1.Max
		out["gbps_min"+s].(map[string]float64)[v] = vr.GbpsS.Min
		out["gbps_max"+s].(map[string]float64)[v] = vr.GbpsS.Max
	}
	c, w, p := r.Variants[Confmesh], r.Variants[WireGuardGo], r.Variants[Plaintext]
	if c != nil && w != nil && p != nil {
		out["ratio_vs_wireguard_go"] = ratio(c.Gbps1.Median, w.Gbps1.Median)
		out["ratio_vs_wireguard_go"+s] = ratio(c.GbpsS.Median, w.GbpsS.Median)
		out["ratio_vs_plaintext"] = ratio(c.Gbps1.Median, p.Gbps1.Median)
		out["ratio_vs_plaintext"+s] = ratio(c.GbpsS.Median, p.GbpsS.Median)
	}
	out["datapath_rss_mib"], out["datapath_peak_rss_mib"] = maxRSS(r.Datapaths)
	out["wireguard_go_rss_mib"], out["wireguard_go_peak_rss_mib"] = maxRSS(r.StockWG)
	out["agent_rss_mib"], _ = maxRSS(r.Agents)
	if len(r.IdleRSS) > 0 {
		idle := 0.0
		for _, x := range r.IdleRSS {
			idle = math.Max(idle, x)
		}
		out["datapath_idle_rss_mib"], out["datapath_idle_after_s"] = idle, r.IdleAfter
	}
	return out
}

// WriteText prints the run for people.
func (r *Result) WriteText(w io.Writer) {
	fmt.Fprintf(w, "throughput, %d round(s) of %s per load, variants interleaved (order rotated each round); %d CPUs, load %.2f -> %.2f\n",
		r.Rounds, r.Duration, r.CPUs, r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(w, "datapath measured: %s; load generator: %s\n\n", r.Datapath, r.Generator)
	fmt.Fprint(w, r.markdownTable())
	f := r.Flat()
	s := fmt.Sprintf("_%d", r.Streams)
	fmt.Fprintf(w, "\nconfmesh / stock wireguard-go: %.3f (1 stream), %.3f (%d streams); confmesh / plaintext: %.3f, %.3f\n",
		f["ratio_vs_wireguard_go"], f["ratio_vs_wireguard_go"+s], r.Streams, f["ratio_vs_plaintext"], f["ratio_vs_plaintext"+s])
	fmt.Fprintf(w, "resident memory after the run (MiB): confmesh datapath %.1f (peak %.1f), stock wireguard-go %.1f (peak %.1f), agent %.1f, control plane %.1f\n",
		f["datapath_rss_mib"], f["datapath_peak_rss_mib"], f["wireguard_go_rss_mib"], f["wireguard_go_peak_rss_mib"], f["agent_rss_mib"], r.CP.RSS)
	if idle, ok := f["datapath_idle_rss_mib"]; ok {
		fmt.Fprintf(w, "confmesh datapath once idle: %.1f MiB after %.1f s\n", idle, f["datapath_idle_after_s"])
	}
}

// markdownTable is one row per variant: medians with [min-max] over the rounds.
func (r *Result) markdownTable() string {
	var b strings.Builder
	fmt.Fprintf(&b, "| path | Gbit/s, 1 stream | Gbit/s, %d streams | tunnel CPU s/GB | RR p50 us | RR p99 us |\n", r.Streams)
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, v := range Variants {
		vr := r.Variants[v]
		if vr == nil {
			continue
		}
		cpu := "-"
		if vr.TunnelProcs > 0 {
			cpu = fmt.Sprintf("%.2f", vr.CPUSPerGB)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", v, spread(vr.Gbps1, "%.2f"), spread(vr.GbpsS, "%.2f"), cpu,
			spread(vr.RRP50us, "%.0f"), spread(vr.RRP99us, "%.0f"))
	}
	return b.String()
}

func spread(s Summary, f string) string {
	return fmt.Sprintf(f+" ["+f+"-"+f+"]", s.Median, s.Min, s.Max)
}

// WriteMarkdown writes the table with a heading and the run's facts.
func (r *Result) WriteMarkdown(w io.Writer, machine string) {
	f := r.Flat()
	s := fmt.Sprintf("_%d", r.Streams)
	fmt.Fprintf(w, "# confmesh bench throughput, %s\n\n", r.Started.Format("2006-01-02 15:04 UTC"))
	if machine != "" {
		fmt.Fprintf(w, "Machine: %s\n\n", machine)
	}
	fmt.Fprintf(w, "Datapath measured: %s. Load generator: %s. %d rounds of %s per load, variants interleaved with the order rotated each round; load average %.2f before, %.2f after.\n\n",
		r.Datapath, r.Generator, r.Rounds, r.Duration, r.LoadBefore, r.LoadAfter)
	fmt.Fprintln(w, "Medians, [min-max] over the rounds:")
	fmt.Fprintln(w)
	fmt.Fprint(w, r.markdownTable())
	fmt.Fprintf(w, "\nconfmesh / stock wireguard-go: **%.3f** (1 stream), **%.3f** (%d streams). confmesh / plaintext: %.3f, %.3f.\n\n",
		f["ratio_vs_wireguard_go"], f["ratio_vs_wireguard_go"+s], r.Streams, f["ratio_vs_plaintext"], f["ratio_vs_plaintext"+s])
	fmt.Fprintf(w, "Resident memory after the run (MiB): confmesh datapath %.1f (peak %.1f), stock wireguard-go %.1f (peak %.1f), agent %.1f, control plane %.1f.\n",
		f["datapath_rss_mib"], f["datapath_peak_rss_mib"], f["wireguard_go_rss_mib"], f["wireguard_go_peak_rss_mib"], f["agent_rss_mib"], r.CP.RSS)
	if idle, ok := f["datapath_idle_rss_mib"]; ok {
		fmt.Fprintf(w, "\nconfmesh datapath once idle: %.1f MiB after %.1f s.\n", idle, f["datapath_idle_after_s"])
	}
}
