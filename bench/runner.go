package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// ErrCASMismatch is what an OpFunc returns for a compare-and-set that
// completed but did not write (another writer got there first). The runner
// counts it as a completed operation, in Result.CASFailures, not as an
// error.
var ErrCASMismatch = errors.New("bench: compare-and-set version mismatch")

// OpFunc performs one operation and returns nil, ErrCASMismatch (possibly
// wrapped), or the error that made it fail.
type OpFunc func(ctx context.Context) error

// OpFactory returns worker i's OpFunc. Each worker calls it once, before
// the run starts, and is the only caller of what it gets: the OpFunc may
// keep per-worker state (a random source, buffers) without locking.
type OpFactory func(worker int) OpFunc

// Histogram bounds, in microseconds: 1 µs to 1 minute covers everything a
// request can take within any sane timeout (a longer one is clamped to the
// top, and still counted).
const (
	histMin     = 1
	histMax     = int64(time.Minute / time.Microsecond)
	histSigFigs = 3
	// Interval histograms (progress and plot) are per sample, per worker:
	// two significant digits keep each to about 20 KB.
	intervalSigFigs = 2
)

func newHistogram() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histSigFigs) }

// RunConfig configures one run of Run: a fixed number of workers applying
// one operation for a while.
type RunConfig struct {
	// Name labels the result and the progress lines ("write", say).
	Name string
	// Clients is the number of workers, each issuing one operation at a
	// time. Required (at least 1).
	Clients int
	// Total is the number of measured operations; 0 means the run lasts
	// Duration instead.
	Total int64
	// Duration is how long the run is measured, when Total is 0.
	// Default: 10s.
	Duration time.Duration
	// Warmup is run first and not counted. Default: 1s; negative: none.
	Warmup time.Duration
	// Rate, if positive, is the total arrival rate in operations per
	// second, spread over the workers with staggered schedules, and
	// latency is measured from each operation's intended start (see
	// Options.Rate). 0: closed loop.
	Rate float64
	// Progress receives a progress line every ProgressInterval. Default:
	// nil, none.
	Progress io.Writer
	// ProgressInterval is the period of progress lines. Default: 1s.
	ProgressInterval time.Duration
	// SampleInterval is the period of the Result's Samples (what a plot
	// draws); a progress line covers the samples since the previous one.
	// Default: 1s.
	SampleInterval time.Duration
}

// EnsureDefaults replaces every zero field with its default.
func (c *RunConfig) EnsureDefaults() {
	if c.Duration == 0 && c.Total == 0 {
		c.Duration = DefaultDuration
	}
	if c.Warmup == 0 {
		c.Warmup = DefaultWarmup
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = DefaultProgressInterval
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = DefaultSampleInterval
	}
}

// Validate reports every problem with the RunConfig (after EnsureDefaults).
func (c *RunConfig) Validate() error {
	var errs []error
	if c.Clients < 1 {
		errs = append(errs, fmt.Errorf("bench: Clients %d must be at least 1", c.Clients))
	}
	if c.Total < 0 {
		errs = append(errs, fmt.Errorf("bench: Total %d is negative", c.Total))
	}
	if c.Duration < 0 {
		errs = append(errs, fmt.Errorf("bench: Duration %v is negative", c.Duration))
	}
	if c.Total > 0 && c.Duration > 0 {
		errs = append(errs, errors.New("bench: Total and Duration are exclusive"))
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		errs = append(errs, fmt.Errorf("bench: Rate %v must be a finite number >= 0", c.Rate))
	}
	return errors.Join(errs...)
}

// Result is what one run measured.
type Result struct {
	// Workload and Clients are the run's RunConfig.Name and Clients.
	Workload string
	Clients  int
	// Ops counts the measured operations that completed, CAS mismatches
	// included; Errors those that failed. A run cancelled by its context
	// counts neither the operations the cancellation cut short.
	Ops, Errors int64
	// CASFailures counts the compare-and-sets that completed without
	// writing (a subset of Ops).
	CASFailures int64
	// Elapsed runs from the end of the warmup to the end of the last
	// operation.
	Elapsed time.Duration
	// Latency holds the latency of every completed operation, in
	// microseconds: the merge of the workers' own histograms. With a Rate
	// it is measured from the intended start.
	Latency *hdrhistogram.Histogram
	// Samples are per-interval (per second by default) figures, in order;
	// intervals in which nothing completed are present, with zeros.
	Samples []Sample
	// FirstError is the first error an operation returned, if any.
	FirstError error
	// Cancelled is set when the context ended the run early.
	Cancelled bool
}

