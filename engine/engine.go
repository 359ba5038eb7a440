package engine

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/errors/oserror"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// formatMajorVersion is pinned, not FormatNewest, so that upgrading Pebble
// never ratchets the on-disk format (which cannot be undone) without a
// deliberate change here. It must stay at or above:
//   - FormatVirtualSSTables, which IngestAndExcise requires;
//   - FormatFlushableIngestExcises, so an install whose excise overlaps the
//     memtable joins the flushable queue instead of forcing a synchronous
//     flush (ingest.go, canIngestFlushable);
//   - FormatWALSyncChunks, so WAL replay after a crash tells a torn unsynced
//     tail from corruption of synced data.
const formatMajorVersion = pebble.FormatValueSeparation

// Subdirectories of the engine directory. Pebble owns dbDirName; staging
// files live beside it, not inside it, so Open can empty the staging
// directory without reasoning about Pebble's file names.
const (
	dbDirName      = "db"
	stagingDirName = "staging"
)

// AppliedState is what a partition's state machine has applied.
type AppliedState struct {
	// Index and Term are those of the last applied raft entry (or of the
	// installed snapshot).
	Index, Term uint64
	// ConfState is the raft ConfState last set with Batch.SetConfState or
	// installed with a snapshot, marshaled by the caller; the engine stores
	// it without looking inside.
	ConfState []byte
}

func (s AppliedState) clone() AppliedState {
	s.ConfState = bytes.Clone(s.ConfState)
	return s
}

// partState is the in-memory view of one partition.
type partState struct {
	applied AppliedState
	// synced is the highest applied index known to be durable.
	synced uint64
	// gen changes on every committed write to the partition; a Batch
	// compares it at Commit to detect a writer that ran in between.
	gen uint64
	// born identifies this incarnation of the partition: a partition that is
	// dropped and written again gets a new one, so a Sync that started before
	// the drop does not mark the new incarnation's indexes durable.
	born uint64
}

// Engine is the state machine store of one node: all partitions in one
// Pebble instance. Its methods are safe for concurrent use.
type Engine struct {
	opts       Options
	fs         vfs.FS
	log        *slog.Logger
	dir        string
	stagingDir string
	db         *pebble.DB
	popts      *pebble.Options // as Open used them, for sstable writer options
	stagingSeq atomic.Uint64
	// maxBatchBytes is maxBatchBytes; tests lower it.
	maxBatchBytes int

	// closeMu is held shared by every call that uses db and exclusively by
	// Close, so Close never pulls the DB out from under a running call.
	closeMu sync.RWMutex

	// writeMu serializes the writers that publish partition state (Batch
	// Commit, Install, DropPartition), so that a conflict check and the
	// write it guards are one atomic step. Acquired after closeMu and
	// before mu.
	writeMu sync.Mutex

	mu struct {
		sync.Mutex
		closed bool
		// err is the sticky fail-stop error; once set, every call returns it.
		err error
		// wedged is set when Pebble panicked (Fatalf or a panic with an
		// error). Pebble may then hold its internal mutexes forever, and
		// DB.Close would block on them, so Close abandons the DB instead.
		wedged bool
		parts  map[uint64]*partState
		// seq feeds partState.gen and partState.born.
		seq uint64
		// snapshots counts open Snapshots; Close refuses while any is open
		// because Pebble cannot close with live iterators.
		snapshots int
	}
}

