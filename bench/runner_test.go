package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// sleepOp is a fake operation that takes d.
func sleepOp(d time.Duration) OpFactory {
	return func(int) OpFunc {
		return func(ctx context.Context) error {
			select {
			case <-time.After(d):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// TestCoordinatedOmission runs one worker against a fake operation that
// takes 20 ms. Closed loop, each latency is the 20 ms. At a fixed rate of
// 100/s (one op due every 10 ms) the worker falls further behind with
// every op: op i is due at 10i ms but starts at 20i ms, so its corrected
// latency is 10i+20 ms, and over a 1 s run the queueing delay reaches half
// a second. Latency measured from the actual start (the omission) would
// have stayed at 20 ms. A fast op at the same rate keeps to the schedule.
func TestCoordinatedOmission(t *testing.T) {
	for _, tc := range []struct {
		name           string
		op             time.Duration
		rate           float64
		minP50, maxP50 time.Duration
		minMax, maxMax time.Duration
		minOps, maxOps int64
	}{
		{"closed loop, slow op", 20 * time.Millisecond, 0, 19 * time.Millisecond, 60 * time.Millisecond, 19 * time.Millisecond, 150 * time.Millisecond, 15, 51},
		{"fixed rate, slow op: queueing delay counted", 20 * time.Millisecond, 100, 150 * time.Millisecond, 400 * time.Millisecond, 400 * time.Millisecond, 700 * time.Millisecond, 15, 51},
		{"fixed rate, fast op: on schedule", time.Millisecond, 100, time.Millisecond, 30 * time.Millisecond, time.Millisecond, 100 * time.Millisecond, 90, 101},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Run(context.Background(), RunConfig{
				Name: "fake", Clients: 1, Duration: time.Second, Warmup: -1, Rate: tc.rate,
			}, sleepOp(tc.op))
			if err != nil {
				t.Fatal(err)
			}
			p50, mx := res.Percentile(50), res.Max()
			t.Logf("ops %d, p50 %v, max %v", res.Ops, p50, mx)
			if p50 < tc.minP50 || p50 > tc.maxP50 {
				t.Errorf("p50 %v, want [%v, %v]", p50, tc.minP50, tc.maxP50)
			}
			if mx < tc.minMax || mx > tc.maxMax {
				t.Errorf("max %v, want [%v, %v]", mx, tc.minMax, tc.maxMax)
			}
			if res.Ops < tc.minOps || res.Ops > tc.maxOps {
				t.Errorf("ops %d, want [%d, %d]", res.Ops, tc.minOps, tc.maxOps)
			}
		})
	}
}

// TestRateSpreadsOverWorkers checks that the rate is the total, not per
// worker, and is kept with many workers.
func TestRateSpreadsOverWorkers(t *testing.T) {
	res, err := Run(context.Background(), RunConfig{Clients: 16, Duration: time.Second, Warmup: -1, Rate: 400}, sleepOp(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops < 360 || res.Ops > 410 {
		t.Errorf("ops %d at 400/s for 1s", res.Ops)
	}
}

// TestRunOutcomes checks the accounting of a run with a fixed total:
// successes, CAS mismatches (completed ops, apart) and errors (apart, the
// first one kept), and that warmup ops are not counted.
func TestRunOutcomes(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		warmup  time.Duration
		outcome func(i int) error // of a worker's i-th op
		ops     int64
		errs    int64
		cas     int64
	}{
		{"all fine", -1, func(int) error { return nil }, 1000, 0, 0},
		{"every 4th fails", -1, func(i int) error {
			if i%4 == 3 {
				return fmt.Errorf("op %d: %w", i, boom)
			}
			return nil
		}, 750, 250, 0},
		{"every other CAS loses", -1, func(i int) error {
			if i%2 == 1 {
				return fmt.Errorf("wrapped: %w", ErrCASMismatch)
			}
			return nil
		}, 1000, 0, 500},
		{"warmup not counted", 50 * time.Millisecond, func(int) error { return nil }, 1000, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const clients = 4
			var opSeq seq
			res, err := Run(context.Background(), RunConfig{Clients: clients, Total: 1000, Warmup: tc.warmup},
				func(int) OpFunc {
					// Ops are claimed from a shared total, so per-worker
					// counts vary: number them over all workers.
					return func(context.Context) error { return tc.outcome(int(opSeq.next())) }
				})
			if err != nil {
				t.Fatal(err)
			}
			if res.Ops+res.Errors != 1000 {
				t.Errorf("ops %d + errors %d != total 1000", res.Ops, res.Errors)
			}
			if tc.warmup < 0 && (res.Ops != tc.ops || res.Errors != tc.errs || res.CASFailures != tc.cas) {
				t.Errorf("ops %d errors %d cas %d, want %d %d %d", res.Ops, res.Errors, res.CASFailures, tc.ops, tc.errs, tc.cas)
			}
			if res.Latency.TotalCount() != res.Ops {
				t.Errorf("%d latencies for %d ops", res.Latency.TotalCount(), res.Ops)
			}
			if tc.errs > 0 && !errors.Is(res.FirstError, boom) {
				t.Errorf("FirstError %v", res.FirstError)
			}
			if res.Err() != nil {
				t.Errorf("Err() = %v for a run with successes", res.Err())
			}
		})
	}
}

// seq numbers operations across workers.
type seq struct {
	mu sync.Mutex
	n  int64
}

func (s *seq) next() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return s.n - 1
}

func TestRunAllFail(t *testing.T) {
	refused := errors.New("connection refused")
	res, err := Run(context.Background(), RunConfig{Name: "write", Clients: 3, Total: 30, Warmup: -1},
		func(int) OpFunc { return func(context.Context) error { return refused } })
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 0 || res.Errors != 30 {
		t.Fatalf("ops %d errors %d", res.Ops, res.Errors)
	}
	e := res.Err()
	if !errors.Is(e, refused) || !strings.Contains(e.Error(), "write with 3 clients: all 30 operations failed") {
		t.Errorf("Err() = %v", e)
	}
}

func TestRunCancel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	res, err := Run(ctx, RunConfig{Clients: 8, Duration: time.Minute, Warmup: -1}, sleepOp(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Run took %v after its context ended", el)
	}
	if !res.Cancelled || res.Errors != 0 || res.Ops == 0 {
		t.Errorf("Cancelled %v, ops %d, errors %d: want cancelled, some ops, no errors", res.Cancelled, res.Ops, res.Errors)
	}
}

// TestRunSamplesAndProgress checks the per-interval samples (which the
// plot draws) add up to the result, and that progress lines come out.
func TestRunSamplesAndProgress(t *testing.T) {
	var progress syncBuffer
	res, err := Run(context.Background(), RunConfig{
		Name: "fake", Clients: 4, Duration: 600 * time.Millisecond, Warmup: 100 * time.Millisecond,
		Progress: &progress, ProgressInterval: 200 * time.Millisecond, SampleInterval: 100 * time.Millisecond,
	}, sleepOp(2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Samples) != 6 {
		t.Errorf("%d samples, want 6 (600ms / 100ms)", len(res.Samples))
	}
	var sum int64
	for i, s := range res.Samples {
		sum += s.Ops
		if want := time.Duration(i+1) * 100 * time.Millisecond; s.At != want {
			t.Errorf("sample %d at %v, want %v", i, s.At, want)
		}
		if s.Ops > 0 && (s.P50 <= 0 || s.P99 < s.P50 || s.Max < s.P99) {
			t.Errorf("sample %d: p50 %v p99 %v max %v", i, s.P50, s.P99, s.Max)
		}
	}
	if sum != res.Ops {
		t.Errorf("samples add up to %d ops, result has %d", sum, res.Ops)
	}
	out := progress.String()
	if !strings.Contains(out, "fake c=4: warming up") {
		t.Errorf("no warmup line in:\n%s", out)
	}
	// Lines every 200ms over 600ms, each covering two 100ms samples.
	if n := strings.Count(out, "ops/s"); n < 2 {
		t.Errorf("%d progress lines, want at least 2:\n%s", n, out)
	}
	if !strings.Contains(out, "fake c=4  200ms") {
		t.Errorf("no line for the first two samples in:\n%s", out)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RunConfig
		want string
	}{
		{"no clients", RunConfig{}, "Clients 0"},
		{"total and duration", RunConfig{Clients: 1, Total: 5, Duration: time.Second}, "exclusive"},
		{"negative rate", RunConfig{Clients: 1, Rate: -1}, "Rate -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(context.Background(), tc.cfg, sleepOp(0))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
