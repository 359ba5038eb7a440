package transport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// Message is one raft message of one group.
type Message struct {
	Group uint64
	Msg   *raftpb.Message
}

// Handler is implemented by the replication layer. The transport calls it;
// it is declared here, by its caller, so that the transport depends on
// nothing above it.
type Handler interface {
	// HandleMessages gets the messages decoded from one frame from a peer,
	// in the order the peer sent them. The slice and the messages now
	// belong to the handler. It is called on the connection's read
	// goroutine and must not block for long (the receiver just queues
	// them): while it runs, nothing more is read from that peer.
	HandleMessages(from uint64, msgs []Message)

	// HandleSnapshot gets one snapshot stream: m is the MsgSnap (metadata
	// only) that the sender passed to SendSnapshot, and body yields the
	// stream's bytes until its end (io.EOF). A stream cut short (the sender
	// died, the peer was blocked, the transport closed) makes body return an
	// error wrapping ErrSnapshotTruncated, never io.EOF. A nil error is
	// acknowledged to the sender; an error is sent back to the sender as a
	// failure (and a body error is sent even if the handler returns nil).
	// It may return before reading all of body; the sender then gets the
	// verdict early. It runs on its own goroutine per stream; ctx is
	// cancelled on Close and when the peer is blocked, and the handler must
	// return promptly then.
	HandleSnapshot(ctx context.Context, from uint64, m Message, body io.Reader) error

	// PeerUnreachable reports that messages to a peer were dropped because
	// it is down, blocked, or its queue is full, so raft can
	// ReportUnreachable. It is called at most once per peer per failure
	// episode (an episode ends when a write to the peer succeeds), from a
	// transport goroutine, never from inside Send; it must not block.
	PeerUnreachable(to uint64)
}

// Transport carries the raft messages of every group between this node and
// its peers, over one long-lived TCP connection per peer and direction, and
// snapshot streams over connections of their own. It is safe for concurrent
// use. See the package documentation for the wire format.
type Transport struct {
	cfg Config
	log *slog.Logger

	// ctx is cancelled by Close; every stream's context derives from it.
	ctx    context.Context
	cancel context.CancelFunc

	// wg counts every goroutine the transport starts and every blocking
	// public call in progress (Serve, HandleConn, SendSnapshot), so that
	// Close returns only when none is left. Add happens under mu after
	// checking closed, so it never races with Close's Wait.
	wg sync.WaitGroup

	// blocked is the set of blocked peers, read lock-free on every frame
	// and Send. It is copy-on-write: replaced (never modified) under mu.
	blocked atomic.Pointer[map[uint64]struct{}]

	rejected atomic.Uint64 // Metrics.RejectedConns

	mu struct {
		sync.Mutex
		closed bool
		// peers are the outbound senders, started lazily by Send.
		peers map[uint64]*peer
		// counters are per peer, created on first use, never removed.
		counters map[uint64]*counters
		// conns are the live connections other than the peers' own outbound
		// message connections (which their sender owns): accepted ones and
		// outbound snapshot streams. Close and Block close them.
		conns     map[net.Conn]*connEntry
		listeners map[net.Listener]struct{}
	}
}

// connEntry describes a tracked connection.
type connEntry struct {
	peer   uint64             // 0 until the handshake names the peer
	cancel context.CancelFunc // cancels the stream's context; may be nil
}

// New returns a Transport for cfg. It starts nothing: senders start on the
// first Send to a peer, and inbound connections come through Serve or
// HandleConn.
func New(cfg Config) (*Transport, error) {
	c := cfg.EnsureDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	t := &Transport{cfg: *c, log: c.Logger.With("node", c.NodeID)}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.blocked.Store(&map[uint64]struct{}{})
	t.mu.peers = make(map[uint64]*peer)
	t.mu.counters = make(map[uint64]*counters)
	t.mu.conns = make(map[net.Conn]*connEntry)
	t.mu.listeners = make(map[net.Listener]struct{})
	return t, nil
}

