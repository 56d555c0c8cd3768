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

// WritePlot draws the run as a PNG at path: throughput per path at 1 and
// S streams; the same for the two tunnels alone (on their own scale, so
// they can be compared); round-trip latency (p50 and p99). Bars are
// medians over the rounds, whiskers the min and max.
func (r *Result) WritePlot(path string) error {
	tput := plot.New()
	tput.Title.Text = fmt.Sprintf("TCP throughput (%d rounds x %s)", r.Rounds, r.Duration)
	tput.Y.Label.Text = "Gbit/s"
	tunnels := plot.New()
	tunnels.Title.Text = "the tunnels alone"
	tunnels.Y.Label.Text = "Gbit/s"
	lat := plot.New()
	lat.Title.Text = "TCP request/response, one connection"
	lat.Y.Label.Text = "round trip, microseconds"
	streams := [2]string{"1 stream", fmt.Sprintf("%d streams", r.Streams)}
	for i, v := range Variants {
		vr := r.Variants[v]
		if vr == nil {
			continue
		}
		panels := []struct {
			p      *plot.Plot
			pair   [2]Summary
			groups [2]string
		}{
			{tput, [2]Summary{vr.Gbps1, vr.GbpsS}, streams},
			{lat, [2]Summary{vr.RRP50us, vr.RRP99us}, [2]string{"p50", "p99"}},
		}
		if v != Plaintext {
			panels = append(panels, struct {
				p      *plot.Plot
				pair   [2]Summary
				groups [2]string
			}{tunnels, [2]Summary{vr.Gbps1, vr.GbpsS}, streams})
		}
		for _, pn := range panels {
			if err := addBars(pn.p, v, float64(i-1)*barStep, pn.pair, pn.groups); err != nil {
				return err
			}
		}
	}
	for _, p := range []*plot.Plot{tput, tunnels, lat} {
		p.Legend.Top = true
		p.Y.Min = 0
		p.Y.Max *= 1.3 // room for the legend above the bars
		p.X.Min, p.X.Max = -0.6, 1.6
	}
	img := vgimg.New(vg.Points(1200), vg.Points(380))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 3, PadX: vg.Points(16), PadTop: vg.Points(8), PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(8)}
	row := []*plot.Plot{tput, tunnels, lat}
	canvases := plot.Align([][]*plot.Plot{row}, tiles, dc)
	for i, p := range row {
		p.Draw(canvases[0][i])
	}
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

// addBars adds one path's two bars (medians) with min-max whiskers to p,
// shifted by dx within each group.
func addBars(p *plot.Plot, variant string, dx float64, pair [2]Summary, groups [2]string) error {
	bars, err := plotter.NewBarChart(plotter.Values{pair[0].Median, pair[1].Median}, vg.Points(30))
	if err != nil {
		return err
	}
	bars.Color = variantColors[variant]
	bars.LineStyle.Width = 0
	bars.XMin = dx
	p.Add(bars)
	p.NominalX(groups[0], groups[1])
	p.Legend.Add(variant, bars)
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
	eb.XYs = shiftX(eb.XYs, dx)
	eb.CapWidth = vg.Points(10)
	eb.LineStyle.Width = vg.Points(1.2)
	p.Add(eb)
	return nil
}

func shiftX(xys plotter.XYs, dx float64) plotter.XYs {
	out := make(plotter.XYs, len(xys))
	for i, p := range xys {
		out[i] = plotter.XY{X: p.X + dx, Y: p.Y}
	}
	return out
}
