package transport

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"time"
)

// peer is the outbound side of one peer: a bounded queue that Send fills
// without blocking, and a sender goroutine (run) that owns one long-lived
// connection, drains the whole queue at each wake-up and writes it as few
// frames in one Write.
type peer struct {
	t   *Transport
	id  uint64
	c   *counters
	log *slog.Logger

	// ctx is cancelled by stop; it aborts a dial in progress.
	ctx    context.Context
	cancel context.CancelFunc

	// wake has room for one token: Send, Block, Unblock and stop leave one
	// so the sender looks at its state again. Coalescing wake-ups is the
	// point: however many Sends happen during a write, the next round
	// drains all of them together.
	wake chan struct{}
	// done is closed when run returns.
	done chan struct{}

	mu struct {
		sync.Mutex
		queue []Message
		// spare is the drained batch's slice, handed back for reuse so
		// steady-state sending allocates no queue memory.
		spare []Message
		// stopped is set by stop; later enqueues drop.
		stopped bool
		// episode is set while a failure episode is open: messages were
		// dropped and no write has succeeded since. PeerUnreachable is
		// reported when an episode opens, never again within it.
		episode bool
		// reportPending asks the sender goroutine to call PeerUnreachable:
		// Send must not call into the Handler itself (the caller may hold
		// the very locks the Handler takes).
		reportPending bool
		// conn is the live connection, so stop and Block can close it
		// under a Write stuck on a peer that does not read.
		conn net.Conn
	}
}

func newPeer(t *Transport, id uint64, c *counters) *peer {
	p := &peer{
		t:    t,
		id:   id,
		c:    c,
		log:  t.log.With("peer", id),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	p.ctx, p.cancel = context.WithCancel(t.ctx)
	return p
}

// signal wakes the sender without blocking.
func (p *peer) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// interrupt closes the live connection, if any, and wakes the sender.
func (p *peer) interrupt() {
	p.mu.Lock()
	if p.mu.conn != nil {
		_ = p.mu.conn.Close()
	}
	p.mu.Unlock()
	p.signal()
}

// stop makes the sender exit soon; wait on done for it.
func (p *peer) stop() {
	p.mu.Lock()
	p.mu.stopped = true
	p.mu.Unlock()
	p.cancel()
	p.interrupt()
}

// enqueue is Send's half: queue what fits, drop the rest, never block.
func (p *peer) enqueue(msgs []Message) {
	p.mu.Lock()
	var n int
	if !p.mu.stopped && !p.t.isBlocked(p.id) {
		n = min(len(msgs), p.t.cfg.QueueSize-len(p.mu.queue))
		p.mu.queue = append(p.mu.queue, msgs[:n]...)
	}
	dropped := len(msgs) - n
	if dropped > 0 && p.openEpisodeLocked() {
		p.mu.reportPending = true
	}
	p.mu.Unlock()
	p.c.messagesDropped.Add(uint64(dropped))
	p.signal()
}

// openEpisodeLocked opens a failure episode and reports whether it was not
// already open (so PeerUnreachable is due).
func (p *peer) openEpisodeLocked() bool {
	if p.mu.episode {
		return false
	}
	p.mu.episode = true
	return true
}

// drop counts n messages dropped by the sender and reports the peer
// unreachable if that opens an episode. Sender goroutine only.
func (p *peer) drop(n int) {
	if n == 0 {
		return
	}
	p.c.messagesDropped.Add(uint64(n))
	p.mu.Lock()
	opened := p.openEpisodeLocked()
	p.mu.Unlock()
	if opened {
		p.t.cfg.Handler.PeerUnreachable(p.id)
	}
}

// dropQueued drops everything queued. Sender goroutine only.
func (p *peer) dropQueued() int {
	p.mu.Lock()
	n := len(p.mu.queue)
	clear(p.mu.queue)
	p.mu.queue = p.mu.queue[:0]
	p.mu.Unlock()
	p.drop(n)
	return n
}

// reportIfPending makes the PeerUnreachable call that Send asked for.
func (p *peer) reportIfPending() {
	p.mu.Lock()
	r := p.mu.reportPending
	p.mu.reportPending = false
	p.mu.Unlock()
	if r {
		p.t.cfg.Handler.PeerUnreachable(p.id)
	}
}

func (p *peer) hasQueued() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.mu.queue) > 0
}

