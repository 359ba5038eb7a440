package transport

import "errors"

var (
	// ErrClosed is returned by Serve, SendSnapshot and friends once Close
	// has been called.
	ErrClosed = errors.New("transport: closed")

	// ErrBlocked is returned by SendSnapshot when the peer is blocked (see
	// Transport.Block), before or during the stream.
	ErrBlocked = errors.New("transport: peer is blocked")

	// ErrClusterIDUnknown means a connection was not made because this node
	// (or, in a peer's refusal, that peer) does not know its cluster id yet.
	// A joining node learns the id after it starts; until then it neither
	// dials nor accepts, so it cannot join the wrong cluster by accident.
	ErrClusterIDUnknown = errors.New("transport: cluster id not known yet")

	// ErrClusterMismatch means the peer belongs to another cluster: a
	// misconfigured address, or a node that was wiped and re-bootstrapped.
	ErrClusterMismatch = errors.New("transport: cluster id mismatch")

	// ErrWrongNode means the process at the peer's address is a different
	// node than the one addressed: a stale address after a membership change.
	ErrWrongNode = errors.New("transport: wrong target node")

	// ErrRefused means the peer refused the connection: it has blocked this
	// node, or it is shutting down.
	ErrRefused = errors.New("transport: connection refused by peer")

	// ErrHandshake means the handshake was malformed or of a protocol
	// version the other side does not speak.
	ErrHandshake = errors.New("transport: bad handshake")

	// ErrFrameTooLarge means a frame declared (or decompressed to) more than
	// MaxFrameSize bytes. The connection is closed before anything of that
	// size is allocated.
	ErrFrameTooLarge = errors.New("transport: frame too large")

	// ErrCorruptFrame means a frame could not be decoded: unknown flags, a
	// bad s2 block, or a payload that is not a sequence of messages. The
	// connection is closed: after a bad frame nothing on it can be trusted.
	ErrCorruptFrame = errors.New("transport: corrupt frame")

	// ErrMessageTooLarge means one message alone does not fit in a frame of
	// MaxFrameSize; it is dropped (and counted), never sent.
	ErrMessageTooLarge = errors.New("transport: message too large for one frame")

	// ErrSnapshotRejected wraps the error a snapshot receiver's
	// HandleSnapshot returned; the text after it is the receiver's message.
	ErrSnapshotRejected = errors.New("transport: snapshot rejected by receiver")

	// ErrSnapshotTruncated is what a snapshot body reader returns when the
	// stream ends before the sender's end marker: the sender died, was
	// cancelled, or the connection broke. It is never a clean io.EOF, so an
	// incomplete snapshot cannot be mistaken for a complete one.
	ErrSnapshotTruncated = errors.New("transport: snapshot stream ended before its end marker")
)
