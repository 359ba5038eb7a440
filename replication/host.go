package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"kvnode/engine"
	"kvnode/transport"
	"kvnode/wal"
)

// Host runs every raft group this node holds. One goroutine, the loop,
// drives all of them: it steps incoming messages and proposals, collects
// every group's Ready, writes all their entries and hard states to the WAL
// in one batch with one fsync, applies committed entries to the engine in
// one batch, and advances. See doc.go for the cycle in detail.
type Host struct {
	cfg    *Config
	logger *slog.Logger
	wal    *wal.WAL
	eng    *engine.Engine
	tr     Transport

	// nextID numbers proposals and read batches; the node id in the top
	// bits keeps ids unique across the replicas that may apply them.
	nextID atomic.Uint64

	inbox struct {
		sync.Mutex
		msgs        []transport.Message
		props       []*proposal
		reads       []*readRequest
		snaps       []*snapshotRequest
		tasks       []func()
		unreachable []uint64
	}
	// wake has room for one token: producers never block, and the loop
	// drains everything queued each time it wakes.
	wake chan struct{}

	mu struct {
		sync.RWMutex
		// groups is written only by the loop (under the lock); the loop
		// reads it without locking.
		groups map[uint64]*replica
		// failed is the error that stopped the host (a WAL or engine
		// failure); nil while healthy.
		failed error
	}

	metrics metrics

	// draining makes the host refuse leadership transfers to it.
	draining atomic.Bool
	// epoch anchors the monotonic clock of leases and the vote guard.
	epoch time.Time

	// appender is the goroutine that writes the WAL (appender.go).
	appender struct {
		sync.Mutex
		queue []appendWork
		wake  chan struct{}
	}
	// persistMu is held by the appender while it writes and by
	// DestroyReplica while it deletes, so a replica's log is never written
	// after it is deleted.
	persistMu sync.Mutex

	// Loop-owned scratch, reused every cycle.
	dirty      []*replica
	readies    []readyGroup
	appendWork []appendWork
	applyWork  []applyWork
	readGroups []*replica // groups with reads to issue
	outbox     map[uint64][]transport.Message
	hints      map[hintKey]*raftpb.Message // held commit hints (commithint.go)
	hintTimer  *time.Timer                 // fires when the held hints' delay is over
	opsBuf     []engine.Op
	tickNow    uint64
	snapSem    chan struct{}
	ctx        context.Context
	cancel     context.CancelFunc
	stopOnce   sync.Once
	wg         sync.WaitGroup
	loopDone   chan struct{}
}

type readyGroup struct {
	r  *replica
	rd raft.Ready
}

// Open starts a Host over the groups found in the WAL and the engine. It
// reconciles each group's log with its state machine (see recover.go)
// before starting raft.
func Open(cfg Config) (*Host, error) {
	c := cfg.EnsureDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	h := &Host{
		cfg:       c,
		logger:    c.Logger.With("node", c.NodeID),
		wal:       c.WAL,
		eng:       c.Engine,
		tr:        c.Transport,
		wake:      make(chan struct{}, 1),
		outbox:    make(map[uint64][]transport.Message),
		hints:     make(map[hintKey]*raftpb.Message),
		hintTimer: newHintTimer(),
		snapSem:   make(chan struct{}, c.MaxConcurrentSnapshots),
		loopDone:  make(chan struct{}),
	}
	h.nextID.Store(c.NodeID << 48)
	h.epoch = time.Now()
	h.ctx, h.cancel = context.WithCancel(context.Background())
	h.mu.groups = make(map[uint64]*replica)
	ids, err := h.localGroups()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		r, err := h.loadReplica(id)
		if err != nil {
			return nil, fmt.Errorf("replication: group %d: %w", id, err)
		}
		h.mu.groups[id] = r
	}
	h.appender.wake = make(chan struct{}, 1)
	h.wg.Add(3)
	go h.run()
	go h.runAppender()
	go h.syncEngine()
	return h, nil
}

// Close stops the loop and every goroutine the Host started. Pending
// proposals and reads fail with ErrStopped. It does not close the WAL or
// the engine.
func (h *Host) Close() error {
	h.stopOnce.Do(func() {
		h.cancel()
		h.wg.Wait()
	})
	return nil
}

// Drain makes this host refuse to take leadership by transfer (it drops
// MsgTimeoutNow), so that a node on its way out can hand its groups away
// without other nodes handing them straight back.
func (h *Host) Drain() { h.draining.Store(true) }

