package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"kvnode/client"
)

// Workload names a kind of load.
type Workload string

// The workloads. Every one but WorkloadWrite reads keys, which the preload
// phase writes first.
const (
	// WorkloadWrite is Set of a chosen key (quorum-durable).
	WorkloadWrite Workload = "write"
	// WorkloadRead is a linearizable Get.
	WorkloadRead Workload = "read"
	// WorkloadStaleRead is a Get with client.Stale(): any replica answers.
	WorkloadStaleRead Workload = "stale-read"
	// WorkloadA is YCSB's workload A: 50% linearizable reads, 50% updates.
	WorkloadA Workload = "ycsb-a"
	// WorkloadB is YCSB's workload B: 95% reads, 5% updates.
	WorkloadB Workload = "ycsb-b"
	// WorkloadC is YCSB's workload C: 100% reads.
	WorkloadC Workload = "ycsb-c"
	// WorkloadCAS reads a key's version, then compare-and-sets it. A CAS
	// that loses to a concurrent writer is a completed operation, counted
	// in Result.CASFailures, not an error.
	WorkloadCAS Workload = "cas"
)

// Workloads lists every workload, in the order the help text shows them.
var Workloads = []Workload{WorkloadWrite, WorkloadRead, WorkloadStaleRead, WorkloadA, WorkloadB, WorkloadC, WorkloadCAS}

// readFraction is the share of an operation mix that reads (the rest
// updates). CAS counts as a reader: it reads before it writes.
func (w Workload) readFraction() float64 {
	switch w {
	case WorkloadWrite:
		return 0
	case WorkloadA:
		return 0.5
	case WorkloadB:
		return 0.95
	default:
		return 1
	}
}

// needsPreload reports whether the workload reads keys that must exist.
func (w Workload) needsPreload() bool { return w != WorkloadWrite }

func (w Workload) valid() bool {
	for _, k := range Workloads {
		if w == k {
			return true
		}
	}
	return false
}

// Distribution is how operations pick keys.
type Distribution string

const (
	// Uniform: every key equally likely.
	Uniform Distribution = "uniform"
	// Zipfian: YCSB's scrambled zipfian (theta 0.99): a few keys get most
	// of the operations, and the hot keys are spread over the key space
	// (and so over partitions) rather than being the lowest indexes.
	Zipfian Distribution = "zipfian"
)

// Defaults of the Options fields.
const (
	DefaultKeys               = 100_000
	DefaultValueSize          = 256
	DefaultClients            = 64
	DefaultDuration           = 10 * time.Second
	DefaultWarmup             = time.Second
	DefaultPreloadBatch       = 500
	DefaultPreloadConcurrency = 8
	DefaultTimeout            = client.DefaultRequestTimeout
	DefaultProgressInterval   = time.Second
	DefaultSampleInterval     = time.Second
	DefaultKeyPrefix          = "bench:"
)