// Sample is one interval of a run.
type Sample struct {
	// At is the end of the interval, from the end of the warmup.
	At time.Duration
	// Ops and Errors completed in the interval.
	Ops, Errors int64
	// Throughput is Ops per second of the interval.
	Throughput float64
	// Latency percentiles of the operations completed in the interval
	// (zero when there were none).
	P50, P90, P99, P999, Max time.Duration
}

// Throughput is completed operations per second of Elapsed.
func (r *Result) Throughput() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// Percentile returns the latency at quantile q (0-100).
func (r *Result) Percentile(q float64) time.Duration {
	return time.Duration(r.Latency.ValueAtQuantile(q)) * time.Microsecond
}

// Max returns the largest latency recorded.
func (r *Result) Max() time.Duration {
	return time.Duration(r.Latency.Max()) * time.Microsecond
}

// Err reports a run in which every operation failed: nil if any
// completed, or if none was tried.
func (r *Result) Err() error {
	if r.Ops > 0 || r.Errors == 0 {
		return nil
	}
	return fmt.Errorf("%s with %d clients: all %d operations failed; the first: %w", r.Workload, r.Clients, r.Errors, r.FirstError)
}

// Run runs one measurement: cfg.Clients workers, each calling its OpFunc
// in a loop, until cfg.Total operations or cfg.Duration (after the
// warmup), or until ctx ends (the Result is then partial, Cancelled set).
// Operation errors are counted, never fatal. Run returns an error only for
// an invalid cfg. Every goroutine it starts has ended when it returns.
func Run(ctx context.Context, cfg RunConfig, newOp OpFactory) (*Result, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, intervals: make(chan *interval, 2*cfg.Clients)}
	if cfg.Total > 0 {
		r.remaining.Store(cfg.Total)
	}
	r.pool.New = func() any {
		return &interval{hist: hdrhistogram.New(histMin, histMax, intervalSigFigs)}
	}
	workers := make([]*worker, cfg.Clients)
	for i := range workers {
		workers[i] = &worker{r: r, id: i, op: newOp(i), hist: newHistogram(), cur: r.newInterval(-1)}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.start = time.Now()
	r.measureStart = r.start
	if cfg.Warmup > 0 {
		r.measureStart = r.start.Add(cfg.Warmup)
	}
	r.lastIdx = -1
	if cfg.Duration > 0 {
		r.deadline = r.measureStart.Add(cfg.Duration)
		r.lastIdx = max(int((cfg.Duration+cfg.SampleInterval-1)/cfg.SampleInterval)-1, 0)
	}

	collected := make(chan *collector, 1)
	go func() { collected <- r.collect(runCtx) }()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(runCtx) })
	}
	wg.Wait()
	end := r.lastEnd()
	close(r.intervals) // every worker has flushed its last interval
	col := <-collected

	res := &Result{
		Workload:  cfg.Name,
		Clients:   cfg.Clients,
		Latency:   newHistogram(),
		Cancelled: ctx.Err() != nil,
	}
	if end.After(r.measureStart) {
		res.Elapsed = end.Sub(r.measureStart)
	}
	var firstErrAt time.Time
	for _, w := range workers {
		res.Ops += w.ops
		res.Errors += w.errors
		res.CASFailures += w.casFailures
		res.Latency.Merge(w.hist)
		if w.firstErr != nil && (res.FirstError == nil || w.firstErrAt.Before(firstErrAt)) {
			res.FirstError, firstErrAt = w.firstErr, w.firstErrAt
		}
	}
	res.Samples = col.samples(cfg.SampleInterval)
	return res, nil
}

type runner struct {
	cfg RunConfig
	// start is when the workers start; measureStart is the end of the
	// warmup; deadline (zero with Total) the end of the measurement.
	start, measureStart, deadline time.Time
	// remaining counts the measured operations still to claim when Total
	// is set: one atomic add per operation, the only shared write on the
	// hot path.
	remaining atomic.Int64
	// intervals carries each worker's finished interval to the collector;
	// ownership of the histogram moves with it, so neither side locks.
	intervals chan *interval
	pool      sync.Pool // of *interval, reset
	// lastEndNanos is the latest operation end, from start.
	lastEndNanos atomic.Int64
	// lastIdx is the last interval index of a Duration run: operations in
	// flight at the deadline complete after it and are counted in the last
	// full interval rather than in a sliver of one. -1: no limit.
	lastIdx int
}