// Err returns the storage error that stopped the host, or nil. Once it is
// non-nil the host acknowledges nothing more (fail-stop): the node should
// report itself unhealthy and exit.
func (h *Host) Err() error {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.mu.failed
}

// Done is closed when the loop has exited, after Close or a storage
// failure.
func (h *Host) Done() <-chan struct{} { return h.loopDone }

func (h *Host) stoppedErr() error {
	if err := h.Err(); err != nil {
		return err
	}
	return ErrStopped
}

// replica returns the group's replica, for goroutines other than the loop.
// Once the loop has exited it returns ErrStopped (or the failure that
// stopped the host), so that a closed host does not answer ErrNotLeader
// from the last leadership it knew.
func (h *Host) replica(group uint64) (*replica, error) {
	select {
	case <-h.loopDone:
		return nil, h.stoppedErr()
	default:
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	if h.mu.failed != nil {
		return nil, h.mu.failed
	}
	r, ok := h.mu.groups[group]
	if !ok {
		return nil, fmt.Errorf("%w: %d", ErrGroupNotFound, group)
	}
	return r, nil
}

func (h *Host) notify() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// HandleMessages implements transport.Handler: it queues the messages for
// the loop and returns at once.
func (h *Host) HandleMessages(from uint64, msgs []transport.Message) {
	h.inbox.Lock()
	h.inbox.msgs = append(h.inbox.msgs, msgs...)
	h.inbox.Unlock()
	h.notify()
}

// PeerUnreachable implements transport.Handler.
func (h *Host) PeerUnreachable(to uint64) {
	h.inbox.Lock()
	h.inbox.unreachable = append(h.inbox.unreachable, to)
	h.inbox.Unlock()
	h.notify()
}

// runTask runs fn on the loop and waits for it.
func (h *Host) runTask(ctx context.Context, fn func() error) error {
	done := make(chan error, 1)
	h.inbox.Lock()
	h.inbox.tasks = append(h.inbox.tasks, func() { done <- fn() })
	h.inbox.Unlock()
	h.notify()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-h.loopDone:
		return h.stoppedErr()
	}
}

// run is the loop.
func (h *Host) run() {
	defer h.wg.Done()
	defer close(h.loopDone)
	defer func() {
		// raft panics when the storage it reads fails; after a WAL or
		// engine failure that is expected, and it is the fail-stop, not a
		// crash: stop cleanly and say why.
		if r := recover(); r != nil {
			err := h.storageFailure()
			if err == nil {
				panic(r)
			}
			h.failStop(fmt.Errorf("%w (raft stopped on it: %v)", err, r))
		}
	}()
	ticker := time.NewTicker(h.cfg.TickInterval)
	defer ticker.Stop()
	defer h.hintTimer.Stop()
	for {
		select {
		case <-h.ctx.Done():
			h.shutdown(h.stoppedErr())
			return
		case <-ticker.C:
			h.tick()
		case <-h.hintTimer.C:
			h.releaseHints()
		case <-h.wake:
			// Whoever woke the loop (a transport reader with a burst of
			// frames, a few proposers) is often not alone: yielding once
			// lets the others queue too, so one cycle carries them all.
			// Measured in BenchmarkReplicatedPut with 64 writers: about 13%
			// less CPU per write and fewer raft messages; no change with
			// one writer.
			runtime.Gosched()
		}
		for {
			if err := h.storageFailure(); err != nil {
				// Do not let raft read storage that has failed.
				h.failStop(err)
				return
			}
			h.processInbox()
			if len(h.dirty) == 0 {
				break
			}
			if err := h.cycle(); err != nil {
				h.failStop(err)
				return
			}
		}
	}
}

func (h *Host) markDirty(r *replica) {
	if !r.dirty {
		r.dirty = true
		h.dirty = append(h.dirty, r)
	}
}

func (h *Host) tick() {
	h.tickNow++
	for _, r := range h.mu.groups {
		r.rn.Tick()
		h.markDirty(r)
		h.expireReads(r)
	}
	h.renewLeases()
	if h.tickNow%8 == 0 {
		h.maybeCompactAll()
	}
}

