package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/wire"
)

// pool holds the connections to one node: a fixed number of slots, each
// dialed lazily and redialed after its connection breaks.
type pool struct {
	c     *Client
	addr  string
	next  atomic.Uint32
	slots []slot

	mu     sync.Mutex // guards closed, and starting connections
	closed bool
}

type slot struct {
	cn   atomic.Pointer[conn]
	dial sync.Mutex // one dial per slot at a time
}

func newPool(c *Client, addr string) *pool {
	return &pool{c: c, addr: addr, slots: make([]slot, c.cfg.ConnsPerNode)}
}

// get returns a live connection, dialing one if the chosen slot has none.
// Errors are *sendError (nothing was sent) or ErrClosed.
func (p *pool) get(ctx context.Context) (*conn, error) {
	i := int(p.next.Add(1) % uint32(len(p.slots)))
	s := &p.slots[i]
	if cn := s.cn.Load(); cn != nil && cn.alive() {
		return cn, nil
	}
	s.dial.Lock()
	defer s.dial.Unlock()
	if cn := s.cn.Load(); cn != nil && cn.alive() {
		return cn, nil // another caller dialed it meanwhile
	}
	cn, err := p.dial(ctx, s)
	if err != nil {
		// The node may still be reachable through another slot's
		// connection (this one may have failed for a local reason).
		for j := range p.slots {
			if other := p.slots[j].cn.Load(); other != nil && other.alive() {
				return other, nil
			}
		}
		return nil, err
	}
	return cn, nil
}

// dial connects a new connection for slot s.
func (p *pool) dial(ctx context.Context, s *slot) (*conn, error) {
	// Close must not wait for a dial: the dial also ends when the client
	// closes.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(p.c.ctx, cancel)
	defer stop()

	d := net.Dialer{Timeout: p.c.cfg.DialTimeout}
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		if p.c.closed.Load() {
			return nil, ErrClosed
		}
		return nil, &sendError{addr: p.addr, err: err}
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true) //nolint:errcheck // the default already; best effort
	}
	// The preamble goes out before any request, under the dial timeout: a
	// node that accepts but does not read is as good as down.
	nc.SetWriteDeadline(time.Now().Add(p.c.cfg.DialTimeout)) //nolint:errcheck // a failed Write reports it
	if _, err := nc.Write([]byte(wire.ClientPreamble)); err != nil {
		nc.Close()
		return nil, &sendError{addr: p.addr, err: fmt.Errorf("writing the preamble: %w", err)}
	}
	nc.SetWriteDeadline(time.Time{}) //nolint:errcheck // as above

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		nc.Close()
		return nil, ErrClosed
	}
	cn := newConn(p.c, p.addr, nc)
	// Started and stored under p.mu, so that close (which takes it) either
	// finds this connection in its slot or prevents it: Client.Close must
	// not miss a connection, nor wait for goroutines that start after it.
	cn.start()
	s.cn.Store(cn)
	return cn, nil
}

// close fails every connection's in-flight requests with ErrClosed and
// stops their goroutines (Client.Close waits for them).
func (p *pool) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	for i := range p.slots {
		if cn := p.slots[i].cn.Load(); cn != nil {
			cn.fail(ErrClosed)
		}
	}
}

// conn is one pipelined connection. Callers enqueue encoded requests; the
// writer goroutine writes everything queued in one system call; the reader
// goroutine completes each request when its response (matched by id)
// arrives. The first I/O error breaks the connection for good: every request
// still waiting fails, and the pool dials a new connection.
type conn struct {
	c      *Client
	addr   string
	nc     net.Conn
	nextID atomic.Uint64

	wake chan struct{} // cap 1: the queue is not empty
	done chan struct{} // closed when the connection breaks

	mu      sync.Mutex
	queue   []*call          // not yet taken by the writer
	pending map[uint64]*call // waiting for a response, by request id
	err     error            // why the connection broke; nil while alive
}

