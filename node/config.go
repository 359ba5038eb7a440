package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Config configures a node. The zero value of every field but NodeID is
// usable: Open fills in the defaults documented on each field.
type Config struct {
	// NodeID names this node in the cluster ("node-1"). Required. Letters,
	// digits, '-', '_' and '.', at most 64 bytes.
	NodeID string
	// DataDir holds the node's raft log, state machine and identity.
	// Default: ./data/<NodeID>.
	DataDir string
	// BindHost is the address the HTTP and KV listeners bind to.
	// Default: 0.0.0.0 (all interfaces).
	BindHost string
	// AdvertiseHost is the host other nodes and clients use to reach this
	// one. Default: 127.0.0.1, right for a cluster on one machine; set it
	// to the machine's address on a real network.
	AdvertiseHost string
	// HTTPPort serves the JSON API. Default: 8080. 0 picks a free port
	// (tests).
	HTTPPort int
	// KVPort serves the binary protocol and raft traffic between nodes.
	// Default: 9080. 0 picks a free port (tests).
	KVPort int
	// JoinAddr is the host:port of any member's HTTP port. Empty: this
	// node bootstraps a new cluster (or restarts one it already belongs
	// to).
	JoinAddr string

	// ClusterName names a new cluster. Default: "kvnode".
	ClusterName string
	// Partitions is the number of partitions of a new cluster; it is fixed
	// when the cluster is created. Default: 64.
	Partitions int
	// ReplicationFactor is how many replicas each partition gets. Default: 3.
	ReplicationFactor int

	// MaxKeySize and MaxValueSize bound what a write may carry; larger
	// ones are refused before anything is proposed. Defaults: 4 KiB and
	// 1 MiB.
	MaxKeySize, MaxValueSize int
	// RequestTimeout bounds a request that waits for a quorum; past it the
	// answer is 503 and the write is not acknowledged. Default: 5s.
	RequestTimeout time.Duration
	// DeadNodeTimeout is how long a node may be unreachable before it is
	// declared dead and its replicas are re-created elsewhere.
	// Default: 1m.
	DeadNodeTimeout time.Duration

	// TickInterval, HeartbeatTicks and ElectionTicks set raft's clock.
	// Defaults: 50ms, 2 and 10 (an election timeout of 0.5-1s).
	TickInterval                  time.Duration
	HeartbeatTicks, ElectionTicks int

	// Logger receives the node's logs. Default: discard.
	Logger *slog.Logger
	// FS is the filesystem for the stores. Default: the real disk. Tests
	// inject faults through it.
	FS vfs.FS
	// PeerAddrs overrides, for raft traffic only, the address this node
	// dials to reach a peer (by raft id). Tests put a fault-injecting
	// proxy between each pair of nodes with it. Default: none.
	PeerAddrs map[uint64]string
}

const (
	defaultHTTPPort = 8080
	defaultKVPort   = 9080
)

// EnsureDefaults returns a copy of c with every unset field defaulted.
func (c *Config) EnsureDefaults() *Config {
	n := *c
	if n.DataDir == "" && n.NodeID != "" {
		n.DataDir = filepath.Join("data", n.NodeID)
	}
	if n.BindHost == "" {
		n.BindHost = "0.0.0.0"
	}
	if n.AdvertiseHost == "" {
		n.AdvertiseHost = "127.0.0.1"
	}
	if n.ClusterName == "" {
		n.ClusterName = "kvnode"
	}
	if n.Partitions == 0 {
		n.Partitions = 64
	}
	if n.ReplicationFactor == 0 {
		n.ReplicationFactor = 3
	}
	if n.MaxKeySize == 0 {
		n.MaxKeySize = 4 << 10
	}
	if n.MaxValueSize == 0 {
		n.MaxValueSize = 1 << 20
	}
	if n.RequestTimeout == 0 {
		n.RequestTimeout = 5 * time.Second
	}
	if n.DeadNodeTimeout == 0 {
		n.DeadNodeTimeout = time.Minute
	}
	if n.TickInterval == 0 {
		n.TickInterval = 50 * time.Millisecond
	}
	if n.HeartbeatTicks == 0 {
		n.HeartbeatTicks = 2
	}
	if n.ElectionTicks == 0 {
		n.ElectionTicks = 10
	}
	if n.Logger == nil {
		n.Logger = slog.New(slog.DiscardHandler)
	}
	if n.FS == nil {
		n.FS = vfs.Default
	}
	return &n
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch {
	case c.NodeID == "":
		add("NODE_ID is required")
	case len(c.NodeID) > 64:
		add("NODE_ID %q is longer than 64 bytes", c.NodeID)
	case strings.IndexFunc(c.NodeID, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
	}) >= 0:
		add("NODE_ID %q may hold only letters, digits, '-', '_' and '.'", c.NodeID)
	}
	if c.HTTPPort < 0 || c.HTTPPort > 65535 {
		add("HTTP_PORT %d is not a port (0-65535)", c.HTTPPort)
	}
	if c.KVPort < 0 || c.KVPort > 65535 {
		add("KV_PORT %d is not a port (0-65535)", c.KVPort)
	}
	if c.HTTPPort != 0 && c.HTTPPort == c.KVPort {
		add("HTTP_PORT and KV_PORT are both %d", c.HTTPPort)
	}
	if c.JoinAddr != "" {
		if _, port, err := net.SplitHostPort(c.JoinAddr); err != nil {
			add("JOIN_ADDR %q is not host:port: %v", c.JoinAddr, err)
		} else if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
			add("JOIN_ADDR %q has no valid port", c.JoinAddr)
		}
	}
	if ip := net.ParseIP(c.BindHost); ip == nil && c.BindHost != "localhost" {
		add("bind host %q is not an IP address", c.BindHost)
	}
	if c.AdvertiseHost == "0.0.0.0" || c.AdvertiseHost == "::" {
		add("advertise host %q is not reachable by others; give this machine's address", c.AdvertiseHost)
	}
	if c.Partitions < 1 || c.Partitions > 4096 {
		add("partition count %d must be between 1 and 4096", c.Partitions)
	}
	if c.ReplicationFactor < 1 || c.ReplicationFactor > 7 {
		add("replication factor %d must be between 1 and 7", c.ReplicationFactor)
	}
	if c.MaxKeySize < 1 || c.MaxKeySize > 64<<10 {
		add("max key size %d must be between 1 and 65536", c.MaxKeySize)
	}
	if c.MaxValueSize < 0 || c.MaxValueSize > 64<<20 {
		add("max value size %d must be between 0 and 64 MiB", c.MaxValueSize)
	}
	if c.RequestTimeout < 10*time.Millisecond {
		add("request timeout %v is below 10ms", c.RequestTimeout)
	}
	if c.DeadNodeTimeout < time.Second {
		add("dead node timeout %v is below 1s", c.DeadNodeTimeout)
	}
	if c.TickInterval < time.Millisecond {
		add("tick interval %v is below 1ms", c.TickInterval)
	}
	if c.HeartbeatTicks < 1 || c.ElectionTicks <= c.HeartbeatTicks {
		add("election ticks (%d) must exceed heartbeat ticks (%d), which must be at least 1", c.ElectionTicks, c.HeartbeatTicks)
	}
	return errors.Join(errs...)
}

func (c *Config) httpAdvertise() string {
	return net.JoinHostPort(c.AdvertiseHost, strconv.Itoa(c.HTTPPort))
}

func (c *Config) kvAdvertise() string {
	return net.JoinHostPort(c.AdvertiseHost, strconv.Itoa(c.KVPort))
}
