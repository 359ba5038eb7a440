package transport

import "sync/atomic"

// Metrics is a snapshot of the transport's counters. Every counter only
// grows over the life of the Transport (a removed peer keeps its counts).
type Metrics struct {
	// Total sums every peer, plus what cannot be attributed to one.
	Total PeerMetrics
	// Peers has one entry per peer that anything was sent to or received
	// from.
	Peers map[uint64]PeerMetrics
	// RejectedConns counts accepted connections closed before a peer was
	// established: a wrong preamble, a malformed or timed-out handshake, a
	// wrong cluster id or target node, a refused (blocked) peer.
	RejectedConns uint64
}

// PeerMetrics are the counters of one peer (or their sum).
type PeerMetrics struct {
	// MessagesSent counts messages written to the peer's connection.
	MessagesSent uint64
	// MessagesDropped counts messages to the peer that were not sent: the
	// queue was full, the peer could not be reached, the connection broke
	// under them, the peer is blocked or removed, or one was too large.
	MessagesDropped uint64
	// MessagesReceived counts messages from the peer handed to the Handler.
	MessagesReceived uint64
	// MessagesDiscarded counts messages from the peer read and thrown away
	// because the peer is blocked.
	MessagesDiscarded uint64

	// FramesSent and FramesReceived count message frames.
	FramesSent, FramesReceived uint64
	// BytesSent and BytesReceived count message-frame bytes on the wire,
	// headers included, after compression.
	BytesSent, BytesReceived uint64
	// Writes counts Write calls on message connections; each carries all
	// the frames of one drained batch.
	Writes uint64

	// Connects counts message connections established to the peer (the
	// handshake succeeded). Reconnects is Connects after the first.
	Connects, Reconnects uint64
	// ConnectFailures counts failed attempts to connect: resolve, dial or
	// handshake errors, refusals.
	ConnectFailures uint64
	// FrameErrors counts inbound connections from the peer closed because
	// of a malformed, oversized or truncated frame.
	FrameErrors uint64

	// SnapshotsSent and SnapshotsSendFailed count outbound snapshot streams
	// by outcome; SnapshotsReceived and SnapshotsReceiveFailed inbound ones.
	SnapshotsSent, SnapshotsSendFailed        uint64
	SnapshotsReceived, SnapshotsReceiveFailed uint64
	SnapshotBytesSent, SnapshotBytesReceived  uint64
}

func (m *PeerMetrics) add(o PeerMetrics) {
	m.MessagesSent += o.MessagesSent
	m.MessagesDropped += o.MessagesDropped
	m.MessagesReceived += o.MessagesReceived
	m.MessagesDiscarded += o.MessagesDiscarded
	m.FramesSent += o.FramesSent
	m.FramesReceived += o.FramesReceived
	m.BytesSent += o.BytesSent
	m.BytesReceived += o.BytesReceived
	m.Writes += o.Writes
	m.Connects += o.Connects
	m.Reconnects += o.Reconnects
	m.ConnectFailures += o.ConnectFailures
	m.FrameErrors += o.FrameErrors
	m.SnapshotsSent += o.SnapshotsSent
	m.SnapshotsSendFailed += o.SnapshotsSendFailed
	m.SnapshotsReceived += o.SnapshotsReceived
	m.SnapshotsReceiveFailed += o.SnapshotsReceiveFailed
	m.SnapshotBytesSent += o.SnapshotBytesSent
	m.SnapshotBytesReceived += o.SnapshotBytesReceived
}

// counters are the live, atomically updated PeerMetrics of one peer. The
// hot paths hold a pointer to them so counting takes no lock.
type counters struct {
	messagesSent, messagesDropped, messagesReceived, messagesDiscarded atomic.Uint64
	framesSent, framesReceived, bytesSent, bytesReceived, writes       atomic.Uint64
	connects, reconnects, connectFailures, frameErrors                 atomic.Uint64
	snapsSent, snapsSendFailed, snapsReceived, snapsReceiveFailed      atomic.Uint64
	snapBytesSent, snapBytesReceived                                   atomic.Uint64
}

func (c *counters) load() PeerMetrics {
	return PeerMetrics{
		MessagesSent:           c.messagesSent.Load(),
		MessagesDropped:        c.messagesDropped.Load(),
		MessagesReceived:       c.messagesReceived.Load(),
		MessagesDiscarded:      c.messagesDiscarded.Load(),
		FramesSent:             c.framesSent.Load(),
		FramesReceived:         c.framesReceived.Load(),
		BytesSent:              c.bytesSent.Load(),
		BytesReceived:          c.bytesReceived.Load(),
		Writes:                 c.writes.Load(),
		Connects:               c.connects.Load(),
		Reconnects:             c.reconnects.Load(),
		ConnectFailures:        c.connectFailures.Load(),
		FrameErrors:            c.frameErrors.Load(),
		SnapshotsSent:          c.snapsSent.Load(),
		SnapshotsSendFailed:    c.snapsSendFailed.Load(),
		SnapshotsReceived:      c.snapsReceived.Load(),
		SnapshotsReceiveFailed: c.snapsReceiveFailed.Load(),
		SnapshotBytesSent:      c.snapBytesSent.Load(),
		SnapshotBytesReceived:  c.snapBytesReceived.Load(),
	}
}