// Send queues msgs for peer to and returns at once: it never blocks and
// never fails. Messages that do not fit in the peer's queue, or that go to
// a blocked peer, are dropped and counted, and the peer is reported
// unreachable. Messages to node 0 or to this node are dropped (raft sends
// neither). The transport owns msgs' messages from now on: the caller must
// not modify them (raft does not); msgs itself may be reused.
func (t *Transport) Send(to uint64, msgs []Message) {
	if len(msgs) == 0 {
		return
	}
	p, c := t.peerFor(to)
	if p == nil {
		c.messagesDropped.Add(uint64(len(msgs)))
		return
	}
	p.enqueue(msgs)
}

// peerFor returns the sender for peer to, starting it if needed, and the
// peer's counters. The sender is nil when the transport is closed or to
// cannot be a peer.
func (t *Transport) peerFor(to uint64) (*peer, *counters) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.countersLocked(to)
	if t.mu.closed || to == 0 || to == t.cfg.NodeID {
		return nil, c
	}
	p := t.mu.peers[to]
	if p == nil {
		p = newPeer(t, to, c)
		t.mu.peers[to] = p
		t.wg.Add(1)
		go p.run()
	}
	return p, c
}

func (t *Transport) countersFor(peer uint64) *counters {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.countersLocked(peer)
}

func (t *Transport) countersLocked(peer uint64) *counters {
	c := t.mu.counters[peer]
	if c == nil {
		c = new(counters)
		t.mu.counters[peer] = c
	}
	return c
}

// Block drops everything to and from peer until Unblock: the outbound queue
// and later Sends, inbound frames, and snapshot streams both ways (in-flight
// ones are cut, new ones refused). Live connections with the peer are
// closed, and its handshakes refused, so a partition looks like one from
// both sides. It is for fault-injection tests and for fencing a peer off.
func (t *Transport) Block(peer uint64) {
	t.mu.Lock()
	old := *t.blocked.Load()
	if _, ok := old[peer]; ok {
		t.mu.Unlock()
		return
	}
	n := make(map[uint64]struct{}, len(old)+1)
	for k := range old {
		n[k] = struct{}{}
	}
	n[peer] = struct{}{}
	t.blocked.Store(&n)
	victims := t.connsOfLocked(peer)
	p := t.mu.peers[peer]
	t.mu.Unlock()

	t.log.Info("blocked peer", "peer", peer)
	for c, e := range victims {
		if e.cancel != nil {
			e.cancel()
		}
		_ = c.Close()
	}
	if p != nil {
		p.interrupt()
	}
}

// Unblock undoes Block: the peer's sender reconnects when there is
// something to send, and its handshakes are accepted again.
func (t *Transport) Unblock(peer uint64) {
	t.mu.Lock()
	old := *t.blocked.Load()
	if _, ok := old[peer]; !ok {
		t.mu.Unlock()
		return
	}
	n := make(map[uint64]struct{}, len(old))
	for k := range old {
		if k != peer {
			n[k] = struct{}{}
		}
	}
	t.blocked.Store(&n)
	p := t.mu.peers[peer]
	t.mu.Unlock()

	t.log.Info("unblocked peer", "peer", peer)
	if p != nil {
		p.signal()
	}
}

func (t *Transport) isBlocked(peer uint64) bool {
	_, ok := (*t.blocked.Load())[peer]
	return ok
}

func (t *Transport) connsOfLocked(peer uint64) map[net.Conn]*connEntry {
	out := make(map[net.Conn]*connEntry)
	for c, e := range t.mu.conns {
		if e.peer == peer {
			out[c] = e
		}
	}
	return out
}

// RemovePeer stops peer's sender, drops what it had queued, and closes its
// outbound connection; it returns once the sender has stopped. Inbound
// connections from the peer are left alone (they end when the peer stops
// sending). A later Send to the peer starts a new sender, so a node removed
// and re-added works; to refuse a removed node, Block it.
func (t *Transport) RemovePeer(peer uint64) {
	t.mu.Lock()
	p := t.mu.peers[peer]
	delete(t.mu.peers, peer)
	t.mu.Unlock()
	if p != nil {
		p.stop()
		<-p.done
		t.log.Info("removed peer", "peer", peer)
	}
}

