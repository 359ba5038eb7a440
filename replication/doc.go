// Package replication runs many raft groups (go.etcd.io/raft/v3 RawNodes)
// on one node: one group per partition, plus whatever groups the node layer
// creates (the meta group).
//
// # The loop
//
// One goroutine, the loop, owns every RawNode. Other goroutines talk to it
// through an inbox (proposals, read requests, incoming messages, received
// snapshots, tasks) and a wake-up channel; it never blocks on them. Each
// time it wakes it steps everything queued, then runs cycles while any
// group has work. A cycle follows raft's usage contract for all groups at
// once:
//
//  1. Ready() of every group with work.
//  2. Leaders send their messages now, in parallel with their own fsync
//     (raft thesis §10.2.1); their own vote counts only after Advance.
//  3. Snapshots raft accepted are installed into the engine.
//  4. Entries, hard states and snapshot metadata of all groups go to the
//     WAL as ONE batch with ONE fsync (wal.Append).
//  5. Everyone else's messages go out: a follower acknowledges an append
//     only once it is on disk.
//  6. Committed entries of all groups are applied in ONE engine batch
//     (no fsync: the log replays them), and proposals complete: a caller
//     hears back only after its entry is committed and applied here.
//  7. Read states are matched, Advance is called.
//
// So the cost of an fsync is shared by every group and every client whose
// work arrived during the previous one.
//
// # Pacing the WAL on a busy node
//
// An fsync is not only a wait: on the test machine each costs 50–90 µs of
// CPU in the kernel. Writing as soon as the previous round is done keeps
// rounds small when CPU is to spare, and that CPU then goes to fsyncs. So
// after a round of at least Config.BusySyncEntries entries (16), the
// appender starts the next round no sooner than Config.SyncInterval
// (800µs) after the previous one started; what arrives meanwhile joins it.
// A node that is not busy, a lone writer for instance, never waits. See
// syncPacer in appender.go.
//
// # Proposals and reads
//
// Propose validates, encodes and queues a command; all commands for a
// group that arrive in one cycle become one raft message. Only the leader
// proposes (followers answer ErrNotLeader with a hint; the node layer
// forwards). ReadIndex batches every read of a group in a cycle into one
// raft ReadIndex request, on leaders and followers alike, and releases
// them once the local state machine has applied the read index. Stale
// reads go straight to the engine.
//
// # Durability and recovery
//
// The engine skips fsync; a background goroutine syncs it periodically,
// and a group's log is compacted only below what the engine holds durably
// (engine.SyncedApplied). After a crash, Open reconciles each group (an
// engine ahead of its log, left by a snapshot install, is recorded in the
// log) and starts raft at the engine's applied index; raft replays the
// rest of the committed log. Two engine writes are synced at once instead:
// a bootstrap, which the log then records as its snapshot, and every
// configuration change. Raft restarts from the configuration the engine
// holds, and it must not come back more than one change behind: a node
// that bootstrapped a group alone and added two voters must not restart as
// the group's only voter.
//
// A hard state is written only when its term or vote changes, or when its
// commit index passes a configuration change (hardStateNeeded): the commit
// index is volatile in raft, so a restarted replica starts from the one it
// last wrote, raised to what its engine applied, and learns the rest from
// the leader. Configuration changes are the exception because raft decides
// whether a replica may campaign from which changes it knows committed.
//
// Any WAL or engine error stops the host (fail-stop): pending work fails,
// nothing more is acknowledged, and Err reports why.
//
// # Commit hints
//
// A leader holds the appends raft sends only to tell a follower a new
// commit index for up to Config.CommitHintDelay (2ms), so that the next
// append to that follower carries the index instead. Under load that
// removes about four of a write's ten raft messages. See commithint.go.
//
// # Snapshots
//
// See snapshot.go: streamed from an engine snapshot on their own
// connection, staged and verified on the receiver before raft sees them,
// installed atomically, recorded in the log after the engine.
package replication