// Open opens or creates the engine stored in dir. opts may be nil, meaning
// all defaults. Open does not retain opts.
func Open(dir string, opts *Options) (_ *Engine, err error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if err := o.EnsureDefaults().Validate(); err != nil {
		return nil, err
	}
	e := &Engine{
		opts:          o,
		fs:            o.FS,
		log:           o.Logger,
		dir:           dir,
		stagingDir:    o.FS.PathJoin(dir, stagingDirName),
		maxBatchBytes: maxBatchBytes,
	}
	e.mu.parts = make(map[uint64]*partState)
	if err := mkdirAllSynced(o.FS, e.stagingDir); err != nil {
		return nil, fmt.Errorf("engine: creating %s: %w", e.stagingDir, err)
	}
	e.popts = &pebble.Options{
		FS:                 o.FS,
		Logger:             pebbleLogger{e: e, log: o.Logger},
		MemTableSize:       o.MemTableSize,
		CacheSize:          o.CacheSize,
		FormatMajorVersion: formatMajorVersion,
	}
	// Compare-and-set ops read keys that often do not exist; bloom filters
	// let those reads skip sstables. Later levels inherit L0's policy.
	e.popts.Levels[0].FilterPolicy = bloom.FilterPolicy(10)
	e.popts.EnsureDefaults()
	// Pebble reserves the memory of its memtables (up to
	// MemTableStopWritesThreshold of them) from the block cache. Sized at
	// CacheSize alone, a cache no larger than the memtables holds no blocks
	// at all, and every read goes to the disk; so Options.CacheSize is what
	// is left for blocks, and the memtables come on top.
	e.popts.CacheSize = o.CacheSize + int64(o.MemTableSize)*int64(e.popts.MemTableStopWritesThreshold)

	defer e.recoverFatal(&err)
	db, err := pebble.Open(o.FS.PathJoin(dir, dbDirName), e.popts)
	if err != nil {
		return nil, fmt.Errorf("engine: opening pebble: %w", err)
	}
	e.db = db
	// Only after Pebble holds its directory lock: a second process opening
	// the same dir must not delete the first one's staging files.
	err = e.clearStaging()
	if err == nil {
		err = e.load()
	}
	if err != nil {
		return nil, errors.Join(err, db.Close())
	}
	e.log.Info("engine opened", "dir", dir, "partitions", len(e.mu.parts))
	return e, nil
}

// mkdirAllSynced creates dir and its missing parents, and syncs every
// directory whose entries changed. Without the syncs a power loss can take
// back a directory created here, and with it everything Pebble later
// synced inside: Pebble syncs the parent of its own directory only when it
// creates that parent itself, and here the engine directory already exists.
func mkdirAllSynced(fs vfs.FS, dir string) error {
	var toSync []string
	for p := dir; ; {
		parent := fs.PathDir(p)
		if _, err := fs.Stat(p); err == nil {
			break
		} else if !oserror.IsNotExist(err) {
			return err
		}
		toSync = append(toSync, parent)
		if parent == p {
			break
		}
		p = parent
	}
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range toSync {
		f, err := fs.OpenDir(d)
		if err != nil {
			return err
		}
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// clearStaging removes staging files left by a crash during ReceiveSnapshot.
func (e *Engine) clearStaging() error {
	names, err := e.fs.List(e.stagingDir)
	if err != nil {
		return fmt.Errorf("engine: listing %s: %w", e.stagingDir, err)
	}
	for _, n := range names {
		if err := e.fs.Remove(e.fs.PathJoin(e.stagingDir, n)); err != nil {
			return fmt.Errorf("engine: removing stale staging file %s: %w", n, err)
		}
	}
	return nil
}

// load builds the partition map from the state keys on disk. It visits only
// the state keys of each partition: after the first data key it seeks to the
// next partition.
//
// Everything loaded counts as synced: Pebble's Open flushes (and fsyncs) what
// it replayed from the WAL before returning, because replayed data may have
// come from the page cache rather than the disk.
//
// load runs before Open returns the Engine, so it needs no locks.
func (e *Engine) load() (err error) {
	it, err := e.db.NewIter(nil)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, it.Close()) }()
	for valid := it.First(); valid; {
		p, kind, _, err := decodeKey(it.Key())
		if err != nil {
			return err
		}
		ps := e.mu.parts[p]
		if ps == nil {
			seq := e.nextSeqLocked()
			ps = &partState{gen: seq, born: seq}
			e.mu.parts[p] = ps
		}
		switch kind {
		case kindAppliedState, kindConfState:
			v, err := it.ValueAndErr()
			if err != nil {
				return err
			}
			if kind == kindConfState {
				ps.applied.ConfState = bytes.Clone(v)
				break
			}
			if ps.applied.Index, ps.applied.Term, err = decodeAppliedState(v); err != nil {
				return fmt.Errorf("partition %d: %w", p, err)
			}
			ps.synced = ps.applied.Index
		case kindData:
			if p == math.MaxUint64 {
				valid = false
				continue
			}
			valid = it.SeekGE(partitionStart(p + 1))
			continue
		}
		valid = it.Next()
	}
	return it.Error()
}

