package replication

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"kvnode/transport"
	"kvnode/wal"
)

// appendWork is one group's MsgStorageAppend: entries, hard state and
// snapshot to persist, and the messages to deliver once they are durable.
type appendWork struct {
	r      *replica
	m      *raftpb.Message
	staged *snapshotRequest // the staged snapshot, if m carries one
}

// enqueueAppends hands a cycle's log writes to the appender.
func (h *Host) enqueueAppends(work []appendWork) {
	h.appender.Lock()
	h.appender.queue = append(h.appender.queue, work...)
	h.appender.Unlock()
	select {
	case h.appender.wake <- struct{}{}:
	default:
	}
}

// runAppender is the goroutine that writes the WAL. Each round takes
// everything queued (possibly from several cycles of the loop), writes it
// as ONE batch with ONE fsync, then delivers the responses that waited for
// it: to peers (a follower's acknowledgement, a vote) through the
// transport, and to raft itself (MsgStorageAppendResp) through the loop's
// inbox. While it waits on the disk, the loop keeps stepping messages and
// proposals, and whatever arrives meanwhile joins the next batch.
//
// On a busy node a round waits out SyncInterval first (see syncPacer).
func (h *Host) runAppender() {
	defer h.wg.Done()
	pacer := syncPacer{interval: h.cfg.SyncInterval, busyEntries: h.cfg.BusySyncEntries}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-h.ctx.Done():
			h.dropAppends()
			return
		case <-h.appender.wake:
		}
		for {
			if wait := pacer.wait(time.Now()); wait > 0 {
				timer.Reset(wait)
				select {
				case <-h.ctx.Done():
					h.dropAppends()
					return
				case <-timer.C:
				}
			}
			h.appender.Lock()
			work := h.appender.queue
			h.appender.queue = nil
			h.appender.Unlock()
			if len(work) == 0 {
				break
			}
			pacer.started(time.Now())
			entries, err := h.persist(work)
			if err != nil {
				h.failStopFromTask(err)
				h.dropAppends()
				return
			}
			pacer.finished(entries)
		}
	}
}

// syncPacer spaces the appender's rounds while the node is busy: a round
// that follows one of at least busyEntries entries starts no sooner than
// interval after that one started (Config.SyncInterval). Times come from
// the caller, with their monotonic readings, so a jump of the wall clock
// changes nothing. The zero value never waits.
type syncPacer struct {
	interval    time.Duration
	busyEntries int
	lastStart   time.Time
	busy        bool
}

// wait returns how long to wait, at now, before taking the queue.
func (p *syncPacer) wait(now time.Time) time.Duration {
	if !p.busy || p.interval <= 0 {
		return 0
	}
	return max(p.interval-now.Sub(p.lastStart), 0)
}

// started records that a round started at now.
func (p *syncPacer) started(now time.Time) { p.lastStart = now }

// finished records how many log entries the round carried.
func (p *syncPacer) finished(entries int) {
	p.busy = p.busyEntries > 0 && entries >= p.busyEntries
}

// dropAppends discards queued writes on shutdown: nothing in them was
// acknowledged, and staged snapshots are released.
func (h *Host) dropAppends() {
	h.appender.Lock()
	work := h.appender.queue
	h.appender.queue = nil
	h.appender.Unlock()
	for _, w := range work {
		if w.staged != nil {
			w.staged.finish(ErrStopped)
		}
	}
}

