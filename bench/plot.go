package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	_ "gonum.org/v1/plot/vg/vgimg" // png
	_ "gonum.org/v1/plot/vg/vgpdf" // pdf
	_ "gonum.org/v1/plot/vg/vgsvg" // svg
)

// WritePlot draws the runs' per-interval Samples into file (its extension,
// .png, .svg or .pdf, picks the format): throughput on top, latency
// percentiles (log scale) below, against seconds since each run's warmup
// ended. One run gets p50, p90, p99, p99.9 and max; several get p50
// (dashed) and p99 (solid) each, in the run's colour, so that a sweep
// stays readable.
func WritePlot(file string, results []*Result) error {
	thr := plot.New()
	thr.Title.Text = "throughput"
	thr.X.Label.Text = "seconds"
	thr.Y.Label.Text = "ops/s"
	thr.Y.Min = 0
	thr.Legend.Top = true
	thr.Legend.Left = true

	lat := plot.New()
	lat.Title.Text = "latency"
	if len(results) > 1 {
		lat.Title.Text = "latency: p99 solid, p50 dashed"
	}
	lat.X.Label.Text = "seconds"
	lat.Y.Label.Text = "ms (log scale)"
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	lat.Legend.Top = true
	lat.Legend.Left = true

	for _, p := range []*plot.Plot{thr, lat} {
		p.Legend.TextStyle.Font.Size = vg.Points(8)
		p.Legend.ThumbnailWidth = vg.Points(16)
	}

	single := len(results) == 1
	for i, r := range results {
		label := fmt.Sprintf("%s c=%d", r.Workload, r.Clients)
		col := runColor(i, len(results))
		if err := addLine(thr, label, col, nil, r.Samples, func(s Sample) float64 { return s.Throughput }, false); err != nil {
			return err
		}
		type pct struct {
			name string
			get  func(Sample) time.Duration
		}
		pcts := []pct{{"p50", func(s Sample) time.Duration { return s.P50 }}, {"p99", func(s Sample) time.Duration { return s.P99 }}}
		if single {
			pcts = []pct{
				{"p50", func(s Sample) time.Duration { return s.P50 }},
				{"p90", func(s Sample) time.Duration { return s.P90 }},
				{"p99", func(s Sample) time.Duration { return s.P99 }},
				{"p99.9", func(s Sample) time.Duration { return s.P999 }},
				{"max", func(s Sample) time.Duration { return s.Max }},
			}
		}
		for j, p := range pcts {
			c, dashes, name := col, []vg.Length(nil), label
			if single {
				c, name = plotutil.Color(j), p.name
			} else if j == 0 {
				dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			}
			get := p.get
			if !single && j == 0 {
				name = "" // the legend names each run once, on its p99
			}
			if err := addLine(lat, name, c, dashes, r.Samples, func(s Sample) float64 { return float64(get(s)) / float64(time.Millisecond) }, true); err != nil {
				return err
			}
		}
	}

	const w, h = 22 * vg.Centimeter, 20 * vg.Centimeter
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(file)), ".")
	cw, err := draw.NewFormattedCanvas(w, h, format)
	if err != nil {
		return err
	}
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align([][]*plot.Plot{{thr}, {lat}}, tiles, draw.New(cw))
	thr.Draw(canvases[0][0])
	lat.Draw(canvases[1][0])
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := cw.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runColor gives run i of n its own colour: plotutil's palette has seven,
// and a sweep of three workloads at four concurrencies has twelve runs.
func runColor(i, n int) color.Color {
	if n <= 7 {
		return plotutil.Color(i)
	}
	// Hues around the wheel, alternating dark and light so that
	// neighbours differ in two ways.
	h := float64(i) / float64(n) * 360
	l := 0.35
	if i%2 == 1 {
		l = 0.55
	}
	return hsl(h, 0.75, l)
}

// hsl converts a hue (degrees), saturation and lightness to RGB.
func hsl(h, s, l float64) color.Color {
	c := (1 - math.Abs(2*l-1)) * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	m := l - c/2
	var r, g, b float64
	switch {
	case h < 60:
		r, g, b = c, x, 0
	case h < 120:
		r, g, b = x, c, 0
	case h < 180:
		r, g, b = 0, c, x
	case h < 240:
		r, g, b = 0, x, c
	case h < 300:
		r, g, b = x, 0, c
	default:
		r, g, b = c, 0, x
	}
	return color.RGBA{uint8((r + m) * 255), uint8((g + m) * 255), uint8((b + m) * 255), 255}
}

// addLine adds one series; a log-scale series skips non-positive points
// (an interval without operations has no latency).
func addLine(p *plot.Plot, name string, c color.Color, dashes []vg.Length, samples []Sample, y func(Sample) float64, logScale bool) error {
	xys := make(plotter.XYs, 0, len(samples))
	for _, s := range samples {
		v := y(s)
		if logScale && v <= 0 {
			continue
		}
		xys = append(xys, plotter.XY{X: s.At.Seconds(), Y: v})
	}
	if len(xys) == 0 {
		return nil
	}
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = c
	l.Dashes = dashes
	l.Width = vg.Points(1.2)
	p.Add(l)
	if name != "" {
		p.Legend.Add(name, l)
	}
	return nil
}
