package replication

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"kvnode/engine"
	"kvnode/transport"
	"kvnode/wal"
)

// Transport carries raft messages and snapshot streams to other nodes. It
// is implemented by *transport.Transport; Send must never block.
type Transport interface {
	Send(to uint64, msgs []transport.Message)
	SendSnapshot(ctx context.Context, to uint64, m transport.Message, body func(w io.Writer) error) error
}

// Config configures a Host. Fields without a default are required.
type Config struct {
	// NodeID is this node's raft replica id in every group. Required, and
	// never 0.
	NodeID uint64
	// WAL holds every group's raft log. Required; the Host does not close it.
	WAL *wal.WAL
	// Engine holds every group's state machine. Required; the Host does not
	// close it.
	Engine *engine.Engine
	// Transport reaches the other nodes. Required.
	Transport Transport
	// Logger. Default: discard.
	Logger *slog.Logger

	// TickInterval is raft's logical clock period. Default: 50ms.
	TickInterval time.Duration
	// HeartbeatTicks is the leader's heartbeat period in ticks. Default: 2.
	HeartbeatTicks int
	// ElectionTicks is the election timeout in ticks; raft randomizes it
	// in [ElectionTicks, 2*ElectionTicks). Default: 10.
	ElectionTicks int

	// MaxSizePerMsg bounds the entries in one append message. Default: 1 MiB.
	MaxSizePerMsg uint64
	// MaxInflightMsgs bounds unacknowledged append messages per follower.
	// Default: 256.
	MaxInflightMsgs int
	// MaxUncommittedBytes bounds a leader's uncommitted entries per group;
	// beyond it proposals are dropped (ErrProposalDropped). Default: 64 MiB.
	MaxUncommittedBytes uint64

	// EngineSyncInterval is how often the engine is fsynced. Engine writes
	// skip fsync (the log can replay them), so this bounds how much log
	// must be kept and replayed after a crash. Default: 1s.
	EngineSyncInterval time.Duration
	// CompactThreshold is how many applied-and-synced entries a group's log
	// may hold before it is compacted. Small enough that most entries are
	// deleted while still in the WAL's memtable, so flushes carry little.
	// Default: 1024.
	CompactThreshold uint64
	// LogRetainEntries is how many entries below the compaction point's
	// candidate are kept anyway, so that a follower slightly behind catches
	// up from the log instead of a snapshot. Default: 256.
	LogRetainEntries uint64
	// MaxConcurrentSnapshots bounds the snapshots this node sends at once.
	// Default: 2.
	MaxConcurrentSnapshots int
	// CommitHintDelay is how long a leader may hold an append that only
	// tells a follower the new commit index, so that the next append to
	// that follower carries it instead (see commithint.go). It halves the
	// messages of a write under load, at the cost of followers' applied
	// state trailing by up to the delay (follower reads are not delayed).
	// Default: 2ms, or half the heartbeat period if that is shorter. It
	// must be below the heartbeat period. Negative: send every hint at
	// once, as raft emits it.
	CommitHintDelay time.Duration
	// SyncInterval is the least time between the starts of two WAL writes
	// (one fsync each) while the log is busy, that is, while the previous
	// write carried at least BusySyncEntries entries. The appender waits
	// out the rest of it before taking its queue, so that more entries
	// share the next fsync: on a loaded node fewer, larger writes cost less
	// CPU (an fsync costs tens of microseconds of CPU, not just waiting)
	// and leave more of it for the writes themselves. A node that is not
	// busy syncs at once, so a lone writer's latency is unchanged.
	// It must be below the heartbeat period. Default: 800µs, or half the
	// heartbeat period if that is shorter. Negative: never wait.
	SyncInterval time.Duration
	// BusySyncEntries is how many entries a WAL write must carry for the
	// next one to wait for SyncInterval. Below it, the writers are too few
	// for the wait to pay: with 12 writers, a threshold of 8 made writes
	// 24% slower. Default: 16.
	BusySyncEntries int
	// ReadIndexTimeoutTicks is how long a linearizable read waits for its
	// read index before failing with ErrReadDropped. Default: 2 election
	// timeouts.
	ReadIndexTimeoutTicks int
}