// Options configure a benchmark: where it runs, what load it applies, and
// what it prints. Execute fills in the default of every zero field
// (EnsureDefaults) and reports every problem at once (Validate).
type Options struct {
	// Endpoints are HTTP addresses (host:port) of the nodes of a running
	// cluster; the Go client learns the rest of the topology from them.
	// Exactly one of Endpoints and Local is required.
	Endpoints []string
	// Local starts a 3-node cluster of real kvnode processes (Binary) on
	// loopback, with its data in a temporary directory removed afterwards.
	Local bool
	// Binary is the kvnode executable Local starts. Required with Local;
	// ParseArgs sets it to the running executable (os.Executable), so
	// `kvnode bench --local` benches its own version.
	Binary string

	// Workloads are run one after the other, each at every Clients value.
	// Default: [write].
	Workloads []Workload
	// Keys is the size of the key space. Default: 100000.
	Keys int
	// Distribution is how keys are picked. Default: uniform.
	Distribution Distribution
	// KeyPrefix starts every key, so that a bench against a shared cluster
	// stays in its own corner. Default: "bench:".
	KeyPrefix string
	// ValueSize is the size of every written value, in bytes. Default: 256.
	ValueSize int

	// Clients are the concurrency levels: each is one run (one table row)
	// with that many workers, each issuing one operation at a time.
	// Default: [64].
	Clients []int
	// Conns is the number of pipelined client connections to each node,
	// shared by all workers. Default: client.DefaultConnsPerNode (2).
	Conns int
	// Total is the number of measured operations of each run; 0 means the
	// run lasts Duration instead.
	Total int64
	// Duration is how long each run is measured, when Total is 0.
	// Default: 10s.
	Duration time.Duration
	// Warmup is run before each measurement and not counted: connections
	// are dialed, leaders settle, caches fill. Default: 1s; negative: none.
	Warmup time.Duration
	// Rate, if positive, is a fixed total arrival rate in operations per
	// second, spread evenly over the workers. Latency is then measured
	// from each operation's intended start on that schedule, not from when
	// a worker got round to it, so that a stall shows up in the latency of
	// every operation queued behind it (coordinated-omission correction,
	// like wrk2 and YCSB's intended-start latency). 0: closed loop, every
	// worker as fast as it can.
	Rate float64
	// Timeout bounds one operation, retries included (the client's
	// RequestTimeout). Default: 5s.
	Timeout time.Duration

	// SkipPreload skips writing the key space before workloads that read;
	// for a cluster that already holds it.
	SkipPreload bool
	// PreloadBatch is the number of keys in one MSet of the preload.
	// Default: 500.
	PreloadBatch int
	// PreloadConcurrency is the number of MSets in flight during the
	// preload. Default: 8.
	PreloadConcurrency int

	// JSON prints one JSON object per run, one per line (see Summary),
	// instead of the table.
	JSON bool
	// PlotFile, if set, receives a chart of throughput and latency
	// percentiles over time, one series per run (.png, .svg or .pdf).
	PlotFile string
	// ProgressInterval is how often a progress line goes to the progress
	// writer. Default: 1s; negative: no progress lines.
	ProgressInterval time.Duration
	// Seed seeds the workers' random sources (worker i uses Seed+i), for
	// reproducible key sequences. Default: 0, a random seed.
	Seed uint64
	// Logger receives the harness's and the client's log lines.
	// Default: discard.
	Logger *slog.Logger
}