// takeQueue returns everything queued, leaving the spare slice (if any) as
// the new queue.
func (p *peer) takeQueue() []Message {
	p.mu.Lock()
	defer p.mu.Unlock()
	q := p.mu.queue
	p.mu.queue, p.mu.spare = p.mu.spare, nil
	return q
}

// returnBatch clears a written batch (so it pins no messages) and offers
// its slice for reuse.
func (p *peer) returnBatch(batch []Message) {
	clear(batch)
	p.mu.Lock()
	if p.mu.spare == nil && cap(batch) <= 4*p.t.cfg.QueueSize {
		p.mu.spare = batch[:0]
	}
	p.mu.Unlock()
}

// endEpisode closes the failure episode after a successful write.
func (p *peer) endEpisode() {
	p.mu.Lock()
	p.mu.episode = false
	p.mu.Unlock()
}

// outConn is a live outbound message connection and its watcher. The
// acceptor never writes after the handshake, so the watcher's one Read
// returns only when the connection fails or the peer closes it; that lets
// the sender notice a dead peer while idle instead of on its next write.
type outConn struct {
	conn net.Conn
	dead chan struct{} // closed when the watcher's Read returns
}

func (p *peer) connect() (*outConn, error) {
	conn, err := p.t.dialPeer(p.ctx, p.id, kindMessages)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	if p.mu.stopped || p.t.isBlocked(p.id) {
		p.mu.Unlock()
		_ = conn.Close()
		return nil, ErrBlocked
	}
	p.mu.conn = conn
	p.mu.Unlock()
	oc := &outConn{conn: conn, dead: make(chan struct{})}
	go func() {
		defer close(oc.dead)
		var b [1]byte
		_, _ = conn.Read(b[:])
	}()
	return oc, nil
}

// closeConn closes oc and waits for its watcher, so no goroutine outlives
// the sender.
func (p *peer) closeConn(oc *outConn) {
	if oc == nil {
		return
	}
	p.mu.Lock()
	if p.mu.conn == oc.conn {
		p.mu.conn = nil
	}
	p.mu.Unlock()
	_ = oc.conn.Close()
	<-oc.dead
}

// run is the sender goroutine.
func (p *peer) run() {
	defer p.t.wg.Done()
	defer close(p.done)
	cfg := &p.t.cfg
	var (
		oc        *outConn
		bo        = backoff{min: cfg.BackoffMin, max: cfg.BackoffMax}
		retry     time.Time // no dial before this
		timer     = time.NewTimer(time.Hour)
		enc       = newFrameEncoder(cfg.MaxFrameSize, cfg.CompressThreshold)
		connected bool   // a connection was ever established
		lastErr   string // last connect error logged at Warn, to log repeats quieter
	)
	timer.Stop()
	defer timer.Stop()
	defer func() {
		p.closeConn(oc)
		p.mu.Lock()
		p.mu.stopped = true
		n := len(p.mu.queue)
		p.mu.queue = nil
		p.mu.Unlock()
		p.c.messagesDropped.Add(uint64(n))
	}()

	for {
		var dead <-chan struct{}
		if oc != nil {
			dead = oc.dead
		}
		select {
		case <-p.ctx.Done():
			return
		case <-p.wake:
		case <-timer.C:
		case <-dead:
			p.log.Info("connection to peer lost")
			p.closeConn(oc)
			oc = nil
			retry = time.Now().Add(bo.next())
		}
		p.reportIfPending()

		if p.t.isBlocked(p.id) {
			p.closeConn(oc)
			oc = nil
			p.dropQueued()
			continue
		}
		if !p.hasQueued() {
			continue
		}
		if oc == nil {
			if wait := time.Until(retry); wait > 0 {
				// Keep queueing (bounded) until the backoff ends.
				timer.Reset(wait)
				continue
			}
			var err error
			oc, err = p.connect()
			if err != nil {
				if p.ctx.Err() != nil {
					return
				}
				if errors.Is(err, ErrBlocked) {
					p.signal() // blocked meanwhile: the next round drops
					continue
				}
				p.c.connectFailures.Add(1)
				var d time.Duration
				if refusal(err) {
					// It will not fix itself in milliseconds.
					d = bo.giveUp()
				} else {
					d = bo.next()
				}
				retry = time.Now().Add(d)
				n := p.dropQueued()
				lvl := slog.LevelDebug
				if msg := err.Error(); msg != lastErr {
					lvl, lastErr = slog.LevelWarn, msg
				}
				p.log.Log(p.ctx, lvl, "cannot connect to peer; dropping its messages", "err", err, "dropped", n, "retry_in", d)
				continue
			}
			p.c.connects.Add(1)
			if connected {
				p.c.reconnects.Add(1)
			}
			connected, lastErr = true, ""
			p.log.Info("connected to peer", "remote", oc.conn.RemoteAddr())
		}

		// Let the goroutines that are about to queue messages for this
		// peer (the replication loop and its appender each send after their
		// own step) do so first: one Write then carries them all. Measured
		// in BenchmarkReplicatedPut with 64 writers: 0.67 to 0.51 Writes per
		// replicated write, and less CPU per write in 11 of 15 interleaved
		// pairs.
		runtime.Gosched()
		batch := p.takeQueue()
		err := p.write(oc.conn, enc, batch)
		p.returnBatch(batch)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			if p.t.isBlocked(p.id) {
				p.log.Debug("connection closed by Block", "err", err)
			} else {
				p.log.Warn("write to peer failed; reconnecting", "err", err)
			}
			p.closeConn(oc)
			oc = nil
			retry = time.Now().Add(bo.next())
			continue
		}
		bo.reset()
		p.endEpisode()
	}
}