// EnsureDefaults returns a copy of c with every unset field defaulted.
func (c *Config) EnsureDefaults() *Config {
	n := *c
	if n.Logger == nil {
		n.Logger = slog.New(slog.DiscardHandler)
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
	if n.MaxSizePerMsg == 0 {
		n.MaxSizePerMsg = 1 << 20
	}
	if n.MaxInflightMsgs == 0 {
		n.MaxInflightMsgs = 256
	}
	if n.MaxUncommittedBytes == 0 {
		n.MaxUncommittedBytes = 64 << 20
	}
	if n.EngineSyncInterval == 0 {
		n.EngineSyncInterval = time.Second
	}
	if n.CompactThreshold == 0 {
		n.CompactThreshold = 1024
	}
	if n.LogRetainEntries == 0 {
		n.LogRetainEntries = 256
	}
	if n.MaxConcurrentSnapshots == 0 {
		n.MaxConcurrentSnapshots = 2
	}
	if n.CommitHintDelay == 0 {
		n.CommitHintDelay = min(2*time.Millisecond, n.heartbeatPeriod()/2)
	}
	if n.SyncInterval == 0 {
		n.SyncInterval = min(800*time.Microsecond, n.heartbeatPeriod()/2)
	}
	if n.BusySyncEntries == 0 {
		n.BusySyncEntries = 16
	}
	if n.ReadIndexTimeoutTicks == 0 {
		n.ReadIndexTimeoutTicks = 2 * n.ElectionTicks
	}
	return &n
}

func (c *Config) heartbeatPeriod() time.Duration {
	return c.TickInterval * time.Duration(c.HeartbeatTicks)
}

// Validate reports every problem with c at once.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeID == 0 {
		errs = append(errs, errors.New("NodeID must not be 0"))
	}
	if c.WAL == nil {
		errs = append(errs, errors.New("WAL is required"))
	}
	if c.Engine == nil {
		errs = append(errs, errors.New("Engine is required"))
	}
	if c.Transport == nil {
		errs = append(errs, errors.New("Transport is required"))
	}
	if c.TickInterval < time.Millisecond {
		errs = append(errs, fmt.Errorf("TickInterval %v is below 1ms", c.TickInterval))
	}
	if c.HeartbeatTicks < 1 {
		errs = append(errs, fmt.Errorf("HeartbeatTicks %d must be at least 1", c.HeartbeatTicks))
	}
	if c.ElectionTicks <= c.HeartbeatTicks {
		errs = append(errs, fmt.Errorf("ElectionTicks %d must exceed HeartbeatTicks %d", c.ElectionTicks, c.HeartbeatTicks))
	}
	if c.MaxInflightMsgs < 1 {
		errs = append(errs, fmt.Errorf("MaxInflightMsgs %d must be at least 1", c.MaxInflightMsgs))
	}
	if c.MaxConcurrentSnapshots < 1 {
		errs = append(errs, fmt.Errorf("MaxConcurrentSnapshots %d must be at least 1", c.MaxConcurrentSnapshots))
	}
	if hb := c.heartbeatPeriod(); c.CommitHintDelay > 0 && c.CommitHintDelay >= hb {
		errs = append(errs, fmt.Errorf("CommitHintDelay %v must be below the heartbeat period %v", c.CommitHintDelay, hb))
	}
	if hb := c.heartbeatPeriod(); c.SyncInterval >= hb {
		errs = append(errs, fmt.Errorf("SyncInterval %v must be below the heartbeat period %v", c.SyncInterval, hb))
	}
	if c.BusySyncEntries < 1 {
		errs = append(errs, fmt.Errorf("BusySyncEntries %d must be at least 1", c.BusySyncEntries))
	}
	if c.EngineSyncInterval < 0 {
		errs = append(errs, fmt.Errorf("EngineSyncInterval %v is negative", c.EngineSyncInterval))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("replication: invalid config: %w", err)
	}
	return nil
}