func (r *runner) newInterval(idx int) *interval {
	iv := r.pool.Get().(*interval)
	iv.idx = idx
	return iv
}

func (r *runner) lastEnd() time.Time {
	return r.start.Add(time.Duration(r.lastEndNanos.Load()))
}

// interval is one worker's figures for one sample interval.
type interval struct {
	idx         int // interval index from measureStart; -1: nothing yet
	ops, errors int64
	hist        *hdrhistogram.Histogram
}

type worker struct {
	r  *runner
	id int
	op OpFunc

	// Owned by the worker's goroutine until Run's wg.Wait.
	hist                     *hdrhistogram.Histogram
	ops, errors, casFailures int64
	firstErr                 error
	firstErrAt               time.Time
	cur                      *interval
	lastEnd                  time.Duration
}

func (w *worker) run(ctx context.Context) {
	defer w.flush()
	r := w.r
	var (
		period time.Duration
		next   time.Time
		timer  *time.Timer
	)
	if r.cfg.Rate > 0 {
		// Each worker runs its share of the rate on its own schedule,
		// staggered by its id so that the workers' arrivals interleave
		// evenly instead of coming in bursts of Clients.
		period = time.Duration(float64(time.Second) * float64(r.cfg.Clients) / r.cfg.Rate)
		next = r.start.Add(period * time.Duration(w.id) / time.Duration(r.cfg.Clients))
		timer = time.NewTimer(time.Hour)
		defer timer.Stop()
	}
	for {
		var intended time.Time
		if period > 0 {
			intended, next = next, next.Add(period)
			if wait := time.Until(intended); wait > 0 {
				timer.Reset(wait)
				select {
				case <-ctx.Done():
					return
				case <-timer.C:
				}
			}
		} else {
			intended = time.Now()
		}
		if ctx.Err() != nil {
			return
		}
		// A worker behind its schedule keeps intended times in the past:
		// stop at the deadline in real time too, or an overloaded run
		// would go on working off its backlog long after it should end.
		if !r.deadline.IsZero() && (!intended.Before(r.deadline) || time.Now().After(r.deadline)) {
			return
		}
		measured := !intended.Before(r.measureStart)
		if measured && r.cfg.Total > 0 && r.remaining.Add(-1) < 0 {
			return
		}
		err := w.op(ctx)
		end := time.Now()
		if err != nil && ctx.Err() != nil {
			return // cut short by cancellation: neither a result nor an error
		}
		if !measured {
			continue
		}
		w.record(intended, end, err)
	}
}

// record accounts one measured operation.
func (w *worker) record(intended, end time.Time, err error) {
	r := w.r
	idx := int(end.Sub(r.measureStart) / r.cfg.SampleInterval)
	if r.lastIdx >= 0 {
		idx = min(idx, r.lastIdx)
	}
	if idx != w.cur.idx {
		if w.cur.idx >= 0 {
			r.intervals <- w.cur
			w.cur = r.newInterval(idx)
		}
		w.cur.idx = idx
	}
	if e := end.Sub(r.start); e > w.lastEnd {
		w.lastEnd = e
	}
	casMismatch := errors.Is(err, ErrCASMismatch)
	if err != nil && !casMismatch {
		w.errors++
		w.cur.errors++
		if w.firstErr == nil {
			w.firstErr, w.firstErrAt = err, end
		}
		return
	}
	if casMismatch {
		w.casFailures++
	}
	us := max(end.Sub(intended).Microseconds(), histMin)
	us = min(us, histMax)
	w.hist.RecordValue(us)     //nolint:errcheck // clamped into range above
	w.cur.hist.RecordValue(us) //nolint:errcheck // same
	w.ops++
	w.cur.ops++
}

// flush hands the worker's last interval to the collector and publishes
// its last end time.
func (w *worker) flush() {
	if w.cur.idx >= 0 {
		w.r.intervals <- w.cur
	}
	w.cur = nil
	for {
		old := w.r.lastEndNanos.Load()
		if int64(w.lastEnd) <= old || w.r.lastEndNanos.CompareAndSwap(old, int64(w.lastEnd)) {
			return
		}
	}
}

// collector merges the workers' intervals by index.
type collector struct {
	r         *runner
	byIdx     map[int]*interval
	total     *interval // everything so far, for the progress line
	printedTo int       // progress printed for intervals < printedTo
}

