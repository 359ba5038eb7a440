package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"kvnode/wal"
)

// bootstrapIndex and bootstrapTerm are where a new group's history
// starts: a snapshot at index 1, term 1, holding the initial voters. Every
// initial replica writes the same one, so their logs agree from the
// start, and a replica added later (with an empty log) needs a snapshot,
// the one path every new replica takes.
const (
	bootstrapIndex = 1
	bootstrapTerm  = 1
)

// Bootstrap creates a new group on this node with the given initial
// voters. Every initial voter must call it with the same voters. A group
// of one campaigns at once.
func (h *Host) Bootstrap(ctx context.Context, group uint64, voters []uint64) error {
	if len(voters) == 0 || !slices.Contains(voters, h.cfg.NodeID) {
		return fmt.Errorf("replication: bootstrap group %d: voters %v must include this node %d", group, voters, h.cfg.NodeID)
	}
	return h.runTask(ctx, func() error {
		if _, ok := h.mu.groups[group]; ok {
			return fmt.Errorf("%w: %d", ErrGroupExists, group)
		}
		if st := h.eng.Applied(group); st.Index != 0 {
			return fmt.Errorf("%w: %d has engine state", ErrGroupExists, group)
		}
		cs := raftpb.EnsureConfState(&raftpb.ConfState{Voters: slices.Clone(voters)})
		csb := marshalConfState(cs)
		b := h.eng.NewBatch()
		defer b.Close()
		if err := b.SetConfState(group, csb); err != nil {
			return err
		}
		if err := applyEmpty(b, group, bootstrapIndex, bootstrapTerm); err != nil {
			return err
		}
		// The ConfState makes Commit sync: the log written next claims this
		// state as its snapshot, so it must be durable first, or a power
		// loss leaves a log whose compaction point the engine never
		// reached, and the node cannot restart.
		if err := b.Commit(); err != nil {
			return err
		}
		idx, term, commit, vote := uint64(bootstrapIndex), uint64(bootstrapTerm), uint64(bootstrapIndex), uint64(0)
		snap := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: &idx, Term: &term, ConfState: cs}}
		hs := &raftpb.HardState{Term: &term, Vote: &vote, Commit: &commit}
		if err := h.wal.Append([]wal.Update{{Group: group, Snapshot: snap, HardState: hs}}); err != nil {
			return err
		}
		ws, err := h.wal.Storage(group)
		if err != nil {
			return err
		}
		r, err := h.startReplica(group, ws)
		if err != nil {
			return err
		}
		h.addReplicaLocked(r)
		if len(voters) == 1 {
			_ = r.rn.Campaign()
		}
		h.logger.Info("bootstrapped group", "group", group, "voters", voters)
		return nil
	})
}

// AddReplica starts an empty replica of an existing group on this node.
// It has no configuration of its own: it waits for the group's leader to
// add it (as a learner, say) and send it a snapshot.
func (h *Host) AddReplica(ctx context.Context, group uint64) error {
	return h.runTask(ctx, func() error {
		if _, ok := h.mu.groups[group]; ok {
			return fmt.Errorf("%w: %d", ErrGroupExists, group)
		}
		ws, err := h.wal.Storage(group)
		if err != nil {
			return err
		}
		r, err := h.startReplica(group, ws)
		if err != nil {
			return err
		}
		h.addReplicaLocked(r)
		return nil
	})
}

func (h *Host) addReplicaLocked(r *replica) {
	h.mu.Lock()
	h.mu.groups[r.id] = r
	h.mu.Unlock()
	h.markDirty(r)
}

// DestroyReplica stops this node's replica of a group and deletes its log
// and state machine. The group's membership is not changed: remove the
// replica from the group's configuration first (RemoveVoter), or it will
// be counted as a voter that never answers.
func (h *Host) DestroyReplica(ctx context.Context, group uint64) error {
	return h.runTask(ctx, func() error {
		r, ok := h.mu.groups[group]
		if !ok {
			return fmt.Errorf("%w: %d", ErrGroupNotFound, group)
		}
		r.destroyed = true
		r.failAll(fmt.Errorf("%w: group %d left this node", ErrUnknownOutcome, group))
		if r.staged != nil {
			r.staged.finish(fmt.Errorf("%w: %d", ErrGroupNotFound, group))
			r.staged = nil
		}
		h.mu.Lock()
		delete(h.mu.groups, group)
		h.mu.Unlock()
		h.dropHints(group)
		// Holding persistMu: the appender cannot write this group's log
		// after it is deleted, and skips its queued writes from now on.
		h.persistMu.Lock()
		defer h.persistMu.Unlock()
		r.removed.Store(true)
		// The log goes first: a crash between the two leaves an engine
		// partition without a log, which restarts as a replica holding a
		// snapshot (harmless, and garbage-collected by its owner), never a
		// log without the state it was compacted into.
		if err := h.wal.DeleteGroup(group); err != nil {
			return err
		}
		if err := h.eng.DropPartition(group); err != nil {
			return err
		}
		h.logger.Info("destroyed replica", "group", group)
		return nil
	})
}

func (h *Host) confChange(ctx context.Context, group uint64, typ raftpb.ConfChangeType, node uint64) error {
	cc := &raftpb.ConfChangeV2{Changes: []*raftpb.ConfChangeSingle{{Type: &typ, NodeId: &node}}}
	return h.ProposeConfChange(ctx, group, cc)
}

// AddLearner adds node to the group as a non-voting learner. The node
// must host a replica (AddReplica) to catch up.
func (h *Host) AddLearner(ctx context.Context, group, node uint64) error {
	return h.confChange(ctx, group, raftpb.ConfChangeType_ConfChangeAddLearnerNode, node)
}

