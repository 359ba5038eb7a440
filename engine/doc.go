// Package engine is kvnode's state machine store: one Pebble instance per
// node holding the user data and the applied state of every partition the
// node replicates.
//
// # Layout
//
// Every key starts with the partition id (big-endian uint64), so one
// partition is one contiguous key span: a snapshot is one range scan and an
// install is one excise. Within the span, the applied state (index, term),
// the raft ConfState and the user data are told apart by a kind byte; each
// data value carries its version, the index of the raft entry that last
// wrote it. See keys.go. The applied state of a partition is written in the
// same Pebble batch as the data it covers.
//
// On disk, the engine directory holds Pebble's directory "db" and a
// directory "staging" for snapshots being received; Open empties the
// latter.
//
// # Recovery contract
//
// Batch.Commit does not fsync. The raft log (package wal) is fsynced before
// entries are committed, so every applied entry can be applied again after
// a crash; paying a second fsync here would buy nothing. The one exception
// is a Batch that sets a ConfState, which Commit syncs (see SetConfState):
// raft restarts from that configuration. What the engine guarantees
// instead:
//
//   - After a crash, the engine holds a prefix of its committed batches: all
//     of them up to some batch, none after. Each batch is atomic, and a
//     partition's applied index travels in the same batch as its data, so
//     the data and Applied().Index never disagree.
//   - Everything committed before a Sync that returned nil survives:
//     SyncedApplied reports, per partition, the applied index that is known
//     to be durable. DropPartition and StagedSnapshot.Install are durable
//     when they return nil.
//   - After Open, the replication layer re-applies, for every partition, the
//     log entries after Applied(p).Index. It must keep those entries: raft
//     log compaction (truncation) of a partition must not pass
//     SyncedApplied(p).
//   - Everything Open finds counts as synced: Pebble flushes what it replays
//     from its WAL before Open returns.
//
// # Fail-stop (promise P5)
//
// The first failed write or sync of the store (a WAL write or fsync, a
// MANIFEST update, an ingestion) makes the engine stop: the call that saw it
// returns an error wrapping ErrFailStop, and so does every later call (Get
// included); Applied and SyncedApplied keep reporting their last values.
// The node must then stop acknowledging anything, and restart from disk.
//
// Pebble reports most of these failures by panicking: through
// Logger.Fatalf, which it assumes does not return (if it returned, DB.Apply
// would report success for a batch whose WAL write failed), and, for a WAL
// write that fails inside the commit pipeline, with a plain panic of the
// error. The engine's Pebble logger records the error and panics with a
// private type; Batch.Commit, Sync, DropPartition, StagedSnapshot.Install,
// Open and Close recover that panic, and panics whose value is an error
// (runtime errors excepted), into their error. A Fatalf from one of
// Pebble's background goroutines (flush, compaction) has no caller to
// return to and terminates the process, which is fail-stop too.
//
// After such a panic Pebble may hold its internal locks forever, so
// Engine.Close does not call into it: the Pebble instance is abandoned, and
// its goroutines and directory lock remain until the process exits. The
// node is expected to exit and restart.
//
// # Determinism
//
// Batch.Apply is a function of the committed state, the ops and the entry's
// index: two replicas applying the same entries return the same results and
// store the same bytes. Compare-and-set ops read the current version through
// the Batch, so they see writes made earlier in the same Batch.
//
// # Concurrency
//
// Engine methods are safe for concurrent use. A Batch, a Snapshot and a
// StagedSnapshot are each used by one goroutine at a time. Writers (Batch
// Commit, Install, DropPartition) are serialized; a Batch whose partition
// was changed by another writer after the Batch first read it fails with
// ErrBatchConflict instead of committing results computed from stale reads.
// The replication layer is expected to have one writer per partition.
//
// # Ownership of slices
//
//   - Batch.Apply copies what it keeps (into the Pebble batch and the Batch's
//     read overlay) before it returns: the caller may reuse ops and their Key
//     and Value slices immediately. Results are appended to dst; Apply
//     keeps no reference to dst.
//   - Batch.SetConfState copies cs.
//   - Get returns a fresh copy of the value.
//   - AppliedState.ConfState returned by Applied, Snapshot.State and
//     StagedSnapshot.State is a fresh copy.
//   - Options is copied by Open.
package engine
