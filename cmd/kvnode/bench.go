package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"kvnode/bench"
)

// runBench is `kvnode bench`: it loads a cluster through the Go client and
// prints what it measured (package bench does the work). It returns the
// exit status: 0 when every run completed some operations, 2 for bad
// flags, 1 otherwise (setup failed, interrupted, or a run in which every
// operation failed).
func runBench(args []string, stdout, stderr io.Writer) int {
	opts, err := bench.ParseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvnode bench: invalid options:\n%s\nRun kvnode bench --help for the flags.\n", indent(err.Error()))
		return 2
	}
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	// The nodes serve their profiles on /debug/pprof; the client's own is
	// written here when asked for.
	if path := os.Getenv("KVNODE_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintf(stderr, "kvnode bench: %v\n", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(stderr, "kvnode bench: %v\n", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	// Ctrl-C ends the sweep; the local cluster is still stopped and its
	// directory removed on the way out.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := bench.Execute(ctx, opts, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "kvnode bench: %v\n", err)
		return 1
	}
	return 0
}
