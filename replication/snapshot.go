package replication

import (
	"context"
	"errors"
	"fmt"
	"io"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"kvnode/engine"
	"kvnode/transport"
)

// Snapshots. raft asks for one (a MsgSnap in a leader's Ready) when a
// follower needs entries the log no longer has. The MsgSnap raft builds
// only carries metadata; the host streams the partition from an engine
// snapshot taken when the stream starts, and sets the message's metadata
// to that snapshot's applied state, so data and metadata always agree.
// raft accepts a snapshot newer than the one it asked for.
//
// The receiver stages the whole stream on disk and verifies it (nothing
// is installed yet), then steps the MsgSnap. If raft accepts it, the next
// Ready's MsgStorageAppend carries the snapshot: the appender installs it
// into the engine (an atomic ingest), then the WAL records it. If raft
// ignores it (already past that index), the staged files are discarded.

// sendSnapshot streams a snapshot to m.To on its own goroutine and reports
// the outcome to raft.
func (h *Host) sendSnapshot(r *replica, m *raftpb.Message) {
	group, to := r.id, m.GetTo()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		status := raft.SnapshotFailure
		defer func() {
			h.runTaskAsync(func() {
				if r, ok := h.mu.groups[group]; ok && !r.destroyed {
					r.rn.ReportSnapshot(to, status)
					h.markDirty(r)
				}
			})
		}()
		select {
		case h.snapSem <- struct{}{}:
			defer func() { <-h.snapSem }()
		case <-h.ctx.Done():
			return
		}
		snap, err := h.eng.NewSnapshot(group)
		if err != nil {
			h.logger.Warn("snapshot: cannot open", "group", group, "to", to, "err", err)
			return
		}
		defer snap.Close()
		meta, err := snapshotFromState(snap.State())
		if err != nil {
			h.logger.Warn("snapshot: bad state", "group", group, "err", err)
			return
		}
		msg := proto.CloneOf(m)
		msg.Snapshot = meta
		h.logger.Info("sending snapshot", "group", group, "to", to, "index", meta.GetMetadata().GetIndex())
		err = h.tr.SendSnapshot(h.ctx, to, transport.Message{Group: group, Msg: msg}, func(w io.Writer) error {
			_, err := snap.WriteTo(w)
			return err
		})
		if err != nil {
			h.logger.Warn("snapshot: send failed", "group", group, "to", to, "err", err)
			return
		}
		status = raft.SnapshotFinish
		h.metrics.snapshotsSent.Add(1)
	}()
}

// snapshotRequest is a received, verified snapshot waiting for raft.
type snapshotRequest struct {
	group  uint64
	msg    *raftpb.Message
	staged *engine.StagedSnapshot
	err    error
	done   chan struct{}
}

func (s *snapshotRequest) finish(err error) {
	if s.staged != nil {
		if derr := s.staged.Discard(); derr != nil && err == nil {
			err = derr
		}
		s.staged = nil
	}
	s.err = err
	close(s.done)
}

// HandleSnapshot implements transport.Handler: it stages and verifies the
// stream, then hands it to raft on the loop.
func (h *Host) HandleSnapshot(ctx context.Context, from uint64, m transport.Message, body io.Reader) error {
	if _, err := h.replica(m.Group); err != nil {
		return err
	}
	staged, err := h.eng.ReceiveSnapshot(body)
	if err != nil {
		return err
	}
	if staged.Partition() != m.Group {
		staged.Discard()
		return fmt.Errorf("replication: snapshot stream is for group %d, message for %d", staged.Partition(), m.Group)
	}
	meta, err := snapshotFromState(staged.State())
	if err != nil {
		staged.Discard()
		return err
	}
	sent := m.Msg.GetSnapshot().GetMetadata()
	if sent.GetIndex() != meta.GetMetadata().GetIndex() || sent.GetTerm() != meta.GetMetadata().GetTerm() {
		staged.Discard()
		return fmt.Errorf("replication: snapshot message says %d/%d, stream holds %d/%d",
			sent.GetIndex(), sent.GetTerm(), meta.GetMetadata().GetIndex(), meta.GetMetadata().GetTerm())
	}
	msg := proto.CloneOf(m.Msg)
	msg.Snapshot = meta
	req := &snapshotRequest{group: m.Group, msg: msg, staged: staged, done: make(chan struct{})}
	h.inbox.Lock()
	h.inbox.snaps = append(h.inbox.snaps, req)
	h.inbox.Unlock()
	h.notify()
	select {
	case <-req.done:
		return req.err
	case <-ctx.Done():
		// The loop still owns req and discards its files.
		return ctx.Err()
	case <-h.loopDone:
		return h.stoppedErr()
	}
}

// stepSnapshot gives a staged snapshot to raft.
func (h *Host) stepSnapshot(s *snapshotRequest) {
	r, ok := h.mu.groups[s.group]
	if !ok || r.destroyed {
		s.finish(fmt.Errorf("%w: %d", ErrGroupNotFound, s.group))
		return
	}
	if r.staged != nil {
		r.staged.finish(errors.New("replication: superseded by a newer snapshot"))
	}
	r.staged = s
	if err := r.rn.Step(s.msg); err != nil {
		r.staged = nil
		s.finish(err)
		return
	}
	h.markDirty(r)
}

// installSnapshot moves a staged snapshot raft accepted into the engine.
// The appender runs it before the WAL records the snapshot.
func (h *Host) installSnapshot(r *replica, s *snapshotRequest) error {
	md := s.msg.GetSnapshot().GetMetadata()
	if err := s.staged.Install(); err != nil {
		return fmt.Errorf("group %d: install snapshot %d: %w", r.id, md.GetIndex(), err)
	}
	s.staged = nil
	h.metrics.snapshotsInstalled.Add(1)
	r.applied.Store(md.GetIndex())
	r.conf.Store(raftpb.EnsureConfState(md.GetConfState()))
	h.logger.Info("installed snapshot", "group", r.id, "index", md.GetIndex())
	return nil
}

// finishSnapshotRequest answers the sender once raft has dealt with the
// staged snapshot, installed or not.
func (h *Host) finishSnapshotRequest(r *replica) {
	if r.staged != nil {
		r.staged.finish(nil)
		r.staged = nil
	}
}
