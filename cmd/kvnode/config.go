package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"kvnode/node"
)

// setting is one configuration knob: a flag, and the environment variable
// that sets it when the flag is not given (the ClusterKit example's names
// where it has one).
type setting struct {
	flag, env, usage string
	def              string
	apply            func(c *node.Config, v string) error
}

func intSetting(dst func(*node.Config) *int) func(*node.Config, string) error {
	return func(c *node.Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%q is not an integer", v)
		}
		*dst(c) = n
		return nil
	}
}

// positive wraps an int setting that must be at least 1 when given (0
// would silently mean "the default").
func positive(apply func(*node.Config, string) error) func(*node.Config, string) error {
	return func(c *node.Config, v string) error {
		if n, err := strconv.Atoi(v); err == nil && n < 1 {
			return fmt.Errorf("%d must be at least 1", n)
		}
		return apply(c, v)
	}
}

func durationSetting(dst func(*node.Config) *time.Duration) func(*node.Config, string) error {
	return func(c *node.Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("%q is not a duration (like 500ms, 30s, 1m)", v)
		}
		*dst(c) = d
		return nil
	}
}

func stringSetting(dst func(*node.Config) *string) func(*node.Config, string) error {
	return func(c *node.Config, v string) error { *dst(c) = v; return nil }
}

var settings = []setting{
	{"node-id", "NODE_ID", "this node's name in the cluster (required)", "", stringSetting(func(c *node.Config) *string { return &c.NodeID })},
	{"http-port", "HTTP_PORT", "port of the HTTP API", "8080", intSetting(func(c *node.Config) *int { return &c.HTTPPort })},
	{"kv-port", "KV_PORT", "port of the binary protocol and of raft traffic between nodes", "9080", intSetting(func(c *node.Config) *int { return &c.KVPort })},
	{"join", "JOIN_ADDR", "host:port of any member's HTTP port; empty: bootstrap a new cluster (or restart a member)", "", stringSetting(func(c *node.Config) *string { return &c.JoinAddr })},
	{"data-dir", "DATA_DIR", "where the node keeps its data (default ./data/<NODE_ID>)", "", stringSetting(func(c *node.Config) *string { return &c.DataDir })},
	{"bind-host", "BIND_HOST", "address to listen on", "0.0.0.0", stringSetting(func(c *node.Config) *string { return &c.BindHost })},
	{"advertise-host", "ADVERTISE_HOST", "address other nodes and clients use to reach this node", "127.0.0.1", stringSetting(func(c *node.Config) *string { return &c.AdvertiseHost })},
	{"partitions", "PARTITIONS", "partitions of a new cluster (fixed when the cluster is created)", "64", positive(intSetting(func(c *node.Config) *int { return &c.Partitions }))},
	{"replication-factor", "REPLICATION_FACTOR", "replicas per partition", "3", positive(intSetting(func(c *node.Config) *int { return &c.ReplicationFactor }))},
	{"cluster-name", "CLUSTER_NAME", "name of a new cluster", "kvnode", stringSetting(func(c *node.Config) *string { return &c.ClusterName })},
	{"max-key-size", "MAX_KEY_SIZE", "largest key accepted, in bytes", "4096", positive(intSetting(func(c *node.Config) *int { return &c.MaxKeySize }))},
	{"max-value-size", "MAX_VALUE_SIZE", "largest value accepted, in bytes", "1048576", positive(intSetting(func(c *node.Config) *int { return &c.MaxValueSize }))},
	{"request-timeout", "REQUEST_TIMEOUT", "how long a request waits for a quorum before answering 503", "5s", durationSetting(func(c *node.Config) *time.Duration { return &c.RequestTimeout })},
	{"dead-node-timeout", "DEAD_NODE_TIMEOUT", "how long a node may be unreachable before its replicas are re-created elsewhere", "1m", durationSetting(func(c *node.Config) *time.Duration { return &c.DeadNodeTimeout })},
	{"tick-interval", "TICK_INTERVAL", "raft's clock period (heartbeats every 2 ticks, elections after 10-20)", "50ms", durationSetting(func(c *node.Config) *time.Duration { return &c.TickInterval })},
}

// options are the command's own settings, not the node's.
type options struct {
	logLevel  slog.Level
	logFormat string
	faults    string
}

