package throughput

import (
	"math"
	"slices"
	"time"
)

// Summary is the spread of one figure over the rounds.
type Summary struct {
	Min    float64   `json:"min"`
	Median float64   `json:"median"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
}

// Summarize returns the min, median and max of xs (rounded to 3 decimals)
// and the values in round order; the zero Summary for no values.
func Summarize(xs []float64) Summary {
	if len(xs) == 0 {
		return Summary{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	rounds := make([]float64, len(xs))
	for i, x := range xs {
		rounds[i] = round3(x)
	}
	return Summary{Min: round3(s[0]), Median: round3(med), Max: round3(s[len(s)-1]), Rounds: rounds}
}

// Percentile is the q-quantile (0..1, nearest rank) of ds; 0 for none.
func Percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }

// Gbps is bytes moved in d, in Gbit/s.
func Gbps(bytes int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(bytes) * 8 / d.Seconds() / 1e9
}
