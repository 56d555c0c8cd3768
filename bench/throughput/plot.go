package throughput

import (
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// barStep is the distance between a group's bars, in x units (one group per unit).
const barStep = 0.27

var variantColors = map[string]color.Color{
	Plaintext:   color.RGBA{R: 0x99, G: 0x99, B: 0x99, A: 0xff},
	WireGuardGo: color.RGBA{R: 0x33, G: 0x66, B: 0xcc, A: 0xff},
	Confmesh:    color.RGBA{R: 0xdd, G: 0x66, B: 0x22, A: 0xff},
}

// WritePlot draws the run as a PNG at path: on the left, throughput per
// variant at 1 and S streams; on the right, round-trip latency (p50 and
// p99). Bars are medians over the rounds, whiskers the min and max.
func (r *Result) WritePlot(path string) error {
	tput := plot.New()
	tput.Title.Text = fmt.Sprintf("TCP throughput (%d rounds x %s)", r.Rounds, r.Duration)
	tput.Y.Label.Text = "Gbit/s"
	lat := plot.New()
	lat.Title.Text = "TCP request/response, one connection"
	lat.Y.Label.Text = "round trip, microseconds"
	groups := [][2]string{{"1 stream", fmt.Sprintf("%d streams", r.Streams)}, {"p50", "p99"}}
	w := vg.Points(34)
	for i, v := range Variants {
		vr := r.Variants[v]
		if vr == nil {
			continue
		}
		for pi, pair := range [][2]Summary{{vr.Gbps1, vr.GbpsS}, {vr.RRP50us, vr.RRP99us}} {
			p := []*plot.Plot{tput, lat}[pi]
			bars, err := plotter.NewBarChart(plotter.Values{pair[0].Median, pair[1].Median}, w)
			if err != nil {
				return err
			}
			bars.Color = variantColors[v]
			bars.LineStyle.Width = 0
			bars.XMin = float64(i-1) * barStep
			p.Add(bars)
			if i == 0 {
				p.NominalX(groups[pi][0], groups[pi][1])
			}
			p.Legend.Add(v, bars)
			errs := plotter.YErrors{
				{Low: pair[0].Median - pair[0].Min, High: pair[0].Max - pair[0].Median},
				{Low: pair[1].Median - pair[1].Min, High: pair[1].Max - pair[1].Median},
			}
			pts := plotter.XYs{{X: 0, Y: pair[0].Median}, {X: 1, Y: pair[1].Median}}
			eb, err := plotter.NewYErrorBars(struct {
				plotter.XYer
				plotter.YErrorer
			}{pts, errs})
			if err != nil {
				return err
			}
			// Whiskers sit on their bars: shift by the bar's offset.
			eb.XYs = shiftX(eb.XYs, float64(i-1)*barStep)
			eb.CapWidth = vg.Points(10)
			eb.LineStyle.Width = vg.Points(1.2)
			p.Add(eb)
		}
	}
	for _, p := range []*plot.Plot{tput, lat} {
		p.Legend.Top = true
		p.Y.Min = 0
		p.Y.Max *= 1.3 // room for the legend above the bars
		p.X.Min, p.X.Max = -0.6, 1.6
	}
	img := vgimg.New(vg.Points(900), vg.Points(380))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Points(16), PadTop: vg.Points(8), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	canvases := plot.Align([][]*plot.Plot{{tput, lat}}, tiles, dc)
	tput.Draw(canvases[0][0])
	lat.Draw(canvases[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func shiftX(xys plotter.XYs, dx float64) plotter.XYs {
	out := make(plotter.XYs, len(xys))
	for i, p := range xys {
		out[i] = plotter.XY{X: p.X + dx, Y: p.Y}
	}
	return out
}
