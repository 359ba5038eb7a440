package replication

import (
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"kvnode/engine"
	"kvnode/wal"
)

// replica is one group on this node. Fields below "loop-owned" are touched
// only by the loop; the atomics are published for other goroutines.
type replica struct {
	id uint64
	rn *raft.RawNode
	st *groupStorage

	leader   atomic.Uint64
	isLeader atomic.Bool
	applied  atomic.Uint64
	term     atomic.Uint64
	commit   atomic.Uint64
	// conf is the latest applied ConfState (*raftpb.ConfState, never
	// modified once published).
	conf atomic.Pointer[raftpb.ConfState]

	// leaseUntil (on the host's monotonic clock) and leaseTerm are the
	// leader's lease (lease.go); leaseUsed says reads relied on it since
	// the last renewal.
	leaseUntil atomic.Int64
	leaseTerm  atomic.Uint64
	leaseUsed  atomic.Bool

	// removed is set (under Host.persistMu) when the replica is destroyed,
	// so the appender skips its queued writes.
	removed atomic.Bool

	// confBarrier (under Host.persistMu) is the highest log index that may
	// hold a configuration change: a hard state whose commit index reaches
	// it is always written (see hardStateNeeded).
	confBarrier uint64

	// loop-owned
	state     raft.StateType
	dirty     bool
	destroyed bool
	// pending proposals by id, and by log index once known.
	pending  map[uint64]*proposal
	byIndex  map[uint64]*proposal
	proposed []*proposal // stepped this round, index not yet seen
	// reads: newReads wait to be batched into a ReadIndex request,
	// readBatches wait for their read index, readWaiting for apply.
	newReads    []*readRequest
	readBatches []*readBatch
	readWaiting []*readBatch
	// staged is a received snapshot stepped into raft this round.
	staged *snapshotRequest
	// renewing: a lease renewal round is in flight.
	renewing bool
}

func newReplica(id uint64, st *groupStorage, rn *raft.RawNode, applied uint64, cs *raftpb.ConfState) *replica {
	r := &replica{
		id:      id,
		rn:      rn,
		st:      st,
		pending: make(map[uint64]*proposal),
		byIndex: make(map[uint64]*proposal),
	}
	r.applied.Store(applied)
	r.conf.Store(cs)
	bs := rn.BasicStatus()
	r.state = bs.RaftState
	r.leader.Store(bs.Lead)
	r.term.Store(bs.GetTerm())
	r.commit.Store(bs.GetCommit())
	return r
}

// groupStorage is a group's raft.Storage: the log from the WAL, and the
// snapshot and configuration from the engine. The engine's applied state
// is the newest snapshot there is, and its ConfState is the configuration
// as of the applied index, which is what raft must start from: the
// conf changes after it are replayed with the entries.
type groupStorage struct {
	*wal.Storage
	eng   *engine.Engine
	group uint64
}

var _ raft.Storage = (*groupStorage)(nil)

func (s *groupStorage) InitialState() (*raftpb.HardState, *raftpb.ConfState, error) {
	hs, cs, err := s.Storage.InitialState()
	if err != nil {
		return nil, nil, err
	}
	if st := s.eng.Applied(s.group); len(st.ConfState) > 0 {
		cs, err = unmarshalConfState(st.ConfState)
		if err != nil {
			return nil, nil, err
		}
	}
	return hs, cs, nil
}

func (s *groupStorage) Snapshot() (*raftpb.Snapshot, error) {
	st := s.eng.Applied(s.group)
	if st.Index == 0 {
		return s.Storage.Snapshot()
	}
	return snapshotFromState(st)
}

func snapshotFromState(st engine.AppliedState) (*raftpb.Snapshot, error) {
	cs, err := unmarshalConfState(st.ConfState)
	if err != nil {
		return nil, err
	}
	index, term := st.Index, st.Term
	return &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: &index, Term: &term, ConfState: cs}}, nil
}

func unmarshalConfState(b []byte) (*raftpb.ConfState, error) {
	cs := &raftpb.ConfState{}
	if err := proto.Unmarshal(b, cs); err != nil {
		return nil, fmt.Errorf("replication: stored conf state: %w", err)
	}
	return raftpb.EnsureConfState(cs), nil
}

func marshalConfState(cs *raftpb.ConfState) []byte {
	b, err := proto.Marshal(raftpb.EnsureConfState(cs))
	if err != nil {
		panic(fmt.Sprintf("replication: marshal conf state: %v", err))
	}
	return b
}

// raftConfig is the raft configuration of every group.
func (h *Host) raftConfig(group uint64, st raft.Storage, applied uint64) *raft.Config {
	c := h.cfg
	return &raft.Config{
		ID:                        c.NodeID,
		ElectionTick:              c.ElectionTicks,
		HeartbeatTick:             c.HeartbeatTicks,
		Storage:                   st,
		Applied:                   applied,
		MaxSizePerMsg:             c.MaxSizePerMsg,
		MaxCommittedSizePerReady:  16 << 20,
		MaxUncommittedEntriesSize: c.MaxUncommittedBytes,
		MaxInflightMsgs:           c.MaxInflightMsgs,
		CheckQuorum:               true,
		PreVote:                   true,
		ReadOnlyOption:            raft.ReadOnlySafe,
		DisableProposalForwarding: true,
		StepDownOnRemoval:         true,
		AsyncStorageWrites:        true,
		Logger:                    &raftLogger{l: h.logger.With("group", group)},
	}
}