// Metrics returns a snapshot of the counters.
func (t *Transport) Metrics() Metrics {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := Metrics{Peers: make(map[uint64]PeerMetrics, len(t.mu.counters)), RejectedConns: t.rejected.Load()}
	for id, c := range t.mu.counters {
		pm := c.load()
		m.Peers[id] = pm
		m.Total.add(pm)
	}
	return m
}

// Close stops every sender, listener and stream and closes every
// connection, and returns when no goroutine of the transport is left, and
// no HandleConn, Serve or SendSnapshot call is still running. Messages
// still queued are dropped. Close is idempotent.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return nil
	}
	t.mu.closed = true
	peers := t.mu.peers
	t.mu.peers = make(map[uint64]*peer)
	conns := t.mu.conns
	t.mu.conns = make(map[net.Conn]*connEntry)
	listeners := t.mu.listeners
	t.mu.listeners = make(map[net.Listener]struct{})
	t.mu.Unlock()

	t.cancel()
	for l := range listeners {
		_ = l.Close()
	}
	for c, e := range conns {
		if e.cancel != nil {
			e.cancel()
		}
		_ = c.Close()
	}
	for _, p := range peers {
		p.stop()
	}
	t.wg.Wait()
	t.log.Debug("transport closed")
	return nil
}

// enter registers a blocking call or goroutine with wg, unless the
// transport is closed.
func (t *Transport) enter() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.closed
}

// trackConn registers c so that Close (and, once e.peer is set, Block)
// closes it. It fails if the transport is closed or e's peer is blocked.
func (t *Transport) trackConn(c net.Conn, e *connEntry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.mu.closed {
		return ErrClosed
	}
	if e.peer != 0 && t.isBlocked(e.peer) {
		return ErrBlocked
	}
	t.mu.conns[c] = e
	return nil
}

// setConnPeer records which peer a tracked connection is with, once its
// handshake has said so. Checking blocked under mu closes the race with a
// concurrent Block, which sets blocked and then closes the peer's tracked
// connections under the same lock.
func (t *Transport) setConnPeer(c net.Conn, peer uint64, cancel context.CancelFunc) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.mu.conns[c]
	if t.mu.closed || !ok {
		return ErrClosed
	}
	if t.isBlocked(peer) {
		return ErrBlocked
	}
	e.peer, e.cancel = peer, cancel
	return nil
}

func (t *Transport) untrackConn(c net.Conn) {
	t.mu.Lock()
	delete(t.mu.conns, c)
	t.mu.Unlock()
	_ = c.Close()
}

// Serve accepts connections on l, checks each one's preamble, and serves it
// as HandleConn does. It returns ErrClosed once Close is called (closing l),
// or the first non-temporary error from l.Accept.
func (t *Transport) Serve(l net.Listener) error {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		_ = l.Close()
		return ErrClosed
	}
	t.wg.Add(1)
	t.mu.listeners[l] = struct{}{}
	t.mu.Unlock()
	defer t.wg.Done()
	defer func() {
		t.mu.Lock()
		delete(t.mu.listeners, l)
		t.mu.Unlock()
	}()

	var delay time.Duration
	for {
		conn, err := l.Accept()
		if err != nil {
			if t.isClosed() {
				return ErrClosed
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does, rather than spin or give up.
			if te, ok := err.(interface{ Temporary() bool }); ok && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				t.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
				case <-t.ctx.Done():
				}
				continue
			}
			return fmt.Errorf("transport: accept: %w", err)
		}
		delay = 0
		if !t.enter() {
			_ = conn.Close()
			return ErrClosed
		}
		go func() {
			defer t.wg.Done()
			t.serveAccepted(conn)
		}()
	}
}

