package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"kvnode/engine"
)

// applyWork is a group's MsgStorageApply: committed entries that are
// durable in the local log, to apply in order.
type applyWork struct {
	r *replica
	m *raftpb.Message
}

// apply applies the committed entries of every group in one engine batch.
// The batch is committed without fsync: the log holds the entries and
// replays them after a crash (see the engine's recovery contract).
// Proposals are completed only after the batch commits.
func (h *Host) apply(work []applyWork) error {
	b := h.eng.NewBatch()
	defer b.Close()
	type done struct {
		r       *replica
		index   uint64
		id      uint64
		hasID   bool
		results []engine.Result
		err     error
	}
	var dones []done
	for _, w := range work {
		r := w.r
		for _, e := range w.m.GetEntries() {
			d := done{r: r, index: e.GetIndex()}
			var err error
			switch e.GetType() {
			case raftpb.EntryType_EntryNormal:
				d.id, d.hasID, d.results, d.err, err = h.applyCommand(b, r, e)
			case raftpb.EntryType_EntryConfChange, raftpb.EntryType_EntryConfChangeV2:
				d.id, d.hasID, err = h.applyConfChange(b, r, e)
			default:
				err = applyEmpty(b, r.id, e.GetIndex(), e.GetTerm())
			}
			if err != nil {
				return fmt.Errorf("apply group %d index %d: %w", r.id, e.GetIndex(), err)
			}
			dones = append(dones, d)
		}
	}
	if err := b.Commit(); err != nil {
		return fmt.Errorf("engine commit: %w", err)
	}
	h.metrics.entriesApplied.Add(uint64(len(dones)))
	for _, d := range dones {
		d.r.applied.Store(d.index)
		d.r.appliedEntry(d.index, d.id, d.hasID, d.results, d.err)
	}
	return nil
}

// applyCommand applies one normal entry. A command the engine refuses
// (it was validated before proposing, so only a mismatch of limits
// between versions could do this) still advances the applied index, on
// every replica alike, and its error goes to the proposer.
func (h *Host) applyCommand(b *engine.Batch, r *replica, e *raftpb.Entry) (id uint64, hasID bool, results []engine.Result, opErr, err error) {
	data := e.GetData()
	if len(data) == 0 {
		return 0, false, nil, nil, applyEmpty(b, r.id, e.GetIndex(), e.GetTerm())
	}
	id, ops, derr := decodeCommand(data, h.opsBuf[:0])
	h.opsBuf = ops[:0]
	if derr != nil {
		return 0, false, nil, nil, fmt.Errorf("undecodable entry: %w", derr)
	}
	results, err = b.Apply(r.id, e.GetIndex(), e.GetTerm(), ops, nil)
	clear(ops)
	if errors.Is(err, engine.ErrInvalidOp) {
		return id, true, nil, fmt.Errorf("%w: %v", ErrInvalidCommand, err), applyEmpty(b, r.id, e.GetIndex(), e.GetTerm())
	}
	return id, true, results, nil, err
}

// applyConfChange applies a configuration change to raft and records the
// new ConfState in the same engine batch as the applied index (which makes
// the engine sync that batch: see engine.Batch.SetConfState).
func (h *Host) applyConfChange(b *engine.Batch, r *replica, e *raftpb.Entry) (uint64, bool, error) {
	var cc raftpb.ConfChangeI
	var ctx []byte
	if e.GetType() == raftpb.EntryType_EntryConfChange {
		var c raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return 0, false, err
		}
		cc, ctx = &c, c.GetContext()
	} else {
		var c raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return 0, false, err
		}
		cc, ctx = &c, c.GetContext()
	}
	cs := r.rn.ApplyConfChange(cc)
	r.conf.Store(cs)
	if err := b.SetConfState(r.id, marshalConfState(cs)); err != nil {
		return 0, false, err
	}
	if err := applyEmpty(b, r.id, e.GetIndex(), e.GetTerm()); err != nil {
		return 0, false, err
	}
	h.logger.Info("configuration changed", "group", r.id, "index", e.GetIndex(),
		"voters", cs.GetVoters(), "learners", cs.GetLearners())
	if len(ctx) == 8 {
		return binary.BigEndian.Uint64(ctx), true, nil
	}
	return 0, false, nil
}

// applyEmpty advances a group's applied index over an entry that changes
// no data: raft's empty entries, conf changes, refused commands.
func applyEmpty(b *engine.Batch, group, index, term uint64) error {
	_, err := b.Apply(group, index, term, nil, nil)
	return err
}