// Close closes the engine. All Snapshots must be closed first; otherwise
// Close returns an error and leaves the engine open. Batches and staged
// snapshots still open become unusable (their calls return ErrClosed or the
// engine's error).
//
// After a fail-stop error Close returns the sticky error. If Pebble
// panicked, which is how it reports most storage failures, it may still hold
// its internal locks, so Close does not call into it at all: the DB's
// goroutines, memory and directory lock stay until the process exits, which
// it is expected to do promptly (that is what fail-stop means).
func (e *Engine) Close() (err error) {
	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	e.mu.Lock()
	closed, sticky, wedged, snaps := e.mu.closed, e.mu.err, e.mu.wedged, e.mu.snapshots
	if !closed && (snaps == 0 || wedged) {
		e.mu.closed = true
	}
	e.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if wedged {
		e.log.Error("engine closed without closing pebble after a pebble panic", "dir", e.dir, "err", sticky)
		return sticky
	}
	if snaps > 0 {
		return fmt.Errorf("engine: Close with %d snapshots still open", snaps)
	}
	defer func() {
		if sticky != nil {
			err = sticky
		}
	}()
	defer e.recoverFatal(&err)
	if cerr := e.db.Close(); cerr != nil {
		e.log.Error("engine close", "err", cerr)
		return fmt.Errorf("engine: closing pebble: %w", cerr)
	}
	e.log.Info("engine closed", "dir", e.dir)
	return nil
}

// Err returns the sticky fail-stop error (wrapping ErrFailStop), or nil
// while the engine is healthy.
func (e *Engine) Err() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.err
}

// enter takes closeMu shared and reports the engine's error, if any. On
// success the caller must call e.closeMu.RUnlock.
func (e *Engine) enter() error {
	e.closeMu.RLock()
	e.mu.Lock()
	err := e.errLocked()
	e.mu.Unlock()
	if err != nil {
		e.closeMu.RUnlock()
	}
	return err
}

func (e *Engine) errLocked() error {
	if e.mu.err != nil {
		return e.mu.err
	}
	if e.mu.closed {
		return ErrClosed
	}
	return nil
}

// fail records err as the sticky fail-stop error, unless one is already
// recorded, and returns the sticky error.
func (e *Engine) fail(err error) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.mu.err == nil {
		e.mu.err = fmt.Errorf("%w: %w", ErrFailStop, err)
		e.log.Error("engine stopped", "err", err)
	}
	return e.mu.err
}

// recoverFatal turns a Pebble failure that arrives as a panic into the
// sticky error. It must be deferred directly by the method that calls into
// Pebble. Two kinds are recovered:
//   - fatalPanic, from pebbleLogger.Fatalf;
//   - a panic with an error value, which is how Pebble's commit pipeline
//     reports a failed WAL write (DB.commitWrite, DB.rotateWAL). Pebble is
//     then unusable (it panicked holding its commit mutex), and the sticky
//     error keeps every later call away from it.
//
// Runtime errors (nil dereference, bounds) and other panics are bugs, not
// storage failures, and propagate.
func (e *Engine) recoverFatal(errp *error) {
	r := recover()
	if r == nil {
		return
	}
	switch v := r.(type) {
	case fatalPanic:
		*errp = v.err
	case runtime.Error:
		panic(r)
	case error:
		e.log.Error("pebble panicked with an error; engine stopped", "err", v)
		*errp = e.fail(fmt.Errorf("pebble panic: %w", v))
	default:
		panic(r)
	}
	e.mu.Lock()
	e.mu.wedged = true
	e.mu.Unlock()
}

// nextSeqLocked returns a fresh value for partState.gen or born.
func (e *Engine) nextSeqLocked() uint64 {
	e.mu.seq++
	return e.mu.seq
}

// Get returns the value and version of key in partition. It reads only what
// committed batches wrote. The value is a fresh copy the caller owns. An
// absent key returns ErrNotFound.
func (e *Engine) Get(partition uint64, key []byte) (value []byte, version uint64, err error) {
	if err := e.enter(); err != nil {
		return nil, 0, err
	}
	defer e.closeMu.RUnlock()
	v, closer, err := e.db.Get(appendDataKey(nil, partition, key))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	defer closer.Close()
	version, v, err = decodeDataValue(v)
	if err != nil {
		return nil, 0, err
	}
	return bytes.Clone(v), version, nil
}

