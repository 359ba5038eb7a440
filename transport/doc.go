// Package transport carries raft messages between kvnode nodes: the
// messages of every raft group on a node travel over one TCP connection per
// peer and direction, and each snapshot over a connection of its own.
//
// # Model
//
// Send never blocks. Each peer has a bounded queue (Config.QueueSize) and a
// sender goroutine, started on the first Send, that owns one long-lived
// connection to the peer. Each time it wakes it drains everything queued and
// writes it as a few frames (about 1 MiB each) in a single Write (a backlog
// over 4 MiB takes several), so a busy raft loop pays one syscall per peer
// per cycle, not one per message.
// Messages that do not fit in the queue, that go to a peer that cannot be
// reached, or that were in a write that failed are dropped and counted, and
// Handler.PeerUnreachable is called once per failure episode: raft
// retransmits whatever matters, and must learn that the peer is down rather
// than have the transport buffer without bound. The sender reconnects with
// jittered exponential backoff (Config.BackoffMin..BackoffMax); a peer that
// refuses us for a reason that will not fix itself (wrong cluster, wrong
// node, blocked) is retried only at BackoffMax.
//
// Connections are one-way: a node dials its own connection to each peer it
// sends to, and only reads from the connections it accepts (a peer's
// acceptor never writes after the handshake, which lets the dialer notice a
// dead peer while idle by a pending Read returning).
//
// Snapshots (SendSnapshot) use a fresh connection each, so that heartbeats
// and appends never queue behind a large stream. The body is streamed in
// bounded chunks and the receiver answers with a verdict.
//
// Block and Unblock cut a peer off in both directions, for
// network-partition tests and for fencing.
//
// # Wire format
//
// All integers are big-endian unless they are uvarints. Every connection
// starts with the preamble and the dialer's handshake; the acceptor checks
// the cluster id (equal to its own, both non-zero) and the target node id
// (equal to its NodeID), and answers with a status. On a refusal it closes
// the connection; the dialer logs the reason and backs off.
//
//	dialer                                             acceptor
//	  | preamble "KVRAFT1\n" (Config.Preamble)             |
//	  |--------------------------------------------------->|
//	  | handshake (26 bytes)                               |
//	  | +---------+------+------------+---------+---------+|
//	  | | version | kind | cluster id | from id |  to id  ||
//	  | |   u8=1  |  u8  |    u64     |   u64   |   u64   ||
//	  | +---------+------+------------+---------+---------+|
//	  |  kind: 1 = messages, 2 = snapshot                  |
//	  |--------------------------------------------------->|
//	  |                          status                    |
//	  |           +------+------------+-----------------+  |
//	  |           | code | u16 length | message (UTF-8) |  |
//	  |           +------+------------+-----------------+  |
//	  |  code: 0 ok, 1 bad version, 2 cluster mismatch,    |
//	  |  3 wrong node, 4 cluster id unknown, 5 refused,    |
//	  |  6 bad handshake, 7 failed (snapshot verdict)      |
//	  |<---------------------------------------------------|
//
// A messages connection then carries frames from the dialer only, until
// either side closes it:
//
//	frame:   +----------------+----------+------------------------+
//	         | u32 length (n) | u8 flags | payload (n bytes)      |
//	         +----------------+----------+------------------------+
//	         flags bit 0: payload is one s2 block (set only when the
//	         payload exceeds CompressThreshold and compression shrinks
//	         it); other bits must be 0.
//
//	payload: +----------------+--------------+---------------------+
//	(after   | uvarint group  | uvarint len  | raftpb.Message      | ...
//	 s2)     |                |              | (protobuf, len B)   |
//	         +----------------+--------------+---------------------+
//	         repeated to the end of the payload.
//
// Both n and the decompressed size must be at most MaxFrameSize; the reader
// checks the declared size before allocating. A frame that is oversized,
// truncated (the stream ends inside it), has unknown flags, or does not
// decode closes the connection and is counted in PeerMetrics.FrameErrors.
// An empty payload is valid and carries no messages.
//
// A snapshot connection carries one stream:
//
//	dialer                                             acceptor
//	  | preamble, handshake (kind 2)  -->  <-- status     |
//	  | frame holding exactly one message: the MsgSnap     |
//	  | chunk frames: same header; payload = body bytes,   |
//	  |   at most 256 KiB before compression               |
//	  | ...                                                |
//	  | end marker: a frame of length 0                    |
//	  |--------------------------------------------------->|
//	  |                  status: 0 ok, or 7 + the error    |
//	  |<---------------------------------------------------|
//
// The body has no overall size limit; each chunk is bounded by
// MaxFrameSize. A stream that ends without the end marker is truncated: the
// receiver's body reader returns ErrSnapshotTruncated, never io.EOF. The
// receiver may answer before the end marker (its handler stopped reading);
// it then drains the connection briefly so the sender reads the verdict
// instead of a reset.
//
// # Goroutines and ownership
//
// Every goroutine has an owner that stops it: peer senders (and the watcher
// of each one's connection) are stopped by RemovePeer and Close; Serve's
// per-connection goroutines end with their connection, which Close closes;
// HandleConn and SendSnapshot run on the caller's goroutine and return when
// Close closes their connection. Close returns only when all of them have.
package transport
