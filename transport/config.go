package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Config configures a Transport. New fills in the default of every unset
// field and never modifies the Config it is given.
type Config struct {
	// NodeID is this node's id. Required, non-zero. Acceptors check that a
	// dialer addressed this id; dialers send it as the sender.
	NodeID uint64

	// ClusterID returns the cluster's id, checked on every handshake in both
	// directions. It is a func because a joining node learns the id only
	// after it starts. While it returns 0 (not known yet) the transport
	// neither dials (messages are dropped, and the peer reported
	// unreachable) nor accepts (handshakes are refused with
	// ErrClusterIDUnknown): a node that does not know which cluster it is in
	// must not exchange raft messages with anyone. Required.
	ClusterID func() uint64

	// Resolve returns a peer's current address. It is called on every dial,
	// so membership and address changes are picked up at the next
	// (re)connect; it must not block for long. Required.
	Resolve func(nodeID uint64) (addr string, err error)

	// Handler receives inbound messages and snapshots and unreachability
	// reports. Required.
	Handler Handler

	// Logger receives the transport's log lines.
	//
	// Default: a logger that discards everything.
	Logger *slog.Logger

	// Preamble is written first on every dialed connection, so that a port
	// shared with other protocols can tell raft traffic apart. Serve checks
	// it; a caller's own mux consumes it before calling HandleConn.
	//
	// Default: DefaultPreamble. At most 64 bytes.
	Preamble []byte

	// QueueSize bounds each peer's outbound queue, in messages. When it is
	// full, Send drops (raft retransmits what matters) and the peer is
	// reported unreachable: Send must never block the raft loop.
	//
	// Default: 4096.
	QueueSize int

	// MaxFrameSize bounds one frame's payload, compressed or not, in both
	// directions, and one snapshot chunk. A peer declaring more is cut off
	// before anything is allocated. A single message larger than this cannot
	// be sent (it is dropped and counted): raft's MaxSizePerMsg must be well
	// below it. All nodes of a cluster should use the same value.
	//
	// Default: 64 MiB. Minimum: 4 KiB. Maximum: 1 GiB.
	MaxFrameSize int

	// CompressThreshold: frame payloads and snapshot chunks larger than this
	// are s2-compressed (and sent compressed only if that makes them
	// smaller). Small frames, heartbeats mostly, are not worth the CPU.
	// Negative disables compression.
	//
	// Default: 4 KiB.
	CompressThreshold int

	// DialTimeout bounds connecting to a peer, and separately its answer to
	// the handshake.
	//
	// Default: 1s.
	DialTimeout time.Duration

	// BackoffMin and BackoffMax bound the delay between reconnection
	// attempts to a peer, which doubles from BackoffMin after each failure
	// up to BackoffMax and is jittered, so that a cluster restarting
	// together does not reconnect in lockstep, and a peer that refuses us
	// (wrong cluster, blocked) is not hammered.
	//
	// Defaults: 20ms and 1s.
	BackoffMin, BackoffMax time.Duration

	// WriteTimeout bounds every write to a peer: a batch of frames, a
	// snapshot chunk, a status. A peer that does not drain its socket for
	// this long is considered stuck and its connection is dropped. It also
	// bounds how long an accepted connection may take to send its preamble
	// and handshake.
	//
	// Default: 5s.
	WriteTimeout time.Duration
}

const (
	defaultQueueSize         = 4096
	defaultMaxFrameSize      = 64 << 20
	minMaxFrameSize          = 4 << 10
	maxMaxFrameSize          = 1 << 30
	defaultCompressThreshold = 4 << 10
	defaultDialTimeout       = time.Second
	defaultBackoffMin        = 20 * time.Millisecond
	defaultBackoffMax        = time.Second
	defaultWriteTimeout      = 5 * time.Second
	maxPreambleLen           = 64
)

// EnsureDefaults returns a copy of c (or of the zero Config when c is nil)
// with every unset field given its default.
func (c *Config) EnsureDefaults() *Config {
	var n Config
	if c != nil {
		n = *c
	}
	if n.Logger == nil {
		n.Logger = slog.New(slog.DiscardHandler)
	}
	if len(n.Preamble) == 0 {
		n.Preamble = []byte(DefaultPreamble)
	} else {
		// The caller keeps its slice; ours must not change under us.
		n.Preamble = append([]byte(nil), n.Preamble...)
	}
	if n.QueueSize == 0 {
		n.QueueSize = defaultQueueSize
	}
	if n.MaxFrameSize == 0 {
		n.MaxFrameSize = defaultMaxFrameSize
	}
	if n.CompressThreshold == 0 {
		n.CompressThreshold = defaultCompressThreshold
	}
	if n.DialTimeout == 0 {
		n.DialTimeout = defaultDialTimeout
	}
	if n.BackoffMin == 0 {
		n.BackoffMin = defaultBackoffMin
	}
	if n.BackoffMax == 0 {
		n.BackoffMax = max(defaultBackoffMax, n.BackoffMin)
	}
	if n.WriteTimeout == 0 {
		n.WriteTimeout = defaultWriteTimeout
	}
	return &n
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == 0 {
		errs = append(errs, errors.New("NodeID is 0"))
	}
	if c.ClusterID == nil {
		errs = append(errs, errors.New("ClusterID is nil"))
	}
	if c.Resolve == nil {
		errs = append(errs, errors.New("Resolve is nil"))
	}
	if c.Handler == nil {
		errs = append(errs, errors.New("Handler is nil"))
	}
	if c.Logger == nil {
		errs = append(errs, errors.New("Logger is nil"))
	}
	if len(c.Preamble) == 0 || len(c.Preamble) > maxPreambleLen {
		errs = append(errs, fmt.Errorf("Preamble is %d bytes, want 1 to %d", len(c.Preamble), maxPreambleLen))
	}
	if c.QueueSize <= 0 {
		errs = append(errs, fmt.Errorf("QueueSize %d is not positive", c.QueueSize))
	}
	if c.MaxFrameSize < minMaxFrameSize || c.MaxFrameSize > maxMaxFrameSize {
		errs = append(errs, fmt.Errorf("MaxFrameSize %d is outside [%d, %d]", c.MaxFrameSize, minMaxFrameSize, maxMaxFrameSize))
	}
	if c.DialTimeout <= 0 {
		errs = append(errs, fmt.Errorf("DialTimeout %v is not positive", c.DialTimeout))
	}
	if c.BackoffMin <= 0 {
		errs = append(errs, fmt.Errorf("BackoffMin %v is not positive", c.BackoffMin))
	}
	if c.BackoffMax < c.BackoffMin {
		errs = append(errs, fmt.Errorf("BackoffMax %v is below BackoffMin %v", c.BackoffMax, c.BackoffMin))
	}
	if c.WriteTimeout <= 0 {
		errs = append(errs, fmt.Errorf("WriteTimeout %v is not positive", c.WriteTimeout))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("transport: invalid config: %w", err)
	}
	return nil
}
