package client

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"time"

	"kvnode/wire"
)

// Config configures a Client. New fills in the default of every zero field
// (EnsureDefaults) and never modifies the Config it is given.
type Config struct {
	// Endpoints are HTTP addresses ("host:port", or a URL such as
	// "https://host:port") of one or more nodes, used only to fetch the
	// topology from /cluster. Any node will do; the client also tries the
	// HTTP addresses of the nodes it learns from the topology. Required.
	Endpoints []string

	// DialTimeout bounds connecting to a node, over HTTP or the binary
	// protocol.
	//
	// Default: 1s.
	DialTimeout time.Duration

	// RequestTimeout bounds an operation, with all its retries, whose
	// context has no deadline. It also bounds one /cluster fetch and one
	// write to a connection (a connection whose write stalls longer is
	// considered broken).
	//
	// Default: 5s.
	RequestTimeout time.Duration

	// ReadAttemptTimeout bounds how long a read waits for one node's
	// answer before it is tried again. A node can be alive to TCP but not
	// answering: paused (SIGSTOP, a VM migration), stuck on its disk, or a
	// leader that has been replaced and does not know it yet. Without this
	// bound a read would wait on it until the whole RequestTimeout. After
	// it, the topology is refreshed and the read retried (a stale read on
	// another replica). Writes are not bounded per attempt: a write that
	// was sent may still apply, so it cannot be sent again, and waiting is
	// the only way to a definite answer. Negative: no bound per attempt.
	//
	// Default: 1s (about two election timeouts: long enough that a healthy
	// but busy node is not abandoned, short enough to outlast a leader
	// change).
	ReadAttemptTimeout time.Duration

	// RefreshInterval is how often the topology is refreshed when nothing
	// else triggers a refresh. Negative: never periodically.
	//
	// Default: 5s.
	RefreshInterval time.Duration

	// ConnsPerNode is the number of pipelined connections to each node.
	// Requests are spread over them round robin. More than a few rarely
	// helps: one connection carries many requests at once.
	//
	// Default: 2.
	ConnsPerNode int

	// MaxRetries is how many times an operation is retried after a
	// retryable failure (see the package documentation), within its
	// deadline. The default is enough retries, at the backoff's 200 ms cap,
	// to outlast a raft election within the default 5 s deadline: the
	// deadline, not the count, is what usually ends the retrying.
	// Negative: never retry.
	//
	// Default: 40.
	MaxRetries int

	// StaleReads makes Get and MGet read from any replica, possibly behind
	// the leader, unless the call passes Linearizable(). Default: false
	// (linearizable reads from the leader).
	StaleReads bool

	// MaxFrameSize is the largest frame (its length field) the client sends
	// or accepts; it should equal the servers' limit. A request that would
	// exceed it fails with ErrTooLarge before anything is sent, because the
	// server would close the connection, failing every other request on it.
	//
	// Default: wire.DefaultMaxFrameSize (16 MiB).
	MaxFrameSize int

	// Logger receives the client's log lines: connection failures and
	// topology changes.
	//
	// Default: a logger that discards everything.
	Logger *slog.Logger

	// HTTPClient fetches /cluster. Its own timeout, if any, applies in
	// addition to RequestTimeout.
	//
	// Default: a client of the client's own, whose idle connections Close
	// closes.
	HTTPClient *http.Client
}

// Defaults of the Config fields.
const (
	DefaultDialTimeout     = time.Second
	DefaultRequestTimeout  = 5 * time.Second
	DefaultReadAttempt     = time.Second
	DefaultRefreshInterval = 5 * time.Second
	DefaultConnsPerNode    = 2
	DefaultMaxRetries      = 40
)

// EnsureDefaults replaces every zero field with its default.
func (c *Config) EnsureDefaults() {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ReadAttemptTimeout == 0 {
		c.ReadAttemptTimeout = DefaultReadAttempt
	}
	if c.RefreshInterval == 0 {
		c.RefreshInterval = DefaultRefreshInterval
	}
	if c.ConnsPerNode == 0 {
		c.ConnsPerNode = DefaultConnsPerNode
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.MaxFrameSize == 0 {
		c.MaxFrameSize = wire.DefaultMaxFrameSize
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports every problem with the Config (after EnsureDefaults),
// joined into one error.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("client: Config.Endpoints is empty"))
	}
	for i, ep := range c.Endpoints {
		if ep == "" {
			errs = append(errs, fmt.Errorf("client: Config.Endpoints[%d] is empty", i))
		}
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("client: Config.DialTimeout %v is negative", c.DialTimeout))
	}
	if c.RequestTimeout < 0 {
		errs = append(errs, fmt.Errorf("client: Config.RequestTimeout %v is negative", c.RequestTimeout))
	}
	if c.ConnsPerNode < 0 || c.ConnsPerNode > 1024 {
		errs = append(errs, fmt.Errorf("client: Config.ConnsPerNode %d out of range [1, 1024]", c.ConnsPerNode))
	}
	// The smallest useful limit still fits a small request; the largest is
	// what the u32 length field can carry.
	if c.MaxFrameSize < minMaxFrameSize || int64(c.MaxFrameSize) > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("client: Config.MaxFrameSize %d out of range [%d, %d]",
			c.MaxFrameSize, minMaxFrameSize, uint64(math.MaxUint32)))
	}
	return errors.Join(errs...)
}

const minMaxFrameSize = 1 << 10
