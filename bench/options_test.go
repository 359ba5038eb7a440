package bench

import (
	"errors"
	"flag"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, o Options)
		// errs are substrings the error must contain, each; none: success.
		errs []string
	}{
		{
			name: "defaults",
			args: []string{"--endpoints", "localhost:8080"},
			check: func(t *testing.T, o Options) {
				want := Options{
					Endpoints: []string{"localhost:8080"}, Workloads: []Workload{WorkloadWrite},
					Keys: 100_000, Distribution: Uniform, KeyPrefix: "bench:", ValueSize: 256,
					Clients: []int{64}, Conns: 2, Duration: 10 * time.Second, Warmup: time.Second,
					Timeout: 5 * time.Second, PreloadBatch: 500, PreloadConcurrency: 8,
					ProgressInterval: time.Second, Logger: o.Logger,
				}
				if !reflect.DeepEqual(o, want) {
					t.Errorf("got  %+v\nwant %+v", o, want)
				}
			},
		},
		{
			name: "sweep against a local cluster",
			args: []string{"--local", "--workload", "write, read,stale-read", "--clients", "1,16,64,256", "--distribution", "zipfian", "--json", "--plot", "out.png"},
			check: func(t *testing.T, o Options) {
				if !o.Local || o.Binary == "" {
					t.Errorf("Local %v, Binary %q: want the running executable", o.Local, o.Binary)
				}
				if want := []Workload{WorkloadWrite, WorkloadRead, WorkloadStaleRead}; !reflect.DeepEqual(o.Workloads, want) {
					t.Errorf("Workloads %v, want %v", o.Workloads, want)
				}
				if want := []int{1, 16, 64, 256}; !reflect.DeepEqual(o.Clients, want) {
					t.Errorf("Clients %v, want %v", o.Clients, want)
				}
				if o.Distribution != Zipfian || !o.JSON || o.PlotFile != "out.png" {
					t.Errorf("Distribution %q JSON %v PlotFile %q", o.Distribution, o.JSON, o.PlotFile)
				}
			},
		},
		{
			name: "total instead of duration, fixed rate",
			args: []string{"--endpoints", "a:1,b:2", "--total", "5000", "--rate", "2000", "--conns", "4"},
			check: func(t *testing.T, o Options) {
				if o.Total != 5000 || o.Duration != 0 || o.Rate != 2000 || o.Conns != 4 || len(o.Endpoints) != 2 {
					t.Errorf("Total %d Duration %v Rate %v Conns %d Endpoints %v", o.Total, o.Duration, o.Rate, o.Conns, o.Endpoints)
				}
			},
		},
		{
			name: "zero warmup, progress and preload mean none",
			args: []string{"--endpoints", "a:1", "--warmup", "0", "--progress", "0", "--preload=false"},
			check: func(t *testing.T, o Options) {
				if o.Warmup >= 0 || o.ProgressInterval >= 0 || !o.SkipPreload {
					t.Errorf("Warmup %v ProgressInterval %v SkipPreload %v", o.Warmup, o.ProgressInterval, o.SkipPreload)
				}
			},
		},
		{name: "no target", args: nil, errs: []string{"no target"}},
		{name: "two targets", args: []string{"--local", "--endpoints", "a:1"}, errs: []string{"exclusive"}},
		{name: "empty endpoint", args: []string{"--endpoints", "a:1,,b:2"}, errs: []string{"endpoint 2 is empty"}},
		{name: "unknown workload", args: []string{"--local", "--workload", "write,scan"}, errs: []string{`unknown workload "scan"`}},
		{name: "unknown distribution", args: []string{"--local", "--distribution", "pareto"}, errs: []string{`unknown distribution "pareto"`}},
		{name: "bad clients", args: []string{"--local", "--clients", "1,x,0"}, errs: []string{`"x" is not an integer`, "clients 0 must be at least 1"}},
		{name: "total and duration", args: []string{"--local", "--total", "10", "--duration", "1s"}, errs: []string{"total and duration are exclusive"}},
		{name: "bad plot file", args: []string{"--local", "--plot", "out.gif"}, errs: []string{".png, .svg or .pdf"}},
		{name: "stray argument", args: []string{"--local", "extra"}, errs: []string{`unexpected argument "extra"`}},
		{
			name: "every problem at once",
			args: []string{"--keys", "-1", "--value-size", "-5", "--conns", "0", "--rate", "-1", "--preload-batch", "-1", "--timeout", "-1s", "--total", "-3"},
			errs: []string{"no target", "keys -1", "value size -5", "conns must not be 0", "rate -1", "preload batch -1", "timeout -1s", "total -3"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseArgs(tc.args, io.Discard)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				tc.check(t, o)
				return
			}
			if err == nil {
				t.Fatalf("no error; want one containing %q", tc.errs)
			}
			for _, want := range tc.errs {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

func TestParseArgsHelp(t *testing.T) {
	var out strings.Builder
	if _, err := ParseArgs([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"--local", "-clients", "-rate", "-json", "-plot", "ycsb-a"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help does not mention %q", want)
		}
	}
}

// TestParseArgsBadFlag: a bad flag is one error for the caller to print,
// not the flag package's message plus the whole usage.
func TestParseArgsBadFlag(t *testing.T) {
	var out strings.Builder
	_, err := ParseArgs([]string{"--bogus"}, &out)
	if err == nil || !strings.Contains(err.Error(), "-bogus") {
		t.Fatalf("err = %v, want one naming -bogus", err)
	}
	if out.Len() > 0 {
		t.Errorf("printed %q; the caller prints the error", out.String())
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		errs []string
	}{
		{"endpoints suffice", Options{Endpoints: []string{"a:1"}}, nil},
		{"local without binary", Options{Local: true}, []string{"local needs the kvnode binary"}},
		{"negative duration", Options{Endpoints: []string{"a:1"}, Duration: -time.Second}, []string{"duration -1s is negative"}},
		{"zero client in a sweep", Options{Endpoints: []string{"a:1"}, Clients: []int{4, 0}}, []string{"clients 0 must be at least 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.EnsureDefaults()
			err := tc.o.Validate()
			if len(tc.errs) == 0 && err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			for _, want := range tc.errs {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error %v does not contain %q", err, want)
				}
			}
		})
	}
}