// processInbox steps everything other goroutines queued.
func (h *Host) processInbox() {
	h.inbox.Lock()
	msgs, props, reads := h.inbox.msgs, h.inbox.props, h.inbox.reads
	snaps, tasks, unreachable := h.inbox.snaps, h.inbox.tasks, h.inbox.unreachable
	h.inbox.msgs, h.inbox.props, h.inbox.reads = nil, nil, nil
	h.inbox.snaps, h.inbox.tasks, h.inbox.unreachable = nil, nil, nil
	h.inbox.Unlock()

	draining := h.draining.Load()
	for _, m := range msgs {
		r, ok := h.mu.groups[m.Group]
		if !ok {
			continue // not (yet, or any more) ours; raft will retry
		}
		if draining && m.Msg.GetType() == raftpb.MessageType_MsgTimeoutNow {
			continue // a draining node takes no leadership
		}
		if h.voteGuard(m.Msg) {
			continue
		}
		if err := r.rn.Step(m.Msg); err != nil && !errors.Is(err, raft.ErrStepPeerNotFound) {
			h.logger.Debug("step", "group", r.id, "type", m.Msg.GetType(), "err", err)
		}
		h.markDirty(r)
	}
	for _, to := range unreachable {
		for _, r := range h.mu.groups {
			r.rn.ReportUnreachable(to)
		}
	}
	for _, s := range snaps {
		h.stepSnapshot(s)
	}
	if len(props) > 0 {
		h.propose(props)
	}
	for _, rq := range reads {
		h.queueRead(rq)
	}
	h.issueReads()
	for _, fn := range tasks {
		fn()
	}
}

// cycle handles the Ready of every dirty group: the heart of the write
// path. raft runs with AsyncStorageWrites: a Ready's log writes arrive as
// MsgStorageAppend messages, which go to the appender goroutine (one WAL
// batch and one fsync for everything queued, see appender.go), and its
// committed entries as MsgStorageApply messages, which the loop applies
// here. Every message that depends on a write being durable is carried
// inside that write's message and sent only after the fsync, so all the
// other messages can go out at once: a leader's appends leave in parallel
// with its own fsync, a follower's acknowledgement only after its own.
func (h *Host) cycle() error {
	readies := h.readies[:0]
	for _, r := range h.dirty {
		r.dirty = false
		if r.destroyed || !r.rn.HasReady() {
			continue
		}
		readies = append(readies, readyGroup{r: r, rd: r.rn.Ready()})
	}
	h.dirty = h.dirty[:0]
	h.readies = readies[:0]
	if len(readies) == 0 {
		return nil
	}
	h.metrics.cycles.Add(1)

	appends, applies := h.appendWork[:0], h.applyWork[:0]
	for i := range readies {
		g := &readies[i]
		if g.rd.SoftState != nil {
			h.onSoftState(g.r, g.rd.SoftState)
		}
		if hs := g.rd.HardState; hs != nil {
			g.r.term.Store(hs.GetTerm())
			g.r.commit.Store(hs.GetCommit())
		}
		g.r.noteProposed(g.rd.Entries)
		for _, m := range g.rd.Messages {
			switch m.GetTo() {
			case raft.LocalAppendThread:
				w := appendWork{r: g.r, m: m}
				if !raft.IsEmptySnap(m.GetSnapshot()) {
					// The appender installs it into the engine before the WAL
					// records it.
					w.staged, g.r.staged = g.r.staged, nil
					if w.staged == nil || w.staged.msg.GetSnapshot().GetMetadata().GetIndex() != m.GetSnapshot().GetMetadata().GetIndex() {
						return fmt.Errorf("group %d: raft accepted snapshot %d that was not staged", g.r.id, m.GetSnapshot().GetMetadata().GetIndex())
					}
				}
				appends = append(appends, w)
			case raft.LocalApplyThread:
				applies = append(applies, applyWork{r: g.r, m: m})
			default:
				h.queueMessage(g.r, m)
			}
		}
		if len(g.rd.ReadStates) > 0 {
			h.onReadStates(g.r, g.rd.ReadStates)
		}
		// A staged snapshot raft did not take is discarded; the sender
		// hears "received" either way, and raft moves on.
		h.finishSnapshotRequest(g.r)
	}
	h.flushOutbox()
	if len(appends) > 0 {
		h.enqueueAppends(appends)
	}
	clear(appends)
	h.appendWork = appends[:0]

	if len(applies) > 0 {
		t0 := time.Now()
		if err := h.apply(applies); err != nil {
			return err
		}
		h.metrics.applyNanos.Add(uint64(time.Since(t0)))
		for _, w := range applies {
			for _, resp := range w.m.GetResponses() {
				_ = w.r.rn.Step(resp)
			}
			h.markDirty(w.r)
		}
	}
	clear(applies)
	h.applyWork = applies[:0]
	for i := range readies {
		h.completeReads(readies[i].r)
	}
	clear(readies)
	return nil
}