// collect receives intervals until the workers are done (the channel is
// closed), printing a progress line for each interval once it is over.
// Workers hand an interval over with their first operation in the next
// one, so a line waits a quarter interval for stragglers; an operation
// longer than that (or a worker sleeping on a slow --rate schedule) is
// counted in the Samples but may miss its line.
func (r *runner) collect(ctx context.Context) *collector {
	col := &collector{r: r, byIdx: map[int]*interval{}, total: &interval{hist: hdrhistogram.New(histMin, histMax, intervalSigFigs)}}
	var tick <-chan time.Time
	next := r.measureStart.Add(r.cfg.ProgressInterval + r.cfg.ProgressInterval/4)
	if r.cfg.Progress != nil {
		if r.measureStart.After(r.start) {
			fmt.Fprintf(r.cfg.Progress, "%s c=%d: warming up for %v\n", r.cfg.Name, r.cfg.Clients, r.cfg.Warmup)
		}
		t := time.NewTimer(time.Until(next))
		defer t.Stop()
		tick = t.C
		done := ctx.Done()
		for {
			select {
			case iv, ok := <-r.intervals:
				if !ok {
					return col
				}
				col.add(iv)
			case now := <-tick:
				col.progress(now)
				next = next.Add(r.cfg.ProgressInterval)
				t.Reset(time.Until(next))
			case <-done:
				// Keep draining: the workers are stopping and flush.
				tick, done = nil, nil
			}
		}
	}
	for iv := range r.intervals {
		col.add(iv)
	}
	return col
}

func (col *collector) add(iv *interval) {
	m := col.byIdx[iv.idx]
	if m == nil {
		m = &interval{idx: iv.idx, hist: hdrhistogram.New(histMin, histMax, intervalSigFigs)}
		col.byIdx[iv.idx] = m
	}
	m.ops += iv.ops
	m.errors += iv.errors
	m.hist.Merge(iv.hist)
	col.total.ops += iv.ops
	col.total.errors += iv.errors
	col.total.hist.Merge(iv.hist)
	iv.ops, iv.errors = 0, 0
	iv.hist.Reset()
	col.r.pool.Put(iv)
}

// progress prints the line of the samples that ended since the last
// line, a grace period before now.
func (col *collector) progress(now time.Time) {
	r := col.r
	end := int(now.Add(-r.cfg.ProgressInterval/4).Sub(r.measureStart) / r.cfg.SampleInterval) // exclusive
	if end <= col.printedTo {
		return
	}
	h := hdrhistogram.New(histMin, histMax, intervalSigFigs)
	var ops, errs int64
	for idx := col.printedTo; idx < end; idx++ {
		if m := col.byIdx[idx]; m != nil {
			ops += m.ops
			errs += m.errors
			h.Merge(m.hist)
		}
	}
	span := time.Duration(end-col.printedTo) * r.cfg.SampleInterval
	col.printedTo = end
	at := time.Duration(end) * r.cfg.SampleInterval
	fmt.Fprintf(r.cfg.Progress, "%s c=%d %6s  %9.0f ops/s  p99 %8s  errors %d  | so far: %d ops, p99 %s, errors %d\n",
		r.cfg.Name, r.cfg.Clients, at, float64(ops)/span.Seconds(), fmtMS(time.Duration(h.ValueAtQuantile(99))*time.Microsecond), errs,
		col.total.ops, fmtMS(time.Duration(col.total.hist.ValueAtQuantile(99))*time.Microsecond), col.total.errors)
}

// samples returns one Sample per interval index from 0 to the last one
// that saw an operation.
func (col *collector) samples(period time.Duration) []Sample {
	last := -1
	for idx := range col.byIdx {
		last = max(last, idx)
	}
	out := make([]Sample, 0, last+1)
	for idx := 0; idx <= last; idx++ {
		s := Sample{At: time.Duration(idx+1) * period}
		if m := col.byIdx[idx]; m != nil {
			s.Ops, s.Errors = m.ops, m.errors
			s.Throughput = float64(m.ops) / period.Seconds()
			if m.ops > 0 {
				q := func(p float64) time.Duration { return time.Duration(m.hist.ValueAtQuantile(p)) * time.Microsecond }
				s.P50, s.P90, s.P99, s.P999 = q(50), q(90), q(99), q(99.9)
				s.Max = time.Duration(m.hist.Max()) * time.Microsecond
			}
		}
		out = append(out, s)
	}
	return out
}

// fmtMS formats d in milliseconds with three decimals: the unit of the
// table and of the JSON.
func fmtMS(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/float64(time.Millisecond))
}
