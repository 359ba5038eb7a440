package wal

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/record"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// ErrClosed is returned by every method called after Close.
var ErrClosed = errors.New("wal: closed")

// ErrFailed wraps the first write or sync error the WAL saw. From then on
// every method returns it: after a failed fsync the disk's contents are
// unknown (the kernel may have dropped the dirty pages), so the WAL never
// again reports anything as durable. The node must stop and restart from
// what is on disk. Check with errors.Is(err, ErrFailed).
var ErrFailed = errors.New("wal: failed (fail-stop after a write or sync error)")

// ErrInvalidUpdate is returned by Append for an update that would break the
// log: a gap, an entry below the compaction point, a snapshot older than
// the log. Nothing of the call is written.
var ErrInvalidUpdate = errors.New("wal: invalid update")

// Update is what one raft group asks to persist in one cycle: the Entries,
// HardState and Snapshot of a raft.Ready. Zero fields mean "nothing".
type Update struct {
	Group uint64
	// Entries must be contiguous. If the first is at or below the last
	// stored index, the stored suffix from there on is replaced.
	Entries []*raftpb.Entry
	// HardState, if non-nil, replaces the stored hard state.
	HardState *raftpb.HardState
	// Snapshot, if non-nil and non-empty, records a snapshot installed by
	// the state machine: the group's log is discarded and starts again after
	// the snapshot's index. Only its metadata is stored; the data lives in
	// the state machine.
	Snapshot *raftpb.Snapshot
}

// Metrics are cumulative counters since Open.
type Metrics struct {
	// Appends is the number of Append calls that committed a batch; each
	// is exactly one fsync'd Pebble batch.
	Appends uint64
	// Entries and Bytes count the raft entries and their payload bytes.
	Entries uint64
	Bytes   uint64
}

// WAL is the raft log of every group on a node, in one Pebble instance.
// See the package documentation for its concurrency and ownership rules.
type WAL struct {
	db       *pebble.DB
	opts     *Options
	logger   *slog.Logger
	cache    *pebble.Cache
	writeOpt *pebble.WriteOptions

	// failed holds the sticky error (always wrapping ErrFailed) once a
	// write or sync has failed.
	failed atomic.Pointer[error]

	appends, entries, bytes atomic.Uint64

	// wedged is set when Pebble panicked while holding its own locks; the
	// DB can then not be closed, only abandoned to the exiting process.
	wedged atomic.Bool

	mu struct {
		sync.Mutex
		closed bool
		groups map[uint64]*group
	}
}