// call is one request on a conn.
type call struct {
	id    uint64
	op    wire.Op
	frame *[]byte // the encoded request; owned by the writer once queued
	resp  any     // what a StatusOK body decodes into
	state callState
	done  chan struct{} // closed when err is set
	err   error
}

type callState uint8

const (
	callQueued    callState = iota // in the queue: certainly not sent
	callTaken                      // handed to the writer: maybe sent
	callAbandoned                  // the caller gave up while it was queued
)

func newConn(c *Client, addr string, nc net.Conn) *conn {
	return &conn{
		c:       c,
		addr:    addr,
		nc:      nc,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		pending: map[uint64]*call{},
	}
}

func (cn *conn) start() {
	cn.c.wg.Add(2)
	go cn.writeLoop()
	go cn.readLoop()
}

func (cn *conn) alive() bool {
	select {
	case <-cn.done:
		return false
	default:
		return true
	}
}

// do sends one request and waits for its response, decoding a StatusOK body
// into resp. It returns nil, a *ServerError, a *sendError, a
// *badResponseError, or ErrTooLarge (wrapped) for a request over the frame
// limit, which is not sent.
func (cn *conn) do(ctx context.Context, op wire.Op, req, resp any) error {
	id := cn.nextID.Add(1) // 0 is never used: the server's id for frame errors
	frame := getFrameBuf()
	var err error
	*frame, err = wire.EncodeFrame((*frame)[:0], id, uint8(op), req)
	if err != nil {
		putFrameBuf(frame)
		return err
	}
	if n := len(*frame) - 4; n > cn.c.cfg.MaxFrameSize {
		putFrameBuf(frame)
		return fmt.Errorf("%w: %s request of %d bytes, frame limit %d", ErrTooLarge, op, n, cn.c.cfg.MaxFrameSize)
	}
	cl := &call{id: id, op: op, frame: frame, resp: resp, done: make(chan struct{})}

	cn.mu.Lock()
	if cn.err != nil {
		err := cn.err
		cn.mu.Unlock()
		putFrameBuf(frame)
		return &sendError{addr: cn.addr, err: err}
	}
	cn.pending[id] = cl
	cn.queue = append(cn.queue, cl)
	cn.mu.Unlock()
	select {
	case cn.wake <- struct{}{}:
	default: // the writer has been woken already
	}

	select {
	case <-cl.done:
		return cl.err
	case <-ctx.Done():
	}
	cn.mu.Lock()
	if _, ok := cn.pending[id]; ok {
		// Abandon it. Still queued: the writer will skip it, so it was
		// certainly not sent. Otherwise a response may come later; the
		// reader discards it.
		delete(cn.pending, id)
		sent := cl.state != callQueued
		if !sent {
			cl.state = callAbandoned
		}
		cn.mu.Unlock()
		// The cause tells a read's attempt timeout from the caller's own
		// deadline or cancellation.
		return &sendError{addr: cn.addr, err: context.Cause(ctx), sent: sent}
	}
	cn.mu.Unlock()
	// The reader (or a failure) took it from pending first and is
	// completing it right now.
	<-cl.done
	return cl.err
}

// writeLoop writes queued requests, everything queued at once: under load,
// many requests share one system call (and one TCP segment).
func (cn *conn) writeLoop() {
	defer cn.c.wg.Done()
	var batch []*call
	var bufs net.Buffers
	for {
		select {
		case <-cn.wake:
		case <-cn.done:
			return
		}
		// Let the goroutines that are about to queue requests do so: one
		// write then carries them all. Under load this saves a syscall per
		// request; idle, it costs a scheduler round trip.
		runtime.Gosched()
		cn.mu.Lock()
		if cn.err != nil {
			cn.mu.Unlock()
			return
		}
		batch, cn.queue = cn.queue, batch[:0]
		bufs = bufs[:0]
		for _, cl := range batch {
			if cl.state == callQueued {
				cl.state = callTaken
				bufs = append(bufs, *cl.frame)
			}
		}
		cn.mu.Unlock()

		var err error
		if len(bufs) > 0 {
			// A write that stalls this long means the node stopped reading.
			cn.nc.SetWriteDeadline(time.Now().Add(cn.c.cfg.RequestTimeout)) //nolint:errcheck // Write reports it
			w := bufs                                                       // WriteTo consumes its receiver; bufs keeps the array
			_, err = w.WriteTo(cn.nc)
		}
		for i, cl := range batch {
			putFrameBuf(cl.frame)
			cl.frame = nil
			batch[i] = nil
		}
		clear(bufs)
		if err != nil {
			cn.fail(fmt.Errorf("write: %w", err))
			return
		}
	}
}

