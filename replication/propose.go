package replication

import (
	"context"
	"encoding/binary"
	"fmt"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"kvnode/engine"
)

// proposal is one caller waiting for one entry to apply.
type proposal struct {
	group uint64
	id    uint64
	data  []byte               // a command, or
	cc    *raftpb.ConfChangeV2 // a configuration change
	index uint64               // log position, once the leader appended it

	results []engine.Result
	err     error
	done    chan struct{}
}

func (p *proposal) finish(results []engine.Result, err error) {
	select {
	case <-p.done:
		return // already finished
	default:
	}
	p.results, p.err = results, err
	close(p.done)
}

// Propose replicates ops as one raft entry of the group and returns their
// results once the entry is committed (durable on a quorum) and applied
// here, on the leader. Concurrent proposals are batched into one raft
// message per cycle.
//
// Errors: a *NotLeaderError (errors.Is ErrNotLeader) with a leader hint,
// ErrProposalDropped (not applied; safe to retry), ErrUnknownOutcome or
// the context's error (may have applied), ErrStopped, ErrGroupNotFound,
// ErrInvalidCommand (nothing proposed).
func (h *Host) Propose(ctx context.Context, group uint64, ops []engine.Op) ([]engine.Result, error) {
	if err := validateOps(ops); err != nil {
		return nil, err
	}
	r, err := h.replica(group)
	if err != nil {
		return nil, err
	}
	if !r.isLeader.Load() {
		return nil, &NotLeaderError{Group: group, Leader: r.leader.Load()}
	}
	id := h.nextID.Add(1)
	p := &proposal{group: group, id: id, done: make(chan struct{})}
	p.data = encodeCommand(make([]byte, 0, commandSize(ops)), id, ops)
	return h.submit(ctx, p)
}

func (h *Host) submit(ctx context.Context, p *proposal) ([]engine.Result, error) {
	h.inbox.Lock()
	h.inbox.props = append(h.inbox.props, p)
	h.inbox.Unlock()
	h.notify()
	select {
	case <-p.done:
		return p.results, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-h.loopDone:
		select {
		case <-p.done:
			return p.results, p.err
		default:
			return nil, h.stoppedErr()
		}
	}
}

// ProposeConfChange replicates a configuration change of the group and
// returns once it is applied here. Only one change may be in flight per
// group: raft turns a second one into an empty entry, reported as
// ErrProposalDropped.
func (h *Host) ProposeConfChange(ctx context.Context, group uint64, cc *raftpb.ConfChangeV2) error {
	r, err := h.replica(group)
	if err != nil {
		return err
	}
	if !r.isLeader.Load() {
		return &NotLeaderError{Group: group, Leader: r.leader.Load()}
	}
	id := h.nextID.Add(1)
	cc = proto.CloneOf(cc)
	cc.Context = binary.BigEndian.AppendUint64(nil, id)
	_, err = h.submit(ctx, &proposal{group: group, id: id, cc: cc, done: make(chan struct{})})
	return err
}

// propose steps the proposals queued since the last cycle: one MsgProp
// per group carrying all of that group's commands.
func (h *Host) propose(props []*proposal) {
	byGroup := make(map[*replica][]*proposal)
	for _, p := range props {
		r, ok := h.mu.groups[p.group]
		if !ok || r.destroyed {
			p.finish(nil, fmt.Errorf("%w: %d", ErrGroupNotFound, p.group))
			continue
		}
		if r.state != raft.StateLeader {
			p.finish(nil, &NotLeaderError{Group: p.group, Leader: r.leader.Load()})
			continue
		}
		if p.cc != nil {
			if err := r.rn.ProposeConfChange(p.cc); err != nil {
				p.finish(nil, fmt.Errorf("%w: %v", ErrProposalDropped, err))
				continue
			}
			h.track(r, p)
			continue
		}
		byGroup[r] = append(byGroup[r], p)
	}
	for r, ps := range byGroup {
		ents := make([]*raftpb.Entry, len(ps))
		for i, p := range ps {
			ents[i] = &raftpb.Entry{Data: p.data}
		}
		from := h.cfg.NodeID
		err := r.rn.Step(&raftpb.Message{Type: raftpb.MessageType_MsgProp.Enum(), From: &from, Entries: ents})
		h.metrics.proposalBatches.Add(1)
		if err != nil {
			for _, p := range ps {
				p.finish(nil, fmt.Errorf("%w: %v", ErrProposalDropped, err))
			}
			continue
		}
		for _, p := range ps {
			h.track(r, p)
		}
	}
}

