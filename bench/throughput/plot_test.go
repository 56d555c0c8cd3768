package throughput

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
)

func TestWritePlot(t *testing.T) {
	s := func(lo, med, hi float64) Summary { return Summary{Min: lo, Median: med, Max: hi} }
	r := &Result{Streams: 4, Rounds: 3, Variants: map[string]*VariantResult{
		Plaintext:   {Gbps1: s(12, 15, 17), GbpsS: s(14, 18, 22), RRP50us: s(15, 16, 17), RRP99us: s(25, 30, 50)},
		WireGuardGo: {Gbps1: s(1.6, 1.9, 2.3), GbpsS: s(1.4, 2.2, 2.9), RRP50us: s(190, 210, 250), RRP99us: s(370, 600, 710)},
		Confmesh:    {Gbps1: s(1.3, 1.8, 2.5), GbpsS: s(0.7, 1.4, 2.3), RRP50us: s(220, 250, 280), RRP99us: s(450, 680, 850)},
	}}
	path := filepath.Join(t.TempDir(), "p.png")
	if err := r.WritePlot(path); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 300 {
		t.Errorf("plot is %dx%d, want three panels side by side", b.Dx(), b.Dy())
	}
	if err := r.WritePlot(filepath.Join(t.TempDir(), "missing", "p.png")); err == nil {
		t.Error("WritePlot into a missing directory succeeded")
	}
}
