package bench

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSummaryJSONSchema pins the --json schema: scripts parse it, so its
// key set must not change.
func TestSummaryJSONSchema(t *testing.T) {
	res, err := Run(context.Background(), RunConfig{Name: "write", Clients: 2, Total: 50, Warmup: -1}, sleepOp(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(res.Summary())
	if err != nil {
		t.Fatal(err)
	}
	checkSchema(t, string(b))
}

// checkSchema checks one JSON line against the stable schema and returns
// it decoded.
func checkSchema(t *testing.T, line string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		t.Fatalf("%q: %v", line, err)
	}
	if got, want := slices.Sorted(maps.Keys(m)), []string{"clients", "errors", "latency_ms", "ops", "seconds", "throughput", "workload"}; !slices.Equal(got, want) {
		t.Errorf("keys %v, want exactly %v", got, want)
	}
	lat, ok := m["latency_ms"].(map[string]any)
	if !ok {
		t.Fatalf("latency_ms is %T", m["latency_ms"])
	}
	if got, want := slices.Sorted(maps.Keys(lat)), []string{"max", "p50", "p90", "p99", "p999"}; !slices.Equal(got, want) {
		t.Errorf("latency_ms keys %v, want exactly %v", got, want)
	}
	if _, ok := m["workload"].(string); !ok {
		t.Errorf("workload is %T, want a string", m["workload"])
	}
	for _, k := range []string{"clients", "ops", "errors", "seconds", "throughput"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("%s is %T, want a number", k, m[k])
		}
	}
	for k, v := range lat {
		if _, ok := v.(float64); !ok {
			t.Errorf("latency_ms.%s is %T, want a number", k, v)
		}
	}
	return m
}

// TestSweepRows runs sweeps over fake operations and checks the output:
// one row (or JSON line) per workload and concurrency, in order, and the
// preload hook called before each workload.
func TestSweepRows(t *testing.T) {
	for _, tc := range []struct {
		name      string
		workloads []Workload
		clients   []int
		json      bool
	}{
		{"table, one workload", []Workload{WorkloadWrite}, []int{1, 2, 4}, false},
		{"table with cas column", []Workload{WorkloadCAS}, []int{2}, false},
		{"json, two workloads", []Workload{WorkloadWrite, WorkloadRead}, []int{1, 3}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{Endpoints: []string{"unused:1"}, Workloads: tc.workloads, Clients: tc.clients,
				Duration: 50 * time.Millisecond, Warmup: -1, JSON: tc.json, ProgressInterval: -1}
			o.EnsureDefaults()
			var prepared []Workload
			prepare := func(_ context.Context, w Workload) error { prepared = append(prepared, w); return nil }
			var out strings.Builder
			results, err := sweep(context.Background(), o, func(Workload) OpFactory { return sleepOp(time.Millisecond) }, prepare, &out, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(prepared, tc.workloads) {
				t.Errorf("prepared %v, want %v", prepared, tc.workloads)
			}
			want := len(tc.workloads) * len(tc.clients)
			if len(results) != want {
				t.Fatalf("%d results, want %d", len(results), want)
			}
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			if !tc.json {
				if len(lines) != want+1 {
					t.Fatalf("%d lines, want a header and %d rows:\n%s", len(lines), want, out.String())
				}
				header := strings.Fields(lines[0])
				if header[0] != "workload" || header[1] != "clients" || !strings.Contains(lines[0], "p99.9 ms") {
					t.Errorf("header %q", lines[0])
				}
				if hasCAS := strings.Contains(lines[0], "cas-fail"); hasCAS != slices.Contains(tc.workloads, WorkloadCAS) {
					t.Errorf("cas-fail column %v in %q", hasCAS, lines[0])
				}
				lines = lines[1:]
			} else if len(lines) != want {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), want, out.String())
			}
			i := 0
			for _, w := range tc.workloads {
				for _, c := range tc.clients {
					if tc.json {
						m := checkSchema(t, lines[i])
						if m["workload"] != string(w) || m["clients"] != float64(c) || m["ops"].(float64) <= 0 {
							t.Errorf("line %d: %s, want workload %s clients %d and some ops", i, lines[i], w, c)
						}
					} else {
						f := strings.Fields(lines[i])
						if f[0] != string(w) || f[1] != strconv.Itoa(c) || f[2] == "0" {
							t.Errorf("row %d: %q, want workload %s clients %d and some ops", i, lines[i], w, c)
						}
					}
					i++
				}
			}
		})
	}
}

// TestSweepAllFailed: a run in which everything fails is reported as a
// row, the sweep goes on, and the error names the first failure.
func TestSweepAllFailed(t *testing.T) {
	refused := errors.New("dial tcp 127.0.0.1:9: connection refused")
	o := Options{Endpoints: []string{"unused:1"}, Workloads: []Workload{WorkloadWrite, WorkloadRead}, Clients: []int{2},
		Duration: 30 * time.Millisecond, Warmup: -1, ProgressInterval: -1}
	o.EnsureDefaults()
	newOp := func(w Workload) OpFactory {
		if w == WorkloadRead {
			return sleepOp(time.Millisecond)
		}
		return func(int) OpFunc {
			return func(context.Context) error { time.Sleep(time.Millisecond); return refused }
		}
	}
	var out strings.Builder
	results, err := sweep(context.Background(), o, newOp, func(context.Context, Workload) error { return nil }, &out, nil)
	if !errors.Is(err, refused) || !strings.Contains(err.Error(), "write with 2 clients: all") {
		t.Errorf("err = %v, want the first failure of the write run", err)
	}
	if len(results) != 2 || strings.Count(out.String(), "\n") != 3 {
		t.Errorf("%d results, output:\n%s", len(results), out.String())
	}
}

func TestWritePlot(t *testing.T) {
	var results []*Result
	for _, clients := range []int{1, 4} {
		res, err := Run(context.Background(), RunConfig{Name: "write", Clients: clients, Duration: 300 * time.Millisecond,
			Warmup: -1, SampleInterval: 100 * time.Millisecond}, sleepOp(time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		file    string
		results []*Result
		magic   string
	}{
		{"one.png", results[:1], "\x89PNG"},
		{"sweep.png", results, "\x89PNG"},
		{"sweep.svg", results, "<?xml"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join(dir, tc.file)
			if err := WritePlot(path, tc.results); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), tc.magic) {
				t.Errorf("%s starts with %q", tc.file, b[:min(len(b), 8)])
			}
		})
	}
}