// Open opens (creating if needed) the WAL in dir. opts may be nil.
func Open(dir string, opts *Options) (*WAL, error) {
	o := opts.EnsureDefaults()
	if err := o.Validate(); err != nil {
		return nil, err
	}
	w := &WAL{opts: o, logger: o.Logger.With("component", "wal")}
	w.mu.groups = make(map[uint64]*group)
	w.writeOpt = pebble.Sync
	if o.unsafeNoSync {
		w.writeOpt = pebble.NoSync
	}
	w.cache = pebble.NewCache(o.CacheSize)
	defer w.cache.Unref()
	popts := &pebble.Options{
		FS:                 o.FS,
		Cache:              w.cache,
		MemTableSize:       o.MemTableSize,
		Logger:             fatalLogger{w: w},
		FormatMajorVersion: pebble.FormatNewest,
	}
	db, err := pebble.Open(dir, popts)
	if err != nil {
		if isCorruption(err) {
			return nil, fmt.Errorf("wal: the raft log in %s is corrupt and the node cannot start from it: %w "+
				"(move the node's data dir aside and start it empty, remove the old member, to rebuild from its peers)", dir, err)
		}
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	w.db = db
	return w, nil
}

// Close closes the WAL. Appends that returned are durable; Close itself
// syncs nothing more.
func (w *WAL) Close() error {
	w.mu.Lock()
	if w.mu.closed {
		w.mu.Unlock()
		return ErrClosed
	}
	w.mu.closed = true
	w.mu.Unlock()
	if err := w.err(); err != nil {
		// Release Pebble's goroutines and files, but report the failure:
		// whatever Close says about a wedged commit pipeline is secondary.
		w.closeAfterFailure()
		return err
	}
	return w.db.Close()
}

// closeAfterFailure closes Pebble after a fatal error, swallowing the
// panics and errors its broken commit pipeline may raise on the way.
func (w *WAL) closeAfterFailure() {
	if w.wedged.Load() {
		w.logger.Warn("pebble is wedged after a failure; abandoning it to the exiting process")
		return
	}
	defer func() {
		if r := recover(); r != nil {
			w.logger.Warn("closing pebble after a failure", "panic", r)
		}
	}()
	if err := w.db.Close(); err != nil {
		w.logger.Warn("closing pebble after a failure", "err", err)
	}
}

// Err returns the failure that stopped the WAL (wrapping ErrFailed), or
// nil while it is healthy.
func (w *WAL) Err() error { return w.err() }

// Metrics returns the cumulative counters.
func (w *WAL) Metrics() Metrics {
	return Metrics{Appends: w.appends.Load(), Entries: w.entries.Load(), Bytes: w.bytes.Load()}
}

// err returns the sticky failure, ErrClosed, or nil.
func (w *WAL) err() error {
	if p := w.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (w *WAL) checkOpen() error {
	if err := w.err(); err != nil {
		return err
	}
	w.mu.Lock()
	closed := w.mu.closed
	w.mu.Unlock()
	if closed {
		return ErrClosed
	}
	return nil
}

// fail records err as the sticky failure (the first one wins) and returns
// the sticky error.
func (w *WAL) fail(err error) error {
	wrapped := fmt.Errorf("%w: %w", ErrFailed, err)
	if w.failed.CompareAndSwap(nil, &wrapped) {
		w.logger.Error("wal failed; refusing all further operations", "err", err)
	}
	return *w.failed.Load()
}

// commit applies b durably (unless the test-only NoSync is set), turning a
// Pebble fatal error into the sticky failure.
func (w *WAL) commit(b *pebble.Batch, opt *pebble.WriteOptions) (err error) {
	defer func() {
		switch r := recover().(type) {
		case nil:
		case pebbleFatal:
			err = w.fail(r.err)
		case error:
			// Pebble panics with the bare error when a WAL write fails in
			// its commit pipeline, with its commit mutex held: Close must
			// not wait on that mutex.
			w.wedged.Store(true)
			err = w.fail(r)
		default:
			panic(r)
		}
	}()
	if err := b.Commit(opt); err != nil {
		return w.fail(err)
	}
	return nil
}

// Append persists the updates of many groups as one Pebble batch committed
// with a single fsync. It returns only once the batch is durable. On error
// nothing of the call may be assumed durable; if the error wraps ErrFailed,
// the WAL is unusable from then on.
//
// Append retains the Entries (and their Data) in its entry cache: the
// caller must not modify them afterwards, which raft never does.
func (w *WAL) Append(updates []Update) error {
	return w.append(updates, w.writeOpt)
}

// AppendUnsynced writes the updates like Append but without waiting for an
// fsync. It is for what raft does not need durable before acting on it
// (Ready.MustSync false: only the commit index moved). Pebble commits
// batches in order, so the next Append makes it durable too; a crash
// before then loses only the commit index advance, which raft re-learns.
func (w *WAL) AppendUnsynced(updates []Update) error {
	return w.append(updates, pebble.NoSync)
}

func (w *WAL) append(updates []Update, opt *pebble.WriteOptions) error {
	if err := w.checkOpen(); err != nil {
		return err
	}
	plans := make([]appendPlan, len(updates))
	b := w.db.NewBatch()
	defer b.Close()
	var scratch []byte
	var nEntries, nBytes uint64
	for i := range updates {
		u := &updates[i]
		for j := range i {
			if updates[j].Group == u.Group {
				return fmt.Errorf("%w: group %d appears twice in one Append", ErrInvalidUpdate, u.Group)
			}
		}
		g, err := w.group(u.Group)
		if err != nil {
			return err
		}
		p, err := g.plan(u)
		if err != nil {
			return err
		}
		plans[i] = p
		if p.snapshot != nil {
			scratch, err = w.addSnapshot(b, g.id, p.snapshot, scratch)
			if err != nil {
				return err
			}
		}
		for _, e := range u.Entries {
			scratch = appendEntryKey(scratch[:0], g.id, e.GetIndex())
			k := len(scratch)
			scratch = appendEntryValue(scratch, e.GetTerm(), uint8(e.GetType()), e.GetData())
			if err := b.Set(scratch[:k], scratch[k:], nil); err != nil {
				return err
			}
			nBytes += uint64(len(e.GetData()))
		}
		nEntries += uint64(len(u.Entries))
		if p.truncateFrom != 0 {
			lo, hi := entryBounds(g.id, p.truncateFrom, 0)
			if err := b.DeleteRange(lo, hi, nil); err != nil {
				return err
			}
		}
	}
	// Hard states after every entry: their keys sort after all entry
	// keys, so a batch of updates in group order is a batch of sorted keys.
	for i := range updates {
		if hs := updates[i].HardState; hs != nil {
			scratch = appendHardStateValue(scratch[:0], hs.GetTerm(), hs.GetVote(), hs.GetCommit())
			if err := b.Set(hardStateKey(updates[i].Group), scratch, nil); err != nil {
				return err
			}
		}
	}
	if b.Empty() {
		return nil
	}
	if err := w.commit(b, opt); err != nil {
		return err
	}
	w.appends.Add(1)
	w.entries.Add(nEntries)
	w.bytes.Add(nBytes)
	for i := range updates {
		g, _ := w.group(updates[i].Group)
		g.apply(&updates[i], &plans[i], w.opts.EntryCacheSize)
	}
	return nil
}

func (w *WAL) addSnapshot(b *pebble.Batch, group uint64, s *raftpb.Snapshot, scratch []byte) ([]byte, error) {
	md := s.GetMetadata()
	cs, err := proto.Marshal(raftpb.EnsureConfState(md.GetConfState()))
	if err != nil {
		return scratch, err
	}
	lo, hi := entryBounds(group, 0, 0)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return scratch, err
	}
	scratch = appendSnapshotValue(scratch[:0], md.GetIndex(), md.GetTerm(), cs)
	return scratch, b.Set(snapshotKey(group), scratch, nil)
}

// Compact discards the group's entries up to and including index, and
// records (index, term of index, confState) as the group's snapshot
// metadata, which raft's Snapshot and FirstIndex then report.
//
// The caller must only compact below what the state machine holds durably:
// after Compact the entries can no longer be replayed. Compacting at or
// below the current compaction point returns raft.ErrCompacted; beyond the
// last index, raft.ErrUnavailable.
//
// The batch is not fsynced on its own: losing a compaction in a crash only
// means the entries are still there, and the next synced Append makes it
// durable because Pebble commits batches in order.
func (w *WAL) Compact(groupID, index uint64, confState *raftpb.ConfState) error {
	if err := w.checkOpen(); err != nil {
		return err
	}
	g, err := w.group(groupID)
	if err != nil {
		return err
	}
	term, err := g.Term(index)
	if err != nil {
		return err
	}
	g.mu.Lock()
	snapIndex := g.mu.snapIndex
	g.mu.Unlock()
	if index <= snapIndex {
		return raft.ErrCompacted
	}
	cs, err := proto.Marshal(raftpb.EnsureConfState(confState))
	if err != nil {
		return err
	}
	b := w.db.NewBatch()
	defer b.Close()
	lo, hi := entryBounds(groupID, 0, index+1)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	if err := b.Set(snapshotKey(groupID), appendSnapshotValue(nil, index, term, cs), nil); err != nil {
		return err
	}
	if err := w.commit(b, pebble.NoSync); err != nil {
		return err
	}
	g.compacted(index, term, cs)
	return nil
}

// Storage returns the group's view of the log, which implements
// raft.Storage. A group that was never written starts empty.
func (w *WAL) Storage(groupID uint64) (*Storage, error) {
	if err := w.checkOpen(); err != nil {
		return nil, err
	}
	g, err := w.group(groupID)
	if err != nil {
		return nil, err
	}
	return &Storage{g: g}, nil
}

// Groups lists every group with a stored hard state or snapshot, in order.
func (w *WAL) Groups() ([]uint64, error) {
	if err := w.checkOpen(); err != nil {
		return nil, err
	}
	it, err := w.db.NewIter(&pebble.IterOptions{
		LowerBound: []byte{kindHardState},
		UpperBound: []byte{kindSnapshot + 1},
	})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var ids []uint64
	for ok := it.First(); ok; ok = it.Next() {
		_, id, err := decodeGroupKey(it.Key())
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// DeleteGroup removes every trace of the group: entries, hard state and
// snapshot metadata. It is used when a replica leaves this node. The
// deletion is synced so that a restart cannot resurrect the replica.
func (w *WAL) DeleteGroup(groupID uint64) error {
	if err := w.checkOpen(); err != nil {
		return err
	}
	b := w.db.NewBatch()
	defer b.Close()
	lo, hi := entryBounds(groupID, 0, 0)
	if err := b.DeleteRange(lo, hi, nil); err != nil {
		return err
	}
	if err := b.Delete(hardStateKey(groupID), nil); err != nil {
		return err
	}
	if err := b.Delete(snapshotKey(groupID), nil); err != nil {
		return err
	}
	if err := w.commit(b, w.writeOpt); err != nil {
		return err
	}
	w.mu.Lock()
	delete(w.mu.groups, groupID)
	w.mu.Unlock()
	return nil
}

// group returns the in-memory state of a group, loading it from Pebble on
// first use.
func (w *WAL) group(id uint64) (*group, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if g, ok := w.mu.groups[id]; ok {
		return g, nil
	}
	g, err := w.loadGroupLocked(id)
	if err != nil {
		return nil, err
	}
	w.mu.groups[id] = g
	return g, nil
}

func (w *WAL) loadGroupLocked(id uint64) (*group, error) {
	g := &group{id: id, w: w}
	if v, closer, err := w.db.Get(hardStateKey(id)); err == nil {
		term, vote, commit, derr := decodeHardStateValue(v)
		closer.Close()
		if derr != nil {
			return nil, derr
		}
		g.mu.hs = hardState{term: term, vote: vote, commit: commit}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, err
	}
	if v, closer, err := w.db.Get(snapshotKey(id)); err == nil {
		index, term, cs, derr := decodeSnapshotValue(v)
		g.mu.snapIndex, g.mu.snapTerm, g.mu.confState = index, term, slices.Clone(cs)
		closer.Close()
		if derr != nil {
			return nil, derr
		}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return nil, err
	}
	g.mu.lastIndex = g.mu.snapIndex
	lo, hi := entryBounds(id, 0, 0)
	it, err := w.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	if it.Last() {
		_, index, err := decodeEntryKey(it.Key())
		if err != nil {
			return nil, err
		}
		g.mu.lastIndex = index
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	if g.mu.lastIndex < g.mu.snapIndex {
		return nil, fmt.Errorf("wal: group %d: last index %d below snapshot index %d", id, g.mu.lastIndex, g.mu.snapIndex)
	}
	g.mu.cacheFirst = g.mu.lastIndex + 1
	return g, nil
}

// isCorruption reports whether an error from opening Pebble means damaged
// files rather than, say, a missing directory.
func isCorruption(err error) bool {
	return errors.Is(err, pebble.ErrCorruption) || errors.Is(err, record.ErrInvalidChunk) ||
		errors.Is(err, record.ErrZeroedChunk) || errors.Is(err, record.ErrUnexpectedEOF)
}

// pebbleFatal carries an error Pebble reported through Logger.Fatalf.
type pebbleFatal struct{ err error }

// fatalLogger adapts Pebble's logger to slog. Pebble calls Fatalf when its
// commit pipeline fails a write or a sync and cannot continue; its default
// exits the process. Ours records the sticky failure and panics with
// pebbleFatal, which commit turns back into an error for the caller. A
// Fatalf on a Pebble background goroutine (a MANIFEST write, say) still
// crashes the process, which is the fail-stop Pebble intends.
type fatalLogger struct{ w *WAL }

func (l fatalLogger) Infof(format string, args ...any) {
	l.w.logger.Info(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l fatalLogger) Errorf(format string, args ...any) {
	l.w.logger.Error(fmt.Sprintf(format, args...), "source", "pebble")
}

func (l fatalLogger) Fatalf(format string, args ...any) {
	err := fmt.Errorf(format, args...)
	l.w.fail(err)
	panic(pebbleFatal{err: err})
}