// serveAccepted checks an accepted connection's preamble, then serves it.
func (t *Transport) serveAccepted(conn net.Conn) {
	if err := t.trackConn(conn, &connEntry{}); err != nil {
		_ = conn.Close()
		return
	}
	defer t.untrackConn(conn)
	_ = conn.SetDeadline(time.Now().Add(t.cfg.WriteTimeout))
	// Read exactly the preamble, unbuffered: everything after it is
	// HandleConn's.
	got := make([]byte, len(t.cfg.Preamble))
	if _, err := io.ReadFull(conn, got); err != nil {
		t.rejected.Add(1)
		t.log.Debug("connection closed before its preamble", "remote", conn.RemoteAddr(), "err", err)
		return
	}
	if !bytes.Equal(got, t.cfg.Preamble) {
		t.rejected.Add(1)
		t.log.Warn("rejected connection: wrong preamble", "remote", conn.RemoteAddr(), "got", fmt.Sprintf("%q", got))
		return
	}
	t.serveConn(conn)
}

// HandleConn serves an accepted connection whose preamble the caller's mux
// has already consumed. It blocks until the connection ends or Close is
// called, and closes conn before returning. It is safe to call from many
// goroutines at once.
func (t *Transport) HandleConn(conn net.Conn) {
	if !t.enter() {
		_ = conn.Close()
		return
	}
	defer t.wg.Done()
	if err := t.trackConn(conn, &connEntry{}); err != nil {
		_ = conn.Close()
		return
	}
	defer t.untrackConn(conn)
	_ = conn.SetDeadline(time.Now().Add(t.cfg.WriteTimeout))
	t.serveConn(conn)
}

// serveConn runs the acceptor's side of the handshake on a tracked
// connection (whose handshake deadline is set), then serves the stream.
func (t *Transport) serveConn(conn net.Conn) {
	remote := conn.RemoteAddr()
	// One buffered reader for the connection's life: the dialer writes its
	// handshake and first frames back to back.
	br := bufio.NewReaderSize(conn, 64<<10)
	hs, err := readHandshake(br)
	if err != nil {
		t.rejected.Add(1)
		t.log.Debug("connection closed before its handshake", "remote", remote, "err", err)
		return
	}
	code, reason := t.checkHandshake(hs)
	ctx, cancel := context.WithCancel(t.ctx)
	defer cancel()
	if code == statusOK {
		if err := t.setConnPeer(conn, hs.from, cancel); err != nil {
			code, reason = statusRefused, fmt.Sprintf("node %d refuses node %d: %v", t.cfg.NodeID, hs.from, err)
		}
	}
	if code != statusOK {
		t.rejected.Add(1)
		// Warn: a cluster or node mismatch is a misconfiguration someone
		// must see. The dialer backs off, so this does not flood.
		lvl := slog.LevelWarn
		if code == statusRefused || code == statusClusterUnknown {
			lvl = slog.LevelDebug // expected during fencing and startup
		}
		t.log.Log(t.ctx, lvl, "rejected connection", "remote", remote, "from", hs.from, "kind", hs.kind, "reason", reason)
		_, _ = conn.Write(appendStatus(nil, code, reason))
		return
	}
	if _, err := conn.Write(appendStatus(nil, statusOK, "")); err != nil {
		t.log.Debug("writing handshake reply", "remote", remote, "from", hs.from, "err", err)
		return
	}
	_ = conn.SetDeadline(time.Time{})
	switch hs.kind {
	case kindMessages:
		t.readMessages(conn, br, hs.from)
	case kindSnapshot:
		t.receiveSnapshot(ctx, conn, br, hs.from)
	}
}

