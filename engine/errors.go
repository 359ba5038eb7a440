package engine

import (
	"errors"
	"fmt"
	"log/slog"
)

var (
	// ErrNotFound is returned by Get when the key does not exist.
	ErrNotFound = errors.New("engine: key not found")

	// ErrStaleIndex is returned by Batch.Apply when the entry index is not
	// above the partition's applied index (including entries applied earlier
	// in the same Batch), and by StagedSnapshot.Install when the snapshot is
	// not newer than what the partition has. Nothing is changed.
	ErrStaleIndex = errors.New("engine: index not above applied index")

	// ErrInvalidOp is wrapped by Batch.Apply's error when an operation is
	// malformed (empty or oversized key, oversized value, unknown kind,
	// fields that the kind does not use, an entry too large for any Batch),
	// and by Batch.SetConfState for an oversized ConfState. Nothing is
	// changed: the entry is not applied and the applied index does not move.
	// To move past such an entry, apply its index with no ops.
	ErrInvalidOp = errors.New("engine: invalid operation")

	// ErrBatchFull is returned by Batch.Apply when the entry would grow the
	// Batch past its size limit (1 GiB; Pebble panics at 4 GiB). Nothing is
	// changed: commit the Batch and apply the entry in a new one.
	ErrBatchFull = errors.New("engine: batch full")

	// ErrBatchConflict is returned by Batch.Commit when another writer (a
	// Batch, an Install or DropPartition) changed a partition after this
	// Batch first read it, so this Batch's reads and results may be wrong.
	// Nothing is written. The replication layer has one writer per
	// partition, so this indicates a bug there, not a condition to retry.
	ErrBatchConflict = errors.New("engine: partition changed since the batch read it")

	// ErrCorruptSnapshot is wrapped by ReceiveSnapshot's error when the
	// stream is truncated, fails its checksum, is out of order, exceeds a
	// size limit, or is otherwise not a stream NewSnapshot writes.
	ErrCorruptSnapshot = errors.New("engine: corrupt snapshot stream")

	// ErrCorrupt is wrapped by errors about stored data that the engine
	// could not have written (an unknown key kind, a short value).
	ErrCorrupt = errors.New("engine: corrupt stored data")

	// ErrClosed is returned by calls on a closed Engine, Batch, Snapshot or
	// StagedSnapshot.
	ErrClosed = errors.New("engine: closed")

	// ErrFailStop is wrapped by the sticky error every call returns after
	// a write or sync of the engine's store failed (promise P5). The
	// in-memory and on-disk state may then disagree, so nothing the engine
	// says can be trusted any more; the node must stop and restart, and
	// recovery replays the raft log.
	ErrFailStop = errors.New("engine: stopped after a storage failure")
)

// fatalPanic is what the Pebble logger adapter panics with from Fatalf. It
// is private so nothing outside the engine can recover it by mistake.
type fatalPanic struct{ err error }

// pebbleLogger adapts Pebble's Logger to slog. Pebble calls Fatalf when it
// cannot continue (a failed WAL write in the commit pipeline, a failed
// MANIFEST write) and assumes Fatalf does not return: if it did, DB.Apply
// would report success for a batch whose WAL write failed. So Fatalf records
// the sticky error and panics with fatalPanic. Engine methods that write
// (Batch.Commit, Sync, DropPartition, StagedSnapshot.Install, Close) recover
// it and return the error. When Pebble calls Fatalf from one of its own
// goroutines (flush, compaction) nothing recovers it and the process dies,
// which is the fail-stop the design asks for.
type pebbleLogger struct {
	e   *Engine
	log *slog.Logger
}

func (l pebbleLogger) Infof(format string, args ...any) {
	l.log.Info("pebble", "msg", fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Errorf(format string, args ...any) {
	l.log.Error("pebble", "msg", fmt.Sprintf(format, args...))
}

func (l pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	var cause error
	for _, a := range args {
		if err, ok := a.(error); ok {
			cause = err
			break
		}
	}
	err := &pebbleFatalError{msg: msg, cause: cause}
	l.log.Error("pebble fatal error; engine stopped", "err", msg)
	panic(fatalPanic{err: l.e.fail(err)})
}

// pebbleFatalError keeps Pebble's message and, when one was passed, the
// underlying error so errors.Is still finds, e.g., an injected I/O error.
type pebbleFatalError struct {
	msg   string
	cause error
}

func (e *pebbleFatalError) Error() string { return "pebble: fatal: " + e.msg }
func (e *pebbleFatalError) Unwrap() error { return e.cause }
