package throughput

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	s := Summarize([]float64{3, 1, 2, 10})
	if s.Min != 1 || s.Max != 10 || s.Median != 2.5 || len(s.Rounds) != 4 || s.Rounds[0] != 3 {
		t.Fatalf("Summarize = %+v", s)
	}
	if z := Summarize(nil); z.Median != 0 || z.Rounds != nil {
		t.Fatalf("Summarize(nil) = %+v", z)
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 100; i++ {
		ds = append(ds, time.Duration(i)*time.Microsecond)
	}
	if p := Percentile(ds, 0.5); p != 50*time.Microsecond {
		t.Errorf("p50 = %s", p)
	}
	if p := Percentile(ds, 0.99); p != 99*time.Microsecond {
		t.Errorf("p99 = %s", p)
	}
	if p := Percentile(nil, 0.5); p != 0 {
		t.Errorf("p50 of none = %s", p)
	}
}

func TestFlatKeys(t *testing.T) {
	r := &Result{Streams: 8, Variants: map[string]*VariantResult{
		Plaintext:   {Gbps1: Summary{Median: 10}, GbpsS: Summary{Median: 12}},
		WireGuardGo: {Gbps1: Summary{Median: 2}, GbpsS: Summary{Median: 2.5}, CPUSPerGB: 7},
		Confmesh:    {Gbps1: Summary{Median: 2.2}, GbpsS: Summary{Median: 2.5}, CPUSPerGB: 6},
	}, Datapaths: []Memory{{RSS: 40, Peak: 90}, {RSS: 60, Peak: 80}}}
	f := r.Flat()
	want := map[string]float64{"confmesh_gbps": 2.2, "confmesh_gbps_8": 2.5, "ratio_vs_wireguard_go": 1.1,
		"ratio_vs_wireguard_go_8": 1, "ratio_vs_plaintext": 0.22, "datapath_rss_mib": 60, "datapath_peak_rss_mib": 90}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("%s = %v, want %v", k, f[k], v)
		}
	}
	if c := f["cpu_s_per_gb"].(map[string]float64); c[Confmesh] != 6 || c[WireGuardGo] != 7 {
		t.Errorf("cpu_s_per_gb = %v", c)
	}
}