// persist writes one round of appends and delivers their responses. It
// returns the number of log entries it wrote.
func (h *Host) persist(work []appendWork) (entries int, err error) {
	h.persistMu.Lock()
	defer h.persistMu.Unlock()

	// Snapshots go into the engine first, so the log never claims a state
	// the engine does not have.
	for _, w := range work {
		if w.staged == nil {
			continue
		}
		if w.r.removed.Load() {
			w.staged.finish(ErrGroupNotFound)
			continue
		}
		if err := h.installSnapshot(w.r, w.staged); err != nil {
			w.staged.finish(err)
			return 0, err
		}
		w.staged.finish(nil)
		r, idx := w.r, w.m.GetSnapshot().GetMetadata().GetIndex()
		h.runTaskAsync(func() { r.snapshotApplied(idx) })
	}

	// One update per group, merging the group's messages in order.
	ups := make([]wal.Update, 0, len(work))
	slot := make(map[uint64]int, len(work))
	sync := false
	for _, w := range work {
		if w.r.removed.Load() {
			continue
		}
		m := w.m
		termOrVote := termOrVoteChanged(w.r, m)
		sync = sync || needsSync(m, termOrVote)
		i, ok := slot[w.r.id]
		if !ok {
			i = len(ups)
			slot[w.r.id] = i
			ups = append(ups, wal.Update{Group: w.r.id})
		}
		u := &ups[i]
		if s := m.GetSnapshot(); !raft.IsEmptySnap(s) {
			u.Snapshot, u.Entries = s, nil
		}
		if ents := m.GetEntries(); len(ents) > 0 {
			entries += len(ents)
			noteConfChanges(w.r, ents)
			if len(u.Entries) == 0 {
				u.Entries = ents
			} else {
				// A later append replaces the suffix from its first index.
				// raft owns both slices: build a new one.
				first := ents[0].GetIndex()
				keep := u.Entries[:0:0]
				for _, e := range u.Entries {
					if e.GetIndex() < first {
						keep = append(keep, e)
					}
				}
				u.Entries = append(keep, ents...)
			}
		}
		if m.Term != nil && (u.HardState != nil || u.Snapshot != nil || hardStateNeeded(w.r, m, termOrVote)) {
			u.HardState = &raftpb.HardState{Term: m.Term, Vote: m.Vote, Commit: m.Commit}
		}
	}
	// In group order the batch's keys are sorted ((kind, group, index)),
	// which lets Pebble's memtable insert each next to the last.
	slices.SortFunc(ups, func(a, b wal.Update) int { return cmp.Compare(a.Group, b.Group) })
	if len(ups) > 0 {
		// A round that only moved commit indexes needs no fsync (see
		// needsSync); the next synced round makes it durable too.
		write := h.wal.AppendUnsynced
		if sync {
			write = h.wal.Append
			h.metrics.walAppends.Add(1)
		}
		t0 := time.Now()
		if err := write(ups); err != nil {
			return 0, fmt.Errorf("wal append: %w", err)
		}
		h.metrics.walNanos.Add(uint64(time.Since(t0)))
	}

	// Now durable: deliver what waited for it, in order.
	var local []transport.Message
	out := make(map[uint64][]transport.Message)
	for _, w := range work {
		for _, resp := range w.m.GetResponses() {
			if resp.GetTo() == h.cfg.NodeID {
				local = append(local, transport.Message{Group: w.r.id, Msg: resp})
				continue
			}
			out[resp.GetTo()] = append(out[resp.GetTo()], transport.Message{Group: w.r.id, Msg: resp})
		}
	}
	for to, msgs := range out {
		h.tr.Send(to, msgs)
	}
	if len(local) > 0 {
		h.HandleMessages(h.cfg.NodeID, local)
	}
	return entries, nil
}

// hardStateNeeded reports whether m's hard state must be written. Term
// and vote must; a commit index alone need not, and skipping it spares a
// WAL key per group per round (a quarter of the log's writes under load).
// The commit index is volatile in Raft: a replica that restarts with an
// older one re-learns it from the leader, and recovery never lets it fall
// below what the engine applied (reconcile). Except for one thing it
// decides: etcd raft will not campaign while a committed configuration
// change is unapplied, and a restarted replica that forgot such a change
// was committed could campaign in the old configuration. So a commit index
// that passes an index where a configuration change may sit (confBarrier)
// is written, as every commit index was before. termOrVote is
// termOrVoteChanged(r, m). The caller holds Host.persistMu.
func hardStateNeeded(r *replica, m *raftpb.Message, termOrVote bool) bool {
	if termOrVote {
		return true
	}
	_, _, commit := r.st.HardState()
	return commit < r.confBarrier && r.confBarrier <= m.GetCommit()
}

// termOrVoteChanged reports whether m carries a hard state whose term or
// vote differs from the one the log holds.
func termOrVoteChanged(r *replica, m *raftpb.Message) bool {
	if m.Term == nil {
		return false
	}
	term, vote, _ := r.st.HardState()
	return m.GetTerm() != term || m.GetVote() != vote
}

// noteConfChanges moves r's confBarrier past the configuration changes
// among ents, which are about to be written. The caller holds
// Host.persistMu.
func noteConfChanges(r *replica, ents []*raftpb.Entry) {
	for _, e := range ents {
		if t := e.GetType(); t == raftpb.EntryType_EntryConfChange || t == raftpb.EntryType_EntryConfChangeV2 {
			r.confBarrier = max(r.confBarrier, e.GetIndex())
		}
	}
}

// needsSync reports whether m writes something raft requires durable
// before its responses go out: entries, a snapshot, a new term or vote.
// A commit index alone does not need it. Its responses only vouch for
// writes of earlier rounds, and every round with entries, a snapshot or a
// term or vote was synced; raft re-learns a lost commit index from the
// leader (and recovery never lets it fall below what was applied).
// termOrVote is termOrVoteChanged for m.
func needsSync(m *raftpb.Message, termOrVote bool) bool {
	return len(m.GetEntries()) > 0 || !raft.IsEmptySnap(m.GetSnapshot()) || termOrVote
}
