// Package bench is kvnode's benchmark harness: the library behind
// `kvnode bench` and the end-to-end `go test -bench` benchmarks.
//
// Run is the core: a number of workers, each calling an OpFunc in a loop
// for a duration or a total count, closed loop or at a fixed arrival rate.
// At a fixed rate, latency is measured from each operation's intended
// start on the schedule, not from when the worker got to it, so a stall is
// charged to every operation queued behind it (the coordinated-omission
// correction of wrk2 and YCSB). Each worker records into its own
// HdrHistogram, merged when the run ends; per-second figures travel to a
// collector goroutine by channel, with the histogram's ownership, so the
// hot path takes no lock (its only shared write is the atomic claim of an
// operation when the run has a total).
//
// NewOpFactory builds the OpFunc of a workload (write, read, stale-read,
// the YCSB mixes A, B and C, compare-and-set) over a kvnode/client.Client;
// Preload writes the key space first with MSet batches. Execute does what
// the command does: start a local cluster (internal/localcluster) or use
// given endpoints, preload, sweep workloads and concurrencies, and print a
// table or JSON lines (Summary, a stable schema) and a plot (WritePlot).
//
// Operation errors are counted, never fatal: a benchmark against a cluster
// that loses a node goes on. A run in which every operation failed is an
// error (Result.Err).
package bench