// readLoop completes requests as their responses arrive.
func (cn *conn) readLoop() {
	defer cn.c.wg.Done()
	fr := wire.NewFrameReader(bufio.NewReaderSize(cn.nc, 32<<10), cn.c.cfg.MaxFrameSize)
	for {
		f, err := fr.Next()
		if err != nil {
			cn.fail(fmt.Errorf("read: %w", err))
			return
		}
		if f.ID == 0 {
			// The server found a frame of ours malformed and is closing the
			// connection (docs/protocol.md); which request it was is lost.
			var eb wire.ErrorBody
			_ = wire.Decode(f.Body, &eb) // best effort: only for the message
			cn.fail(fmt.Errorf("server closed the connection: %s: %s", f.Status(), eb.Msg))
			return
		}
		cn.mu.Lock()
		cl := cn.pending[f.ID]
		delete(cn.pending, f.ID)
		cn.mu.Unlock()
		if cl == nil {
			continue // abandoned by its caller
		}
		// Decoding here, while the body is in the reader's buffer, saves a
		// copy; Decode never aliases the buffer.
		cl.err = cn.result(f, cl.op, cl.resp)
		close(cl.done)
	}
}

func (cn *conn) result(f wire.Frame, op wire.Op, resp any) error {
	if f.Status() == wire.StatusOK {
		if err := wire.Decode(f.Body, resp); err != nil {
			return &badResponseError{addr: cn.addr, op: op, err: err}
		}
		return nil
	}
	var eb wire.ErrorBody
	if err := wire.Decode(f.Body, &eb); err != nil {
		eb.Msg = fmt.Sprintf("(undecodable error body: %v)", err)
	}
	return &ServerError{Addr: cn.addr, Op: op, Status: f.Status(), Msg: eb.Msg, Leader: eb.Leader, LeaderAddr: eb.LeaderAddr}
}

// fail breaks the connection: it fails every waiting request (as maybe sent
// if the writer had taken it) and closes the socket, which stops both
// goroutines. Only the first call has an effect.
func (cn *conn) fail(err error) {
	cn.mu.Lock()
	if cn.err != nil {
		cn.mu.Unlock()
		return
	}
	cn.err = err
	close(cn.done)
	pending, queue := cn.pending, cn.queue
	cn.pending, cn.queue = nil, nil
	for _, cl := range pending {
		cl.err = &sendError{addr: cn.addr, err: err, sent: cl.state != callQueued}
	}
	cn.mu.Unlock()

	cn.nc.Close()
	for _, cl := range queue { // the writer will never see these
		putFrameBuf(cl.frame)
		cl.frame = nil
	}
	for _, cl := range pending {
		close(cl.done)
	}
	if !errors.Is(err, ErrClosed) {
		cn.c.log.Info("kvnode client: connection broken", "addr", cn.addr, "err", err, "failed_requests", len(pending))
	}
}

// Frame buffers are recycled: a request's frame lives only until it is
// written.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// maxPooledFrame keeps a rare large request from pinning its buffer.
const maxPooledFrame = 64 << 10

func getFrameBuf() *[]byte { return framePool.Get().(*[]byte) }

func putFrameBuf(b *[]byte) {
	if b != nil && cap(*b) <= maxPooledFrame {
		*b = (*b)[:0]
		framePool.Put(b)
	}
}
