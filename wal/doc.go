// Package wal is kvnode's write-ahead log: the raft log of every raft group
// on a node, kept in one Pebble instance.
//
// # Durability
//
// Append writes the entries and hard states of any number of groups as one
// Pebble batch committed with pebble.Sync, and returns only once that batch
// is on disk. One call is one fsync whatever the number of groups, which is
// what lets the replication scheduler pay for a single fsync per cycle.
// Concurrent Appends from different goroutines are group-committed by
// Pebble: they share fsyncs too.
//
// # Fail-stop
//
// After any failed write or sync, every method returns an error wrapping
// ErrFailed. The WAL never reports success after a failed fsync, because the
// kernel may already have dropped the pages it failed to write: retrying
// the fsync can "succeed" with the data lost. The node must stop, and
// restart from what the disk holds.
//
// # Key layout
//
// See keys.go. Keys are fixed-width and big-endian: (kind, group, index).
//
// # Using it with raft
//
// Storage(group) returns a raft.Storage for one group. The usual cycle of a
// raft.RawNode then is:
//
//  1. rd := rn.Ready()
//  2. Append the Entries, HardState and Snapshot of every group's Ready in
//     one Append call. Followers send their messages only after it returns;
//     a leader may send its MsgApps before (raft's thesis, 10.2.1).
//  3. Apply rd.CommittedEntries to the state machine.
//  4. rn.Advance(rd).
//  5. Later, once the state machine has made index i durable, Compact(group,
//     i, confState) discards the log up to i.
//
// InitialState reports the ConfState of the last compaction or snapshot;
// the caller, which knows the state machine's applied index, should prefer
// the ConfState the state machine recorded with that index.
//
// # Goroutines and ownership
//
// A WAL is safe for concurrent use. Appends for different groups may run
// concurrently; a group's Appends must come from one goroutine at a time
// (raft's own rule: one writer per log). A group's Storage may be read by any
// goroutine: it reflects the state after the last Append or Compact that
// returned, never a state that is not yet durable.
//
// Append keeps the entries it is given, and their Data, in a per-group cache
// that serves raft's reads; callers must not modify them afterwards (raft
// never does). Entries returned by Storage.Entries are shared: the returned
// slice belongs to the caller, who may append to it, but the entries in it
// must not be modified.
package wal
