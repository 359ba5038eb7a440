package replication

import "sync/atomic"

// Metrics are cumulative counters since Open.
type Metrics struct {
	// Cycles is the number of loop cycles that handled at least one Ready;
	// WALAppends those that wrote to the WAL (one fsync each).
	Cycles, WALAppends uint64
	// Proposals counts commands (and conf changes) proposed; EntriesApplied
	// the log entries applied.
	Proposals, EntriesApplied uint64
	// ProposalBatches counts the raft messages (MsgProp) that carried
	// commands: with concurrent callers, far fewer than Proposals.
	ProposalBatches uint64
	// ReadBatches is the number of ReadIndex requests; Reads the reads they
	// served. LeaseReads were served under the leader's lease, without one.
	ReadBatches, Reads, LeaseReads uint64
	// SnapshotsSent and SnapshotsInstalled count snapshot streams.
	SnapshotsSent, SnapshotsInstalled uint64
	// CommitHintsHeld counts commit-only appends a leader held back;
	// CommitHintsFolded those of them never sent, because a later append
	// or hint to the same follower carried a newer commit index (see
	// commithint.go).
	CommitHintsHeld, CommitHintsFolded uint64
	// WALNanos and ApplyNanos are the time the loop spent in WAL appends
	// (fsync included) and in applying committed entries.
	WALNanos, ApplyNanos uint64
}

type metrics struct {
	cycles, walAppends                 atomic.Uint64
	proposals, entriesApplied          atomic.Uint64
	proposalBatches                    atomic.Uint64
	readBatches, reads, leaseReads     atomic.Uint64
	snapshotsSent, snapshotsInstalled  atomic.Uint64
	walNanos, applyNanos               atomic.Uint64
	commitHintsHeld, commitHintsFolded atomic.Uint64
}

// Metrics returns the host's counters.
func (h *Host) Metrics() Metrics {
	m := &h.metrics
	return Metrics{
		Cycles: m.cycles.Load(), WALAppends: m.walAppends.Load(),
		Proposals: m.proposals.Load(), EntriesApplied: m.entriesApplied.Load(), ProposalBatches: m.proposalBatches.Load(),
		ReadBatches: m.readBatches.Load(), Reads: m.reads.Load(), LeaseReads: m.leaseReads.Load(),
		SnapshotsSent: m.snapshotsSent.Load(), SnapshotsInstalled: m.snapshotsInstalled.Load(),
		WALNanos: m.walNanos.Load(), ApplyNanos: m.applyNanos.Load(),
		CommitHintsHeld: m.commitHintsHeld.Load(), CommitHintsFolded: m.commitHintsFolded.Load(),
	}
}