// maxWriteBytes bounds the bytes encoded for one Write. A long backlog of
// large MsgApps is written in several Writes rather than encoded into one
// huge buffer: it bounds the sender's memory, and it keeps WriteTimeout a
// measure of a stuck peer rather than of the backlog's size.
const maxWriteBytes = 4 << 20

// write encodes batch and writes it, in as few Writes as maxWriteBytes
// allows (usually one). It counts what it sent, and drops (and counts) what
// it could not send.
func (p *peer) write(conn net.Conn, enc *frameEncoder, batch []Message) error {
	for i := 0; i < len(batch); {
		enc.reset()
		n, bad := 0, 0
		for ; i < len(batch) && len(enc.buf) < maxWriteBytes; i++ {
			m := batch[i]
			if m.Msg == nil {
				bad++
				continue
			}
			if err := enc.add(m.Group, m.Msg); err != nil {
				// A configuration bug (raft's MaxSizePerMsg too close to
				// MaxFrameSize), not a network problem: loud, and not a
				// reason to drop the connection.
				p.log.Error("dropping message", "group", m.Group, "type", m.Msg.GetType(), "err", err)
				bad++
				continue
			}
			n++
		}
		p.drop(bad)
		buf := enc.bytes()
		if len(buf) == 0 {
			continue
		}
		_ = conn.SetWriteDeadline(time.Now().Add(p.t.cfg.WriteTimeout))
		if _, err := conn.Write(buf); err != nil {
			p.drop(n + len(batch) - i)
			return err
		}
		p.c.messagesSent.Add(uint64(n))
		p.c.framesSent.Add(uint64(enc.frames))
		p.c.bytesSent.Add(uint64(len(buf)))
		p.c.writes.Add(1)
	}
	return nil
}

// refusal reports whether err is the peer (or this node) refusing the
// connection for a reason that takes a human or a membership change to fix.
func refusal(err error) bool {
	return errors.Is(err, ErrClusterMismatch) || errors.Is(err, ErrWrongNode) ||
		errors.Is(err, ErrHandshake) || errors.Is(err, ErrRefused)
}

// backoff is an exponential reconnect delay with jitter.
type backoff struct {
	min, max, cur time.Duration
}

// next returns the delay after one more failure.
func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return jitter(b.cur)
}

// giveUp jumps to the longest delay.
func (b *backoff) giveUp() time.Duration {
	b.cur = b.max
	return jitter(b.cur)
}

func (b *backoff) reset() { b.cur = 0 }

// jitter returns a delay in [d/2, d] ("equal jitter"): spread out, yet
// never much shorter than asked.
func jitter(d time.Duration) time.Duration {
	h := d / 2
	return h + rand.N(d-h+1)
}