// EnsureDefaults replaces every zero field with its default.
func (o *Options) EnsureDefaults() {
	if len(o.Workloads) == 0 {
		o.Workloads = []Workload{WorkloadWrite}
	}
	if o.Keys == 0 {
		o.Keys = DefaultKeys
	}
	if o.Distribution == "" {
		o.Distribution = Uniform
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.ValueSize == 0 {
		o.ValueSize = DefaultValueSize
	}
	if len(o.Clients) == 0 {
		o.Clients = []int{DefaultClients}
	}
	if o.Conns == 0 {
		o.Conns = client.DefaultConnsPerNode
	}
	if o.Duration == 0 && o.Total == 0 {
		o.Duration = DefaultDuration
	}
	if o.Warmup == 0 {
		o.Warmup = DefaultWarmup
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.PreloadBatch == 0 {
		o.PreloadBatch = DefaultPreloadBatch
	}
	if o.PreloadConcurrency == 0 {
		o.PreloadConcurrency = DefaultPreloadConcurrency
	}
	if o.ProgressInterval == 0 {
		o.ProgressInterval = DefaultProgressInterval
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the Options (after EnsureDefaults),
// joined into one error.
func (o *Options) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case o.Local && len(o.Endpoints) > 0:
		bad("endpoints and local are exclusive: bench a running cluster or start one")
	case !o.Local && len(o.Endpoints) == 0:
		bad("no target: give --endpoints (HTTP host:port of the nodes) or --local")
	}
	for i, ep := range o.Endpoints {
		if strings.TrimSpace(ep) == "" {
			bad("endpoint %d is empty", i+1)
		}
	}
	if o.Local && o.Binary == "" {
		bad("local needs the kvnode binary")
	}
	for _, w := range o.Workloads {
		if !w.valid() {
			bad("unknown workload %q (one of %s)", w, workloadList())
		}
	}
	if o.Keys < 1 {
		bad("keys %d must be at least 1", o.Keys)
	}
	if o.Distribution != Uniform && o.Distribution != Zipfian {
		bad("unknown distribution %q (uniform or zipfian)", o.Distribution)
	}
	if o.ValueSize < 1 {
		bad("value size %d must be at least 1", o.ValueSize)
	}
	for _, c := range o.Clients {
		if c < 1 {
			bad("clients %d must be at least 1", c)
		}
	}
	if o.Conns < 1 || o.Conns > 1024 {
		bad("conns %d out of range [1, 1024]", o.Conns)
	}
	if o.Total < 0 {
		bad("total %d is negative", o.Total)
	}
	if o.Duration < 0 {
		bad("duration %v is negative", o.Duration)
	}
	if o.Total > 0 && o.Duration > 0 {
		bad("total and duration are exclusive: a run ends after one or the other")
	}
	if o.Rate < 0 {
		bad("rate %v is negative", o.Rate)
	}
	if o.Timeout < 0 {
		bad("timeout %v is negative", o.Timeout)
	}
	if o.PreloadBatch < 1 {
		bad("preload batch %d must be at least 1", o.PreloadBatch)
	}
	if o.PreloadConcurrency < 1 {
		bad("preload concurrency %d must be at least 1", o.PreloadConcurrency)
	}
	if o.PlotFile != "" {
		switch strings.ToLower(filepath.Ext(o.PlotFile)) {
		case ".png", ".svg", ".pdf":
		default:
			bad("plot file %q must end in .png, .svg or .pdf", o.PlotFile)
		}
	}
	return errors.Join(errs...)
}

func workloadList() string {
	var s []string
	for _, w := range Workloads {
		s = append(s, string(w))
	}
	return strings.Join(s, ", ")
}

// ParseArgs parses the arguments of `kvnode bench` into Options, with
// defaults filled in and validated. With --local, Binary is the running
// executable (os.Executable). Usage and flag errors go to out. It
// reports every problem at once; flag.ErrHelp means help was asked for
// and printed.
func ParseArgs(args []string, out io.Writer) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("kvnode bench", flag.ContinueOnError)
	// The caller prints a bad flag's error in one message; the usage is
	// printed for --help only.
	fs.SetOutput(io.Discard)
	endpoints := fs.String("endpoints", "", "HTTP addresses of a running cluster's nodes, host:port,... (the client learns the rest)")
	fs.BoolVar(&o.Local, "local", false, "start a 3-node cluster of this executable on loopback, data in a temporary directory removed afterwards")
	workloads := fs.String("workload", string(WorkloadWrite), "workloads to run, comma-separated: "+workloadList())
	fs.IntVar(&o.Keys, "keys", DefaultKeys, "size of the key space")
	dist := fs.String("distribution", string(Uniform), "key distribution: uniform or zipfian (YCSB scrambled zipfian, theta 0.99)")
	fs.StringVar(&o.KeyPrefix, "key-prefix", DefaultKeyPrefix, "prefix of every key")
	fs.IntVar(&o.ValueSize, "value-size", DefaultValueSize, "bytes per written value")
	clients := fs.String("clients", strconv.Itoa(DefaultClients), "concurrent workers; a list (1,16,64,256) sweeps, one result row each")
	fs.IntVar(&o.Conns, "conns", client.DefaultConnsPerNode, "pipelined client connections per node")
	fs.Int64Var(&o.Total, "total", 0, "measured operations per run (instead of --duration)")
	duration := fs.Duration("duration", 0, fmt.Sprintf("measured time per run (default %v unless --total is given)", DefaultDuration))
	warmup := fs.Duration("warmup", DefaultWarmup, "unmeasured load before each run; 0: none")
	fs.Float64Var(&o.Rate, "rate", 0, "fixed total arrival rate, ops/s, with latency measured from each op's intended start (coordinated-omission correction); 0: as fast as possible")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "bound on one operation, retries included")
	preload := fs.Bool("preload", true, "write the key space (MSet batches) before workloads that read")
	fs.IntVar(&o.PreloadBatch, "preload-batch", DefaultPreloadBatch, "keys per preload MSet")
	fs.IntVar(&o.PreloadConcurrency, "preload-concurrency", DefaultPreloadConcurrency, "preload MSets in flight")
	fs.BoolVar(&o.JSON, "json", false, `print one JSON object per run and line: {"workload","clients","ops","errors","seconds","throughput","latency_ms":{"p50","p90","p99","p999","max"}}`)
	fs.StringVar(&o.PlotFile, "plot", "", "draw throughput and latency percentiles over time into this file (.png, .svg, .pdf)")
	progress := fs.Duration("progress", DefaultProgressInterval, "progress line period, to stderr; 0: none")
	fs.Uint64Var(&o.Seed, "seed", 0, "random seed of the key choice; 0: random")
	usage := func() {
		fmt.Fprint(out, `kvnode bench: load a kvnode cluster through the Go client and measure it.

Usage:
  kvnode bench --local [flags]                   start a local 3-node cluster and bench it
  kvnode bench --endpoints host:port,... [flags] bench a running cluster

Examples:
  kvnode bench --local --workload write,read,stale-read --clients 1,16,64,256
  kvnode bench --endpoints localhost:8080 --workload ycsb-b --distribution zipfian --json
  kvnode bench --local --workload write --clients 64 --rate 20000 --duration 30s --plot run.png

Environment:
  KVNODE_BENCH_CPUPROFILE=FILE  write the bench client's own CPU profile to FILE
                                (the nodes serve theirs on /debug/pprof/)

Flags:
`)
		fs.SetOutput(out)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	fs.Usage = func() {} // the flag package calls it on every error too
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage()
		}
		return o, err
	}
	var errs []error
	// In Options a zero means "the default"; on the command line it would
	// silently become one, so a zero given explicitly is refused.
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "keys", "value-size", "conns", "preload-batch", "preload-concurrency", "timeout":
			if v := f.Value.String(); v == "0" || v == "0s" {
				errs = append(errs, fmt.Errorf("%s must not be 0", f.Name))
			}
		}
	})
	if fs.NArg() > 0 {
		errs = append(errs, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	}
	for _, ep := range splitList(*endpoints) {
		o.Endpoints = append(o.Endpoints, ep)
	}
	for _, w := range splitList(*workloads) {
		o.Workloads = append(o.Workloads, Workload(w))
	}
	o.Distribution = Distribution(*dist)
	for _, c := range splitList(*clients) {
		n, err := strconv.Atoi(c)
		if err != nil {
			errs = append(errs, fmt.Errorf("clients: %q is not an integer", c))
			continue
		}
		if n < 1 {
			errs = append(errs, fmt.Errorf("clients %d must be at least 1", n))
			continue
		}
		o.Clients = append(o.Clients, n)
	}
	if *clients != "" && len(o.Clients) == 0 && len(errs) == 0 {
		errs = append(errs, errors.New("clients: empty list"))
	}
	o.Duration = *duration
	// On the command line 0 means "none"; in Options it means "the
	// default", so map it to the negative "none".
	o.Warmup = *warmup
	if o.Warmup == 0 {
		o.Warmup = -1
	}
	o.ProgressInterval = *progress
	if o.ProgressInterval == 0 {
		o.ProgressInterval = -1
	}
	o.SkipPreload = !*preload
	if o.Local {
		// The nodes of --local are this very executable: whatever version
		// runs the bench is the version benched.
		exe, err := os.Executable()
		if err != nil {
			errs = append(errs, fmt.Errorf("local: finding this executable: %w", err))
		}
		o.Binary = exe
	}
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		errs = append(errs, err)
	}
	return o, errors.Join(errs...)
}

// splitList splits a comma-separated flag value, dropping blanks around
// items; an empty item stays (as "") so that Validate can name it.
func splitList(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	var out []string
	for _, p := range strings.Split(s, ",") {
		out = append(out, strings.TrimSpace(p))
	}
	return out
}
