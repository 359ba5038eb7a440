package bench

import (
	"context"
	"errors"
	"fmt"
	"io"

	"kvnode/client"
	"kvnode/internal/localcluster"
)

// Execute runs the benchmark o describes, the way `kvnode bench` does:
// start the local cluster if asked, connect, preload the key space before
// the first workload that reads, then run every workload at every
// concurrency, printing each result to stdout as it completes (a table, or
// JSON lines) and progress lines to stderr. It writes the plot last, and
// stops the cluster it started.
//
// Failed operations are counted, not fatal. The error is non-nil when the
// setup failed, when the context ended the sweep, or when every operation
// of some run failed (the first error of such a run is in it); the results
// of the runs that did complete are returned in every case.
func Execute(ctx context.Context, o Options, stdout, stderr io.Writer) ([]*Result, error) {
	o.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	endpoints := o.Endpoints
	if o.Local {
		log.Info("starting a local 3-node cluster", "binary", o.Binary)
		lc, err := localcluster.Start(ctx, localcluster.Options{Binary: o.Binary})
		if err != nil {
			return nil, fmt.Errorf("starting the local cluster: %w", err)
		}
		defer func() {
			if err := lc.Close(); err != nil {
				log.Warn("removing the local cluster's directory", "dir", lc.Dir(), "err", err)
			}
		}()
		endpoints = lc.HTTPEndpoints()
		log.Info("local cluster ready", "endpoints", endpoints, "dir", lc.Dir())
	}

	c, err := client.New(client.Config{
		Endpoints:      endpoints,
		ConnsPerNode:   o.Conns,
		RequestTimeout: o.Timeout,
		Logger:         log,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, o.Timeout)
	err = c.Sync(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("fetching the topology from %v: %w", endpoints, err)
	}

	keys := KeySpace{Prefix: o.KeyPrefix, Chooser: NewKeyChooser(o.Distribution, o.Keys)}
	var progress io.Writer
	if o.ProgressInterval > 0 {
		progress = stderr
	}
	preloaded := o.SkipPreload
	prepare := func(ctx context.Context, w Workload) error {
		if preloaded || !w.needsPreload() {
			return nil
		}
		preloaded = true
		log.Info("preloading the key space", "keys", o.Keys, "value_size", o.ValueSize)
		return Preload(ctx, c, PreloadOptions{
			Prefix: o.KeyPrefix, Keys: o.Keys, ValueSize: o.ValueSize,
			Batch: o.PreloadBatch, Concurrency: o.PreloadConcurrency,
			Progress: progress, ProgressInterval: o.ProgressInterval,
		})
	}
	newOp := func(w Workload) OpFactory { return NewOpFactory(c, w, keys, o.ValueSize, o.Seed) }
	results, err := sweep(ctx, o, newOp, prepare, stdout, progress)
	if o.PlotFile != "" && len(results) > 0 {
		if perr := WritePlot(o.PlotFile, results); perr != nil {
			err = errors.Join(err, fmt.Errorf("writing the plot: %w", perr))
		} else {
			log.Info("plot written", "file", o.PlotFile)
		}
	}
	return results, err
}

// sweep runs every workload of o at every concurrency of o, in order,
// calling prepare before each workload and reporting each result as it
// completes.
func sweep(ctx context.Context, o Options, newOp func(Workload) OpFactory,
	prepare func(context.Context, Workload) error, stdout, progress io.Writer) ([]*Result, error) {
	showCAS := false
	for _, w := range o.Workloads {
		showCAS = showCAS || w == WorkloadCAS
	}
	rep := NewReporter(stdout, o.JSON, showCAS)
	var results []*Result
	var errs []error
	for _, w := range o.Workloads {
		if err := prepare(ctx, w); err != nil {
			return results, errors.Join(append(errs, err)...)
		}
		for _, clients := range o.Clients {
			res, err := Run(ctx, RunConfig{
				Name:             string(w),
				Clients:          clients,
				Total:            o.Total,
				Duration:         o.Duration,
				Warmup:           o.Warmup,
				Rate:             o.Rate,
				Progress:         progress,
				ProgressInterval: o.ProgressInterval,
			}, newOp(w))
			if err != nil {
				return results, errors.Join(append(errs, err)...)
			}
			if res.Cancelled {
				// A partial run is not a result: its figures cover an
				// unknown share of the run.
				return results, errors.Join(append(errs, ctx.Err())...)
			}
			results = append(results, res)
			if err := rep.Add(res); err != nil {
				return results, errors.Join(append(errs, err)...)
			}
			if res.Errors > 0 {
				o.Logger.Warn("operations failed", "workload", w, "clients", clients,
					"errors", res.Errors, "ops", res.Ops, "first_error", res.FirstError)
			}
			if err := res.Err(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return results, errors.Join(errs...)
}