// queueMessage sorts an outgoing message by destination. Snapshots take
// their own path: a stream from the engine.
func (h *Host) queueMessage(r *replica, m *raftpb.Message) {
	if m.GetType() == raftpb.MessageType_MsgSnap {
		h.sendSnapshot(r, m)
		return
	}
	if h.cfg.CommitHintDelay > 0 && h.routeHint(r.id, m) {
		return
	}
	to := m.GetTo()
	h.outbox[to] = append(h.outbox[to], transport.Message{Group: r.id, Msg: m})
}

func (h *Host) flushOutbox() {
	for to, msgs := range h.outbox {
		if len(msgs) == 0 {
			continue
		}
		h.tr.Send(to, msgs)
		// The transport keeps msgs; start a new slice rather than reuse.
		h.outbox[to] = nil
	}
}

func (h *Host) onSoftState(r *replica, ss *raft.SoftState) {
	wasLeader := r.state == raft.StateLeader
	oldLead := r.leader.Load()
	r.state = ss.RaftState
	r.leader.Store(ss.Lead)
	r.isLeader.Store(ss.RaftState == raft.StateLeader)
	if ss.Lead != oldLead || ss.RaftState != raft.StateLeader {
		r.dropLease()
	}
	if ss.Lead != oldLead {
		h.logger.Debug("leader changed", "group", r.id, "leader", ss.Lead, "state", ss.RaftState.String())
		h.dropReadBatches(r)
	}
	if wasLeader && ss.RaftState != raft.StateLeader {
		r.lostLeadership()
	}
}

// storageFailure returns the error of a failed WAL or engine, or of an
// earlier fail-stop.
func (h *Host) storageFailure() error {
	if err := h.wal.Err(); err != nil {
		return err
	}
	if err := h.eng.Err(); err != nil {
		return err
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.mu.failed
}

// failStop stops the loop after a storage failure: nothing more is
// acknowledged (P5).
func (h *Host) failStop(err error) {
	h.mu.Lock()
	if h.mu.failed == nil {
		h.mu.failed = fmt.Errorf("replication: fail-stop: %w", err)
		h.logger.Error("replication stopped by a storage failure; acknowledging nothing more", "err", err)
	}
	failed := h.mu.failed
	h.mu.Unlock()
	h.shutdown(failed)
}

// shutdown fails everything pending and stops the helpers. Runs on the
// loop as it exits.
func (h *Host) shutdown(err error) {
	h.cancel()
	h.inbox.Lock()
	props, reads, snaps := h.inbox.props, h.inbox.reads, h.inbox.snaps
	h.inbox.props, h.inbox.reads, h.inbox.snaps = nil, nil, nil
	h.inbox.Unlock()
	for _, p := range props {
		p.finish(nil, err)
	}
	for _, rq := range reads {
		rq.finish(err)
	}
	for _, s := range snaps {
		s.finish(err)
	}
	for _, r := range h.mu.groups {
		r.failAll(err)
		if r.staged != nil {
			r.staged.finish(err)
			r.staged = nil
		}
	}
}

// syncEngine periodically fsyncs the engine so that logs can be compacted
// below what it holds durably.
func (h *Host) syncEngine() {
	defer h.wg.Done()
	if h.cfg.EngineSyncInterval == 0 {
		return
	}
	t := time.NewTicker(h.cfg.EngineSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-h.ctx.Done():
			return
		case <-t.C:
			if err := h.eng.Sync(); err != nil {
				h.runTaskAsync(func() { h.failStopFromTask(fmt.Errorf("engine sync: %w", err)) })
				return
			}
		}
	}
}

// runTaskAsync queues fn for the loop without waiting.
func (h *Host) runTaskAsync(fn func()) {
	h.inbox.Lock()
	h.inbox.tasks = append(h.inbox.tasks, fn)
	h.inbox.Unlock()
	h.notify()
}

// failStopFromTask makes the loop stop at its next check.
func (h *Host) failStopFromTask(err error) {
	h.mu.Lock()
	if h.mu.failed == nil {
		h.mu.failed = fmt.Errorf("replication: fail-stop: %w", err)
	}
	h.mu.Unlock()
	h.logger.Error("replication stopped by a storage failure; acknowledging nothing more", "err", err)
	h.cancel()
}
