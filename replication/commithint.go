package replication

import (
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"kvnode/transport"
)

// Commit hints.
//
// When a leader commits an entry, raft tells every follower at once with
// an append that carries no entries, only the new commit index (bcastAppend
// after maybeCommit). With one write in flight per group, the usual case
// with many groups, that doubles the messages of a write: each follower
// steps the hint, writes the commit index to its WAL, answers, and the
// leader steps the answer. Yet the next append to the same follower, a few
// milliseconds later under load, carries the commit index anyway.
//
// So the loop holds such a hint for up to Config.CommitHintDelay. An
// append with entries for the same group and follower folds it (the append
// carries a commit index at least as new), a newer hint replaces it, and
// whatever is still held when the delay ends goes out then. A read index
// answer to a follower takes the group's held hint along, ahead of it, so
// a follower read does not wait out the delay for the commit index it
// needs.
//
// Raft tolerates any message being delayed or dropped, so safety does not
// depend on this; the delay is bounded, and heartbeats carry the commit
// index too, so followers still learn every commit. What a follower loses
// is freshness: its applied state may trail the leader's by up to the
// delay, which only stale local reads can see.

type hintKey struct{ group, to uint64 }

// isCommitHint reports whether m is an append that carries no entries.
func isCommitHint(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MessageType_MsgApp && len(m.GetEntries()) == 0
}

// routeHint applies the hint rules to an outgoing message of group. It
// returns true if it held m, which must then not be sent now.
func (h *Host) routeHint(group uint64, m *raftpb.Message) bool {
	key := hintKey{group: group, to: m.GetTo()}
	switch m.GetType() {
	case raftpb.MessageType_MsgApp:
		if isCommitHint(m) {
			if len(h.hints) == 0 {
				h.hintTimer.Reset(h.cfg.CommitHintDelay)
			}
			if _, ok := h.hints[key]; ok {
				h.metrics.commitHintsFolded.Add(1) // replaced by a newer one
			}
			h.hints[key] = m
			h.metrics.commitHintsHeld.Add(1)
			return true
		}
		if _, ok := h.hints[key]; ok {
			delete(h.hints, key)
			h.metrics.commitHintsFolded.Add(1)
		}
	case raftpb.MessageType_MsgReadIndexResp:
		if held, ok := h.hints[key]; ok {
			delete(h.hints, key)
			h.outbox[key.to] = append(h.outbox[key.to], transport.Message{Group: group, Msg: held})
		}
	}
	return false
}

// releaseHints sends every held hint: the delay is over. A group that
// left this node had its hints dropped then (dropHints).
func (h *Host) releaseHints() {
	for key, m := range h.hints {
		h.outbox[key.to] = append(h.outbox[key.to], transport.Message{Group: key.group, Msg: m})
	}
	clear(h.hints)
	h.flushOutbox()
}

// dropHints forgets the hints held for a group whose replica leaves this
// node: a later replica of the group here must not send them.
func (h *Host) dropHints(group uint64) {
	for key := range h.hints {
		if key.group == group {
			delete(h.hints, key)
		}
	}
}

// newHintTimer returns a stopped timer for the loop's hint delay.
func newHintTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}