// checkHandshake decides whether to accept hs (blocked peers are checked
// later, under the lock that orders them with Block).
func (t *Transport) checkHandshake(hs handshake) (statusCode, string) {
	if hs.version != protocolVersion {
		return statusBadVersion, fmt.Sprintf("protocol version %d not supported (want %d)", hs.version, protocolVersion)
	}
	if hs.kind != kindMessages && hs.kind != kindSnapshot {
		return statusBadHandshake, fmt.Sprintf("unknown stream kind %d", uint8(hs.kind))
	}
	if hs.from == 0 || hs.from == t.cfg.NodeID {
		return statusBadHandshake, fmt.Sprintf("bad sender node id %d", hs.from)
	}
	own := t.cfg.ClusterID()
	if own == 0 {
		return statusClusterUnknown, fmt.Sprintf("node %d does not know its cluster id yet", t.cfg.NodeID)
	}
	if hs.cluster != own {
		return statusClusterMismatch, fmt.Sprintf("node %d is in cluster %d, dialer %d says cluster %d", t.cfg.NodeID, own, hs.from, hs.cluster)
	}
	if hs.to != t.cfg.NodeID {
		return statusWrongNode, fmt.Sprintf("this is node %d, not node %d", t.cfg.NodeID, hs.to)
	}
	return statusOK, ""
}

// readMessages reads message frames from an accepted connection until it
// ends, handing each frame's messages to the Handler.
func (t *Transport) readMessages(conn net.Conn, br *bufio.Reader, from uint64) {
	c := t.countersFor(from)
	log := t.log.With("peer", from, "remote", conn.RemoteAddr())
	log.Debug("inbound message stream open")
	fr := frameReader{r: br, max: t.cfg.MaxFrameSize}
	for {
		payload, wire, err := fr.next()
		if err == nil {
			var msgs []Message
			msgs, err = decodePayload(payload, nil)
			if err == nil {
				c.framesReceived.Add(1)
				c.bytesReceived.Add(uint64(wire))
				if t.isBlocked(from) {
					c.messagesDiscarded.Add(uint64(len(msgs)))
					continue
				}
				if len(msgs) > 0 {
					c.messagesReceived.Add(uint64(len(msgs)))
					t.cfg.Handler.HandleMessages(from, msgs)
				}
				continue
			}
		}
		switch {
		case errors.Is(err, io.EOF):
			log.Debug("inbound message stream closed by peer")
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrCorruptFrame):
			c.frameErrors.Add(1)
			log.Warn("closing inbound message stream: bad frame", "err", err)
		default:
			// Reset by the peer, or closed by us (Close, Block).
			log.Debug("inbound message stream ended", "err", err)
		}
		return
	}
}

// dialPeer connects to peer to and completes the handshake for a stream of
// kind. The returned connection has no deadline set.
func (t *Transport) dialPeer(ctx context.Context, to uint64, kind streamKind) (net.Conn, error) {
	cluster := t.cfg.ClusterID()
	if cluster == 0 {
		return nil, ErrClusterIDUnknown
	}
	addr, err := t.cfg.Resolve(to)
	if err != nil {
		return nil, fmt.Errorf("transport: resolve node %d: %w", to, err)
	}
	d := net.Dialer{Timeout: t.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial node %d at %s: %w", to, addr, err)
	}
	// ctx may end during the handshake too; closing unblocks it.
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	err = t.handshake(conn, to, kind, cluster)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("transport: handshake with node %d at %s: %w", to, addr, err)
	}
	return conn, nil
}

func (t *Transport) handshake(conn net.Conn, to uint64, kind streamKind, cluster uint64) error {
	_ = conn.SetDeadline(time.Now().Add(t.cfg.DialTimeout))
	buf := append([]byte(nil), t.cfg.Preamble...)
	buf = appendHandshake(buf, handshake{version: protocolVersion, kind: kind, cluster: cluster, from: t.cfg.NodeID, to: to})
	if _, err := conn.Write(buf); err != nil {
		return err
	}
	code, msg, err := readStatus(conn)
	if err != nil {
		return fmt.Errorf("reading reply: %w", err)
	}
	if err := code.err(msg); err != nil {
		return err
	}
	return conn.SetDeadline(time.Time{})
}