// parseConfig reads the node's configuration from args and the
// environment. Flags win over environment variables, which win over the
// defaults. It reports every problem at once.
func parseConfig(args []string, getenv func(string) string, out io.Writer) (node.Config, options, error) {
	var cfg node.Config
	opts := options{logFormat: "text"}
	fs := flag.NewFlagSet("kvnode", flag.ContinueOnError)
	fs.SetOutput(out)
	values := make([]*string, len(settings))
	for i, s := range settings {
		u := fmt.Sprintf("%s [$%s]", s.usage, s.env)
		if s.def != "" {
			u += fmt.Sprintf(" (default %q)", s.def)
		}
		values[i] = fs.String(s.flag, "", u)
	}
	logLevel := fs.String("log-level", "", "log level: debug, info, warn, error [$LOG_LEVEL] (default \"info\")")
	logFormat := fs.String("log-format", "", "log format: text or json [$LOG_FORMAT] (default \"text\")")
	faults := fs.String("test-fault-injection", "", "TEST ONLY: inject storage faults, e.g. \"sync-fail-after=100\" [$KVNODE_TEST_FAULTS]")
	peers := fs.String("test-peer-addrs", "", "TEST ONLY: dial these addresses for raft traffic to peers, e.g. \"2=127.0.0.1:7001,3=127.0.0.1:7002\" [$KVNODE_TEST_PEER_ADDRS]")
	// The flag package prints its error and the whole usage on a bad
	// flag; run prints one "invalid configuration" message instead, and
	// the usage only for --help.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(fs, out)
		}
		return cfg, opts, err
	}
	if fs.NArg() > 0 {
		return cfg, opts, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var problems []error
	for i, s := range settings {
		v, src := *values[i], "--"+s.flag
		if v == "" {
			v, src = getenv(s.env), "$"+s.env
		}
		if v == "" {
			continue
		}
		if err := s.apply(&cfg, v); err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", src, err))
		}
	}
	lvl := firstNonEmpty(*logLevel, getenv("LOG_LEVEL"), "info")
	if err := opts.logLevel.UnmarshalText([]byte(lvl)); err != nil {
		problems = append(problems, fmt.Errorf("log level %q is not one of debug, info, warn, error", lvl))
	}
	opts.logFormat = firstNonEmpty(*logFormat, getenv("LOG_FORMAT"), "text")
	if opts.logFormat != "text" && opts.logFormat != "json" {
		problems = append(problems, fmt.Errorf("log format %q is not text or json", opts.logFormat))
	}
	opts.faults = firstNonEmpty(*faults, getenv("KVNODE_TEST_FAULTS"))
	if spec := firstNonEmpty(*peers, getenv("KVNODE_TEST_PEER_ADDRS")); spec != "" {
		m, err := parsePeerAddrs(spec)
		if err != nil {
			problems = append(problems, fmt.Errorf("--test-peer-addrs: %w", err))
		}
		cfg.PeerAddrs = m
	}
	if err := cfg.EnsureDefaults().Validate(); err != nil {
		problems = append(problems, err)
	}
	return cfg, opts, errors.Join(problems...)
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

func usage(fs *flag.FlagSet, out io.Writer) {
	fmt.Fprint(out, `kvnode: a durable, replicated key-value store.

Usage:
  kvnode [flags]          serve: run a node until SIGINT or SIGTERM
  kvnode bench [flags]    benchmark a cluster (kvnode bench --help)

Every flag can also be set by the environment variable shown in brackets;
a flag given on the command line wins. A local three-node cluster:

  NODE_ID=node-1 HTTP_PORT=8080 KV_PORT=9080                         kvnode
  NODE_ID=node-2 HTTP_PORT=8081 KV_PORT=9081 JOIN_ADDR=localhost:8080 kvnode
  NODE_ID=node-3 HTTP_PORT=8082 KV_PORT=9082 JOIN_ADDR=localhost:8080 kvnode

Flags:
`)
	var b strings.Builder
	prev := fs.Output()
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(prev)
	fmt.Fprint(out, b.String())
}

// parsePeerAddrs parses "ID=host:port,ID=host:port".
func parsePeerAddrs(spec string) (map[uint64]string, error) {
	m := map[uint64]string{}
	for _, part := range strings.Split(spec, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil || n == 0 || addr == "" {
			return nil, fmt.Errorf("%q is not RAFT_ID=host:port", part)
		}
		m[n] = addr
	}
	return m, nil
}