// Applied returns what the committed batches and installed snapshots of the
// partition cover: the zero AppliedState for a partition without state. It
// reflects commits whether or not they are durable yet (see SyncedApplied).
// ConfState is a fresh copy.
func (e *Engine) Applied(partition uint64) AppliedState {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ps := e.mu.parts[partition]; ps != nil {
		return ps.applied.clone()
	}
	return AppliedState{}
}

// SyncedApplied returns the highest applied index of the partition known to
// be durable. Raft log entries above it may still be needed to recover the
// partition after a crash, so log compaction must not pass it.
func (e *Engine) SyncedApplied(partition uint64) uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	if ps := e.mu.parts[partition]; ps != nil {
		return ps.synced
	}
	return 0
}

// Sync makes every batch committed before the call durable, and advances
// SyncedApplied accordingly. It is safe to call concurrently with commits.
func (e *Engine) Sync() (err error) {
	if err := e.enter(); err != nil {
		return err
	}
	defer e.closeMu.RUnlock()
	return e.syncAndPublish()
}

// syncAndPublish writes a synced record to the WAL. The WAL is one
// sequential file, so that sync covers every batch committed before it; the
// applied indexes are captured before the sync, so they name only batches
// that are covered. The caller holds closeMu shared.
func (e *Engine) syncAndPublish() (err error) {
	type capture struct{ index, born uint64 }
	e.mu.Lock()
	captured := make(map[uint64]capture, len(e.mu.parts))
	for p, ps := range e.mu.parts {
		captured[p] = capture{ps.applied.Index, ps.born}
	}
	e.mu.Unlock()

	defer e.recoverFatal(&err)
	if err := e.db.LogData(nil, pebble.Sync); err != nil {
		return e.fail(err)
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	for p, c := range captured {
		if ps := e.mu.parts[p]; ps != nil && ps.born == c.born && ps.synced < c.index {
			ps.synced = c.index
		}
	}
	return nil
}

// Partitions returns, sorted, the partitions that have any state.
func (e *Engine) Partitions() []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Sorted(maps.Keys(e.mu.parts))
}

// DropPartition removes all data and state of the partition, durably: when
// it returns, a crash cannot bring the partition back. Dropping a partition
// without state is a no-op.
func (e *Engine) DropPartition(partition uint64) (err error) {
	if err := e.enter(); err != nil {
		return err
	}
	defer e.closeMu.RUnlock()
	e.writeMu.Lock()
	defer e.writeMu.Unlock()

	e.mu.Lock()
	_, exists := e.mu.parts[partition]
	e.mu.Unlock()
	if !exists {
		return nil
	}

	defer e.recoverFatal(&err)
	b := e.db.NewBatch()
	defer b.Close()
	if err := b.DeleteRange(partitionStart(partition), partitionEnd(partition), nil); err != nil {
		return err
	}
	// Synced, because the caller acts on the drop (tells the cluster the
	// replica is gone), so it must not come back after a crash.
	if err := b.Commit(pebble.Sync); err != nil {
		return e.fail(err)
	}

	e.mu.Lock()
	delete(e.mu.parts, partition)
	e.mu.Unlock()
	e.log.Info("partition dropped", "partition", partition)
	return nil
}

// PartitionStats returns the number of keys of the partition and the sum of
// their user key and value lengths. It is exact, computed by a scan of the
// partition at one point in time, so it costs O(keys): use it for
// placement decisions and metrics, not on a hot path.
func (e *Engine) PartitionStats(partition uint64) (keys, bytes int64, err error) {
	if err := e.enter(); err != nil {
		return 0, 0, err
	}
	defer e.closeMu.RUnlock()
	it, err := e.db.NewIter(&pebble.IterOptions{
		LowerBound: dataStart(partition),
		UpperBound: dataEnd(partition),
	})
	if err != nil {
		return 0, 0, err
	}
	defer func() { err = errors.Join(err, it.Close()) }()
	for valid := it.First(); valid; valid = it.Next() {
		lv := it.LazyValue()
		if lv.Len() < versionLen {
			return 0, 0, fmt.Errorf("%w: data value of %d bytes has no version", ErrCorrupt, lv.Len())
		}
		keys++
		bytes += int64(len(it.Key())-keyHeaderLen) + int64(lv.Len()-versionLen)
	}
	return keys, bytes, it.Error()
}
