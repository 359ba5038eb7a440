package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Summary is the stable JSON form of a Result, one object per run:
//
//	{"workload","clients","ops","errors","seconds","throughput",
//	 "latency_ms":{"p50","p90","p99","p999","max"}}
//
// Scripts and dashboards parse it: add nothing to it, rename nothing.
type Summary struct {
	Workload   string    `json:"workload"`
	Clients    int       `json:"clients"`
	Ops        int64     `json:"ops"`
	Errors     int64     `json:"errors"`
	Seconds    float64   `json:"seconds"`
	Throughput float64   `json:"throughput"`
	LatencyMS  LatencyMS `json:"latency_ms"`
}

// LatencyMS are latency percentiles in milliseconds.
type LatencyMS struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// Summary returns the JSON form of r, rounded to what the measurement
// can tell: microseconds, milliseconds of run time, 0.1 ops/s.
func (r *Result) Summary() Summary {
	ms := func(d time.Duration) float64 { return round(float64(d)/float64(time.Millisecond), 3) }
	return Summary{
		Workload:   r.Workload,
		Clients:    r.Clients,
		Ops:        r.Ops,
		Errors:     r.Errors,
		Seconds:    round(r.Elapsed.Seconds(), 3),
		Throughput: round(r.Throughput(), 1),
		LatencyMS: LatencyMS{
			P50:  ms(r.Percentile(50)),
			P90:  ms(r.Percentile(90)),
			P99:  ms(r.Percentile(99)),
			P999: ms(r.Percentile(99.9)),
			Max:  ms(r.Max()),
		},
	}
}

func round(v float64, decimals int) float64 {
	p := math.Pow(10, float64(decimals))
	return math.Round(v*p) / p
}

// Reporter prints results as they come: a table (a header, then one row
// per run) or, with JSON, one Summary object per line.
type Reporter struct {
	w       io.Writer
	json    bool
	cas     bool // add a cas-fail column
	started bool
}

// NewReporter returns a Reporter writing to w. showCAS adds the column of
// compare-and-set failures to the table (JSON never has it: its schema is
// fixed).
func NewReporter(w io.Writer, jsonLines, showCAS bool) *Reporter {
	return &Reporter{w: w, json: jsonLines, cas: showCAS}
}

const (
	headerFmt = "%-10s %7s %10s %7s %7s %10s %8s %8s %8s %8s %8s"
	rowFmt    = "%-10s %7d %10d %7d %7.1f %10.0f %8.3f %8.3f %8.3f %8.3f %8.3f"
)

// Add prints one result.
func (rp *Reporter) Add(r *Result) error {
	if rp.json {
		b, err := json.Marshal(r.Summary())
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(rp.w, "%s\n", b)
		return err
	}
	var b strings.Builder
	if !rp.started {
		rp.started = true
		fmt.Fprintf(&b, headerFmt, "workload", "clients", "ops", "errors", "seconds", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms")
		if rp.cas {
			fmt.Fprintf(&b, " %9s", "cas-fail")
		}
		b.WriteByte('\n')
	}
	s := r.Summary()
	fmt.Fprintf(&b, rowFmt, s.Workload, s.Clients, s.Ops, s.Errors, s.Seconds, s.Throughput,
		s.LatencyMS.P50, s.LatencyMS.P90, s.LatencyMS.P99, s.LatencyMS.P999, s.LatencyMS.Max)
	if rp.cas {
		fmt.Fprintf(&b, " %9d", r.CASFailures)
	}
	b.WriteByte('\n')
	_, err := io.WriteString(rp.w, b.String())
	return err
}
