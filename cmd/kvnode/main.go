// Command kvnode runs a node of a kvnode cluster, or benchmarks one.
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
	"syscall"
	"time"

	"kvnode/node"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run is main with its inputs and outputs passed in. It returns the exit
// status: 0 after a clean stop, 2 for a bad configuration, 1 otherwise.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "bench" {
		return runBench(args[1:], stdout, stderr)
	}
	cfg, opts, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kvnode: invalid configuration:\n%s\nRun kvnode --help for the flags and variables.\n", indent(err.Error()))
		return 2
	}
	var handler slog.Handler
	hopts := &slog.HandlerOptions{Level: opts.logLevel}
	if opts.logFormat == "json" {
		handler = slog.NewJSONHandler(stderr, hopts)
	} else {
		handler = slog.NewTextHandler(stderr, hopts)
	}
	cfg.Logger = slog.New(handler)
	if opts.faults != "" {
		fs, err := faultFS(opts.faults)
		if err != nil {
			fmt.Fprintf(stderr, "kvnode: invalid configuration:\n  --test-fault-injection: %v\n", err)
			return 2
		}
		cfg.Logger.Warn("TEST-ONLY storage fault injection is on", "faults", opts.faults)
		cfg.FS = fs
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := node.Open(ctx, cfg)
	if err != nil {
		cfg.Logger.Error("cannot start", "err", err)
		return 1
	}
	status := 0
	select {
	case <-ctx.Done():
		cfg.Logger.Info("signal received; stopping")
	case <-n.Failed():
		cfg.Logger.Error("node failed; stopping", "err", n.Err())
		status = 1
	}
	stop()
	cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.Close(cctx); err != nil {
		cfg.Logger.Error("stopping", "err", err)
		if status == 0 {
			status = 1
		}
	}
	if status == 0 {
		cfg.Logger.Info("stopped cleanly")
	}
	return status
}

func indent(s string) string {
	out := "  "
	for _, r := range s {
		out += string(r)
		if r == '\n' {
			out += "  "
		}
	}
	return out
}