// PromoteVoter makes a learner (or a new node) a voter.
func (h *Host) PromoteVoter(ctx context.Context, group, node uint64) error {
	return h.confChange(ctx, group, raftpb.ConfChangeType_ConfChangeAddNode, node)
}

// RemoveReplica removes node from the group's configuration.
func (h *Host) RemoveReplica(ctx context.Context, group, node uint64) error {
	return h.confChange(ctx, group, raftpb.ConfChangeType_ConfChangeRemoveNode, node)
}

// TransferLeadership asks the leader of the group to hand leadership to
// node, and waits until node leads or ctx ends. It must be called on the
// current leader.
func (h *Host) TransferLeadership(ctx context.Context, group, to uint64) error {
	r, err := h.replica(group)
	if err != nil {
		return err
	}
	if r.leader.Load() == to {
		return nil
	}
	err = h.runTask(ctx, func() error {
		if r.state != raft.StateLeader {
			return &NotLeaderError{Group: group, Leader: r.leader.Load()}
		}
		// The target's campaign ignores the followers' leases: stop
		// serving reads from ours first.
		r.dropLease()
		r.rn.TransferLeader(to)
		h.markDirty(r)
		return nil
	})
	if err != nil {
		return err
	}
	// The target refuses to campaign while it has a committed
	// configuration change it has not applied yet (raft's rule), and the
	// leader then gives the transfer up after an election timeout. A
	// transfer right after a configuration change meets that often, so
	// while this replica still leads and no transfer is under way, ask
	// again.
	t := time.NewTicker(h.cfg.TickInterval)
	defer t.Stop()
	for r.leader.Load() != to {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-h.loopDone:
			return h.stoppedErr()
		case <-t.C:
		}
		_ = h.runTask(ctx, func() error {
			if !r.destroyed && r.state == raft.StateLeader && r.rn.BasicStatus().LeadTransferee == raft.None {
				r.rn.TransferLeader(to)
				h.markDirty(r)
			}
			return nil
		})
	}
	return nil
}

// Campaign makes this replica start an election now instead of waiting for
// its election timeout. Tests and the node's bring-up use it.
func (h *Host) Campaign(ctx context.Context, group uint64) error {
	return h.runTask(ctx, func() error {
		r, ok := h.mu.groups[group]
		if !ok {
			return fmt.Errorf("%w: %d", ErrGroupNotFound, group)
		}
		h.markDirty(r)
		return r.rn.Campaign()
	})
}

// GroupStatus is a snapshot of one replica's state.
type GroupStatus struct {
	Group    uint64
	Leader   uint64
	IsLeader bool
	// Term is the replica's current term; Commit the highest index it
	// knows committed; Applied the highest it applied.
	Term, Commit, Applied uint64
	// Voters and Learners are the configuration as of Applied.
	Voters, Learners []uint64
}

// Status reports the replica of group on this node.
func (h *Host) Status(group uint64) (GroupStatus, error) {
	r, err := h.replica(group)
	if err != nil {
		return GroupStatus{}, err
	}
	return r.status(), nil
}

func (r *replica) status() GroupStatus {
	cs := r.conf.Load()
	return GroupStatus{
		Group:    r.id,
		Leader:   r.leader.Load(),
		IsLeader: r.isLeader.Load(),
		Term:     r.term.Load(),
		Commit:   r.commit.Load(),
		Applied:  r.applied.Load(),
		Voters:   slices.Clone(cs.GetVoters()),
		Learners: slices.Clone(cs.GetLearners()),
	}
}

// Groups lists the groups this node holds, in order.
func (h *Host) Groups() []uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	ids := make([]uint64, 0, len(h.mu.groups))
	for id := range h.mu.groups {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Leader returns who this node believes leads group (0: nobody known).
func (h *Host) Leader(group uint64) (uint64, error) {
	r, err := h.replica(group)
	if err != nil {
		return 0, err
	}
	return r.leader.Load(), nil
}

// Progress reports, on the leader, how far each member's log matches:
// what placement needs to know whether a new replica caught up.
func (h *Host) Progress(ctx context.Context, group uint64) (map[uint64]uint64, error) {
	var out map[uint64]uint64
	err := h.runTask(ctx, func() error {
		r, ok := h.mu.groups[group]
		if !ok {
			return fmt.Errorf("%w: %d", ErrGroupNotFound, group)
		}
		if r.state != raft.StateLeader {
			return &NotLeaderError{Group: group, Leader: r.leader.Load()}
		}
		out = make(map[uint64]uint64)
		r.rn.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			out[id] = pr.Match
		})
		return nil
	})
	return out, err
}

// maybeCompactAll compacts the logs that have grown past the threshold,
// never above what the engine holds durably.
func (h *Host) maybeCompactAll() {
	for _, r := range h.mu.groups {
		if r.destroyed {
			continue
		}
		synced := h.eng.SyncedApplied(r.id)
		first, err := r.st.FirstIndex()
		if err != nil {
			continue
		}
		if synced < first+h.cfg.CompactThreshold+h.cfg.LogRetainEntries {
			continue
		}
		to := synced - h.cfg.LogRetainEntries
		if err := h.wal.Compact(r.id, to, r.conf.Load()); err != nil {
			if errors.Is(err, wal.ErrFailed) {
				h.failStopFromTask(err)
				return
			}
			if !errors.Is(err, raft.ErrCompacted) {
				h.logger.Warn("log compaction", "group", r.id, "index", to, "err", err)
			}
			continue
		}
		h.logger.Debug("compacted log", "group", r.id, "index", to)
	}
}
