package replication

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/raft/v3"
)

// readRequest is one caller waiting for a linearizable read point.
type readRequest struct {
	group uint64
	err   error
	done  chan struct{}
}

func (rq *readRequest) finish(err error) {
	rq.err = err
	close(rq.done)
}

// readBatch is every read of a group that arrived in one cycle, served by
// one ReadIndex request: one heartbeat round for the lot.
type readBatch struct {
	id     uint64
	reqs   []*readRequest
	index  uint64
	issued uint64 // the tick it was issued at
	// issuedAt and term are when (on the monotonic clock) and in which
	// term the round began: its completion extends the leader's lease.
	issuedAt time.Duration
	term     uint64
	renewal  bool // a lease renewal with no reads of its own
}

func (b *readBatch) finish(err error) {
	for _, rq := range b.reqs {
		rq.finish(err)
	}
	b.reqs = nil
}

// ReadIndex waits until this replica's state machine reflects every write
// committed before the call: raft's ReadIndex (a quorum confirms the
// leader, which names its commit index), then local apply up to it. Works
// on the leader and on followers (which ask the leader). Reading the
// engine after it returns is linearizable.
//
// Errors: ErrReadDropped (retry), the context's error, ErrStopped,
// ErrGroupNotFound.
func (h *Host) ReadIndex(ctx context.Context, group uint64) error {
	r, err := h.replica(group)
	if err != nil {
		return err
	}
	if h.leaseRead(r) {
		return nil
	}
	rq := &readRequest{group: group, done: make(chan struct{})}
	h.inbox.Lock()
	h.inbox.reads = append(h.inbox.reads, rq)
	h.inbox.Unlock()
	h.notify()
	select {
	case <-rq.done:
		return rq.err
	case <-ctx.Done():
		return ctx.Err()
	case <-h.loopDone:
		return h.stoppedErr()
	}
}

// Get reads a key of the group. With stale false it is linearizable
// (ReadIndex first); with stale true it reads the local replica as it is,
// which is fast and may miss recent writes.
func (h *Host) Get(ctx context.Context, group uint64, key []byte, stale bool) ([]byte, uint64, error) {
	if !stale {
		if err := h.ReadIndex(ctx, group); err != nil {
			return nil, 0, err
		}
	} else if _, err := h.replica(group); err != nil {
		return nil, 0, err
	}
	return h.eng.Get(group, key)
}

// queueRead parks a read until the batch for its group is issued.
func (h *Host) queueRead(rq *readRequest) {
	r, ok := h.mu.groups[rq.group]
	if !ok || r.destroyed {
		rq.finish(fmt.Errorf("%w: %d", ErrGroupNotFound, rq.group))
		return
	}
	if len(r.newReads) == 0 {
		h.readGroups = append(h.readGroups, r)
	}
	r.newReads = append(r.newReads, rq)
}

// issueReads sends one ReadIndex per group with new reads. A leader
// holding a lease needs none: its commit index is the read index.
func (h *Host) issueReads() {
	for _, r := range h.readGroups {
		if len(r.newReads) == 0 || r.destroyed {
			continue
		}
		reqs := r.newReads
		r.newReads = nil
		if r.state == raft.StateLeader && h.mono() < time.Duration(r.leaseUntil.Load()) && r.leaseTerm.Load() == r.term.Load() {
			h.metrics.leaseReads.Add(uint64(len(reqs)))
			r.readWaiting = append(r.readWaiting, &readBatch{reqs: reqs, index: r.commit.Load()})
			h.completeReads(r)
			continue
		}
		if r.leader.Load() == raft.None {
			// raft would drop the request silently; fail fast instead.
			for _, rq := range reqs {
				rq.finish(fmt.Errorf("%w: group %d has no leader", ErrReadDropped, r.id))
			}
			continue
		}
		h.issueReadBatch(r, reqs)
	}
	clear(h.readGroups)
	h.readGroups = h.readGroups[:0]
}

// issueReadBatch asks raft for a read index for reqs (none: a lease
// renewal).
func (h *Host) issueReadBatch(r *replica, reqs []*readRequest) {
	b := &readBatch{id: h.nextID.Add(1), reqs: reqs, issued: h.tickNow, issuedAt: h.mono(), term: r.term.Load(), renewal: reqs == nil}
	r.readBatches = append(r.readBatches, b)
	r.rn.ReadIndex(binary.BigEndian.AppendUint64(nil, b.id))
	h.metrics.readBatches.Add(1)
	h.metrics.reads.Add(uint64(len(b.reqs)))
	h.markDirty(r)
}

func (h *Host) onReadStates(r *replica, rss []raft.ReadState) {
	for _, rs := range rss {
		if len(rs.RequestCtx) != 8 {
			continue
		}
		id := binary.BigEndian.Uint64(rs.RequestCtx)
		for i, b := range r.readBatches {
			if b.id == id {
				b.index = rs.Index
				r.readBatches = append(r.readBatches[:i], r.readBatches[i+1:]...)
				h.extendLease(r, b.issuedAt, b.term)
				if b.renewal {
					r.renewing = false
				} else {
					r.readWaiting = append(r.readWaiting, b)
				}
				break
			}
		}
	}
}

// completeReads releases the reads whose read index has been applied.
func (h *Host) completeReads(r *replica) {
	if len(r.readWaiting) == 0 {
		return
	}
	applied := r.applied.Load()
	kept := r.readWaiting[:0]
	for _, b := range r.readWaiting {
		if b.index <= applied {
			b.finish(nil)
			continue
		}
		kept = append(kept, b)
	}
	clear(r.readWaiting[len(kept):])
	r.readWaiting = kept
}

// expireReads fails read batches that got no read index in time: raft
// drops ReadIndex requests it cannot serve without telling anyone.
func (h *Host) expireReads(r *replica) {
	if len(r.readBatches) == 0 {
		return
	}
	kept := r.readBatches[:0]
	for _, b := range r.readBatches {
		if h.tickNow-b.issued >= uint64(h.cfg.ReadIndexTimeoutTicks) {
			if b.renewal {
				r.renewing = false
			}
			b.finish(fmt.Errorf("%w: no read index for group %d within %d ticks", ErrReadDropped, r.id, h.cfg.ReadIndexTimeoutTicks))
			continue
		}
		kept = append(kept, b)
	}
	clear(r.readBatches[len(kept):])
	r.readBatches = kept
}

// dropReadBatches fails the reads still waiting for a read index when the
// leader changes; the old leader will not answer them.
func (h *Host) dropReadBatches(r *replica) {
	r.renewing = false
	for _, b := range r.readBatches {
		b.finish(fmt.Errorf("%w: leader of group %d changed", ErrReadDropped, r.id))
	}
	r.readBatches = nil
}