// loadReplica starts raft for a group that has local state, after
// reconciling its log with its state machine.
func (h *Host) loadReplica(id uint64) (*replica, error) {
	ws, err := h.wal.Storage(id)
	if err != nil {
		return nil, err
	}
	if err := h.reconcile(id, ws); err != nil {
		return nil, err
	}
	return h.startReplica(id, ws)
}

func (h *Host) startReplica(id uint64, ws *wal.Storage) (*replica, error) {
	st := &groupStorage{Storage: ws, eng: h.eng, group: id}
	applied := h.eng.Applied(id)
	_, cs, err := st.InitialState()
	if err != nil {
		return nil, err
	}
	rn, err := raft.NewRawNode(h.raftConfig(id, st, applied.Index))
	if err != nil {
		return nil, err
	}
	r := newReplica(id, st, rn, applied.Index, cs)
	// The log may hold configuration changes past the stored commit index;
	// without reading it, assume its last entry is one.
	if r.confBarrier, err = ws.LastIndex(); err != nil {
		return nil, err
	}
	return r, nil
}

// reconcile makes the log and the state machine of a group agree after a
// crash. The engine is written first on every path that moves it ahead of
// the log (a snapshot install), so the only disagreement a crash can leave
// is an engine ahead of the log: record its state as the log's snapshot.
// An engine behind the log's compaction point means entries it needs are
// gone: refuse to start rather than serve a hole.
func (h *Host) reconcile(id uint64, ws *wal.Storage) error {
	st := h.eng.Applied(id)
	first, err := ws.FirstIndex()
	if err != nil {
		return err
	}
	last, err := ws.LastIndex()
	if err != nil {
		return err
	}
	if st.Index < first-1 {
		return fmt.Errorf("state machine applied index %d is below the log's compaction point %d: entries lost", st.Index, first-1)
	}
	term, vote, commit := ws.HardState()
	if st.Index <= last && commit >= st.Index {
		return nil
	}
	// The engine holds a snapshot the log does not know of, or the hard
	// state's commit lags what was applied (applying implies committed).
	u := wal.Update{Group: id}
	if st.Index > last {
		snap, err := snapshotFromState(st)
		if err != nil {
			return err
		}
		u.Snapshot = snap
		h.logger.Info("recovering a snapshot installed before a crash", "group", id, "index", st.Index)
	}
	if st.Term > term {
		term, vote = st.Term, 0
	}
	commit = max(commit, st.Index)
	u.HardState = &raftpb.HardState{Term: &term, Vote: &vote, Commit: &commit}
	return h.wal.Append([]wal.Update{u})
}

// localGroups lists the groups with state in the WAL or the engine.
func (h *Host) localGroups() ([]uint64, error) {
	ids, err := h.wal.Groups()
	if err != nil {
		return nil, err
	}
	ids = append(ids, h.eng.Partitions()...)
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// raftLogger sends raft's log lines to slog. raft is chatty at Info about
// every election of every group, so Info becomes Debug; the host logs
// leadership changes itself.
type raftLogger struct{ l *slog.Logger }

func (r *raftLogger) Debug(v ...any)                 { r.l.Debug(fmt.Sprint(v...)) }
func (r *raftLogger) Debugf(format string, v ...any) { r.l.Debug(fmt.Sprintf(format, v...)) }
func (r *raftLogger) Info(v ...any)                  { r.l.Debug(fmt.Sprint(v...)) }
func (r *raftLogger) Infof(format string, v ...any)  { r.l.Debug(fmt.Sprintf(format, v...)) }
func (r *raftLogger) Warning(v ...any)               { r.l.Warn(fmt.Sprint(v...)) }
func (r *raftLogger) Warningf(format string, v ...any) {
	r.l.Warn(fmt.Sprintf(format, v...))
}
func (r *raftLogger) Error(v ...any)                 { r.l.Error(fmt.Sprint(v...)) }
func (r *raftLogger) Errorf(format string, v ...any) { r.l.Error(fmt.Sprintf(format, v...)) }
func (r *raftLogger) Fatal(v ...any)                 { r.Panic(v...) }
func (r *raftLogger) Fatalf(format string, v ...any) { r.Panicf(format, v...) }
func (r *raftLogger) Panic(v ...any) {
	s := fmt.Sprint(v...)
	r.l.Error(s)
	panic(s)
}
func (r *raftLogger) Panicf(format string, v ...any) {
	s := fmt.Sprintf(format, v...)
	r.l.Error(s)
	panic(s)
}
