package replication

import (
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Leader leases: linearizable reads without a heartbeat round per read.
//
// A ReadIndex round that completes proves that, when the round began, a
// quorum still followed this leader: each of them had just heard from it.
// With CheckQuorum on, a follower that heard from its leader refuses to vote
// for anyone else for an election timeout (raft's "in lease" check, counted
// in its own ticks). So no other leader can be elected, and nothing can be
// committed without this leader, until the round's start plus a little
// less than the minimum election timeout. Until then, the leader's own
// commit index is a valid read index: a read needs no message at all, only
// the local apply to have caught up.
//
// What could break that reasoning, and what covers it:
//   - Time is measured on the monotonic clock, never the wall clock: a
//     clock that jumps changes nothing. A process that is paused (SIGSTOP,
//     a long GC) finds on waking that the monotonic clock ran on and its
//     lease expired; its followers' ticks stopped while it was paused only
//     if they were paused too, which only delays their votes.
//   - A follower that restarts forgets that it heard from the leader and
//     would vote at once. A host therefore refuses to vote until a lease
//     duration has passed since it started (voteGuard).
//   - A leadership transfer makes the target campaign with votes that
//     ignore the lease; the leader drops its lease before transferring.
//   - The lease is tied to the term it was earned in; any change of term or
//     of leader drops it.
//
// Only the leader reads under a lease; followers ask it for a read index.
// Lease reads are renewed by a ReadIndex round in the background while they
// are being used, so a busy leader keeps its lease without making readers
// wait for the renewal.

// leaseDuration is how long a completed ReadIndex round keeps the lease:
// the minimum election timeout less two ticks of slack (one tick the
// follower's clock may run early, one for the heartbeat's flight), less a
// further 10%.
func (h *Host) leaseDuration() time.Duration {
	ticks := h.cfg.ElectionTicks - 2
	if ticks < 1 {
		return 0
	}
	return time.Duration(ticks) * h.cfg.TickInterval * 9 / 10
}

// mono is the host's monotonic clock.
func (h *Host) mono() time.Duration { return time.Since(h.epoch) }

// leaseRead serves a linearizable read point from the leader's lease if it
// can: it returns true once the local state machine has applied everything
// committed, without a message to anyone.
func (h *Host) leaseRead(r *replica) bool {
	if !r.isLeader.Load() {
		return false
	}
	until := time.Duration(r.leaseUntil.Load())
	if h.mono() >= until || r.leaseTerm.Load() != r.term.Load() {
		return false
	}
	r.leaseUsed.Store(true)
	if r.applied.Load() < r.commit.Load() {
		return false // let the slow path wait for apply
	}
	h.metrics.leaseReads.Add(1)
	return true
}

// extendLease records that a ReadIndex round issued at issuedAt (in term)
// completed.
func (h *Host) extendLease(r *replica, issuedAt time.Duration, term uint64) {
	if r.state != raft.StateLeader || term != r.term.Load() {
		return
	}
	until := issuedAt + h.leaseDuration()
	if int64(until) > r.leaseUntil.Load() || r.leaseTerm.Load() != term {
		r.leaseTerm.Store(term)
		r.leaseUntil.Store(int64(until))
	}
}

// dropLease ends a replica's lease at once.
func (r *replica) dropLease() {
	r.leaseUntil.Store(0)
	r.leaseTerm.Store(0)
}

// renewLeases starts a background ReadIndex round for every group whose
// lease is being used and is past half its life.
func (h *Host) renewLeases() {
	now := h.mono()
	half := h.leaseDuration() / 2
	for _, r := range h.mu.groups {
		if r.state != raft.StateLeader || r.destroyed || !r.leaseUsed.Load() || r.renewing {
			continue
		}
		if time.Duration(r.leaseUntil.Load())-now > half {
			continue
		}
		r.leaseUsed.Store(false)
		r.renewing = true
		h.issueReadBatch(r, nil)
	}
}

// voteGuard drops vote requests during the first lease duration after the
// host started: a restarted follower must not help elect a new leader
// while the old one may still hold a lease it gave it. The candidate
// retries at its next election timeout.
func (h *Host) voteGuard(m *raftpb.Message) bool {
	switch m.GetType() {
	case raftpb.MessageType_MsgVote, raftpb.MessageType_MsgPreVote:
		return h.mono() < h.leaseDuration()
	}
	return false
}