func (h *Host) track(r *replica, p *proposal) {
	h.metrics.proposals.Add(1)
	r.pending[p.id] = p
	r.proposed = append(r.proposed, p)
	h.markDirty(r)
}

// noteProposed learns the log index of this replica's proposals from the
// entries a leader's Ready asks to append. A proposal stepped this round
// that is not among them was swallowed by raft (a conf change refused
// while another is pending), and is dropped.
func (r *replica) noteProposed(ents []*raftpb.Entry) {
	if len(r.proposed) == 0 {
		return
	}
	for _, e := range ents {
		id, ok := entryProposalID(e)
		if !ok {
			continue
		}
		if p, ok := r.pending[id]; ok && p.index == 0 {
			p.index = e.GetIndex()
			r.byIndex[p.index] = p
		}
	}
	for _, p := range r.proposed {
		if p.index == 0 {
			delete(r.pending, p.id)
			p.finish(nil, fmt.Errorf("%w: raft did not append it (another configuration change pending?)", ErrProposalDropped))
		}
	}
	clear(r.proposed)
	r.proposed = r.proposed[:0]
}

// entryProposalID extracts the proposal id of a command or conf change.
func entryProposalID(e *raftpb.Entry) (uint64, bool) {
	switch e.GetType() {
	case raftpb.EntryType_EntryNormal:
		return commandID(e.GetData())
	case raftpb.EntryType_EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if proto.Unmarshal(e.GetData(), &cc) != nil || len(cc.GetContext()) != 8 {
			return 0, false
		}
		return binary.BigEndian.Uint64(cc.GetContext()), true
	}
	return 0, false
}

// applied resolves the proposal an applied entry belongs to. The entry at
// a proposal's index being someone else's means a new leader overwrote it.
func (r *replica) appliedEntry(index, id uint64, hasID bool, results []engine.Result, err error) {
	if p, ok := r.byIndex[index]; ok {
		delete(r.byIndex, index)
		if !hasID || p.id != id {
			delete(r.pending, p.id)
			p.finish(nil, fmt.Errorf("%w: its log position %d went to another entry", ErrProposalDropped, index))
		}
	}
	if !hasID {
		return
	}
	if p, ok := r.pending[id]; ok {
		delete(r.pending, id)
		delete(r.byIndex, p.index)
		p.finish(results, err)
	}
}

// lostLeadership is called when this replica stops leading. Its pending
// proposals stay: the new leader may still commit them, and they resolve
// when their index applies.
func (r *replica) lostLeadership() {}

// snapshotApplied resolves proposals that a snapshot jumped over: they may
// be in it or not.
func (r *replica) snapshotApplied(index uint64) {
	for id, p := range r.pending {
		if p.index != 0 && p.index <= index {
			delete(r.pending, id)
			delete(r.byIndex, p.index)
			p.finish(nil, fmt.Errorf("%w: caught up through a snapshot at %d", ErrUnknownOutcome, index))
		}
	}
}

// failAll fails every pending proposal and read.
func (r *replica) failAll(err error) {
	for id, p := range r.pending {
		p.finish(nil, err)
		delete(r.pending, id)
	}
	clear(r.byIndex)
	for _, rq := range r.newReads {
		rq.finish(err)
	}
	r.newReads = nil
	for _, b := range r.readBatches {
		b.finish(err)
	}
	r.readBatches = nil
	for _, b := range r.readWaiting {
		b.finish(err)
	}
	r.readWaiting = nil
}
