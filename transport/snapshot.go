package transport

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// snapshotChunkSize is the body size of one snapshot chunk (before
// compression). Big enough that per-chunk overhead (a header, a write
// deadline, a syscall) is noise; small enough that the receiver holds
// little and a stuck stream is noticed within one WriteTimeout.
const snapshotChunkSize = 256 << 10

// SendSnapshot streams one snapshot to peer to over a connection of its
// own, so that heartbeats and appends on the message connection never queue
// behind it. m is the MsgSnap (its metadata; keep it small, it must fit in
// one frame), and body writes the snapshot's bytes to w, which sends them in
// bounded chunks. After body returns nil and the end marker is sent,
// SendSnapshot waits for the receiver's verdict: nil, or an error wrapping
// ErrSnapshotRejected with the receiver's message. The verdict may come
// early (the receiver stopped reading); w's Write then fails and the
// verdict is returned.
//
// There is no timeout on the verdict besides ctx: installing a snapshot can
// take long. Give ctx a deadline. Cancelling ctx, Close (ErrClosed) and
// Block(to) (ErrBlocked) abort the stream; the receiver then sees a
// truncated body. A body error aborts it too and is returned.
func (t *Transport) SendSnapshot(ctx context.Context, to uint64, m Message, body func(w io.Writer) error) (err error) {
	if m.Msg == nil {
		return errors.New("transport: SendSnapshot: nil message")
	}
	if to == 0 || to == t.cfg.NodeID {
		return fmt.Errorf("transport: SendSnapshot: bad target node %d", to)
	}
	if !t.enter() {
		return ErrClosed
	}
	defer t.wg.Done()
	c := t.countersFor(to)
	log := t.log.With("peer", to, "group", m.Group)
	start := time.Now()
	var w *chunkWriter
	defer func() {
		var sent int64
		if w != nil {
			sent = w.n
			c.snapBytesSent.Add(uint64(sent))
		}
		if err != nil {
			c.snapsSendFailed.Add(1)
			log.Warn("snapshot send failed", "err", err, "bytes", sent, "took", time.Since(start))
			return
		}
		c.snapsSent.Add(1)
		log.Info("snapshot sent", "bytes", sent, "took", time.Since(start))
	}()
	if t.isBlocked(to) {
		return ErrBlocked
	}

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(t.ctx, cancel)()
	// cause explains a failure that our own cancellation provoked.
	cause := func(err error) error {
		switch {
		case t.isBlocked(to):
			return fmt.Errorf("%w: %w", ErrBlocked, err)
		case t.ctx.Err() != nil:
			return fmt.Errorf("%w: %w", ErrClosed, err)
		case parent.Err() != nil:
			return fmt.Errorf("%w: %w", parent.Err(), err)
		}
		return err
	}

	conn, err := t.dialPeer(ctx, to, kindSnapshot)
	if err != nil {
		return cause(err)
	}
	if err := t.trackConn(conn, &connEntry{peer: to, cancel: cancel}); err != nil {
		_ = conn.Close()
		return err
	}
	defer t.untrackConn(conn)
	defer context.AfterFunc(ctx, func() { _ = conn.Close() })()

	// The verdict reader runs for the whole stream, so that a receiver that
	// gives up early is heard at once, not after the whole body was pushed.
	verdict := make(chan verdictResult, 1)
	go func() {
		code, msg, err := readStatus(conn)
		if err != nil {
			verdict <- verdictResult{err: fmt.Errorf("transport: reading snapshot verdict: %w", noEOF(err))}
			return
		}
		verdict <- verdictResult{got: true, err: code.err(msg)}
	}()
	// Whatever happens, the reader ends (the conn is closed) before we do.
	var v *verdictResult
	wait := func() verdictResult {
		if v == nil {
			r := <-verdict
			v = &r
		}
		return *v
	}
	defer func() {
		_ = conn.Close()
		wait()
	}()

	w = &chunkWriter{
		conn:    conn,
		timeout: t.cfg.WriteTimeout,
		// The body comes compressed from its producer (the engine streams
		// s2 frames); compressing it again would cost CPU for nothing.
		threshold: -1,
		buf:       make([]byte, 0, min(snapshotChunkSize, t.cfg.MaxFrameSize)),
		verdict:   func() *verdictResult { return pollVerdict(verdict, &v) },
	}
	enc := newFrameEncoder(t.cfg.MaxFrameSize, t.cfg.CompressThreshold)
	if err := enc.add(m.Group, m.Msg); err != nil {
		return err
	}
	if err := w.writeRaw(enc.bytes()); err != nil {
		return w.failure(cause(err), wait)
	}
	bodyErr := body(w)
	if w.early != nil {
		// The receiver answered before the end; its verdict is the outcome.
		return w.early.err
	}
	if bodyErr != nil {
		if w.err != nil {
			return w.failure(cause(w.err), wait)
		}
		return fmt.Errorf("transport: snapshot body: %w", bodyErr)
	}
	if err := w.finish(); err != nil {
		if w.early != nil {
			return w.early.err
		}
		return w.failure(cause(err), wait)
	}
	if v == nil {
		select {
		case r := <-verdict:
			v = &r
		case <-ctx.Done():
			return cause(ctx.Err())
		}
	}
	if !v.got {
		return cause(v.err)
	}
	return v.err
}

// verdictResult is what the verdict reader found: a status (got), or the
// error that ended the connection first.
type verdictResult struct {
	got bool
	err error
}

// pollVerdict returns the verdict if it has arrived, without waiting.
func pollVerdict(ch chan verdictResult, v **verdictResult) *verdictResult {
	if *v != nil {
		return *v
	}
	select {
	case r := <-ch:
		*v = &r
		return &r
	default:
		return nil
	}
}

// chunkWriter is the io.Writer given to a snapshot body: it buffers into
// chunks and writes each as a frame.
type chunkWriter struct {
	conn      net.Conn
	timeout   time.Duration
	threshold int
	verdict   func() *verdictResult

	buf     []byte // pending body bytes, cap = chunk size
	out     []byte // encoded frame
	scratch []byte
	n       int64          // body bytes written to conn
	err     error          // sticky
	early   *verdictResult // a verdict that came before the end
}

// errVerdictEarly stops the body once the receiver has answered.
var errVerdictEarly = errors.New("transport: snapshot receiver answered before the end of the stream")

func (w *chunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if w.err != nil {
			return n, w.err
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p, n = p[k:], n+k
		if len(w.buf) == cap(w.buf) {
			w.flush()
		}
	}
	return n, w.err
}

// flush sends the pending bytes as one chunk.
func (w *chunkWriter) flush() {
	if w.err != nil || len(w.buf) == 0 {
		return
	}
	if r := w.verdict(); r != nil && r.got {
		w.early, w.err = r, errVerdictEarly
		return
	}
	w.out = appendFrame(w.out[:0], w.buf, w.threshold, &w.scratch)
	if err := w.writeRaw(w.out); err != nil {
		w.err = err
		return
	}
	w.n += int64(len(w.buf))
	w.buf = w.buf[:0]
}

func (w *chunkWriter) writeRaw(b []byte) error {
	_ = w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	_, err := w.conn.Write(b)
	return err
}

// finish sends what is pending and the end marker.
func (w *chunkWriter) finish() error {
	w.flush()
	if w.err != nil {
		return w.err
	}
	var end [frameHeaderSize]byte // zero length, no flags
	if err := w.writeRaw(end[:]); err != nil {
		w.err = err
	}
	return w.err
}

// failure explains a failed write: if the receiver's verdict explains it
// (it answered and closed), that verdict is the outcome.
func (w *chunkWriter) failure(err error, wait func() verdictResult) error {
	if w.early != nil {
		return w.early.err
	}
	_ = w.conn.Close()
	if r := wait(); r.got {
		return r.err
	}
	return err
}

// receiveSnapshot serves an accepted snapshot stream: the MsgSnap frame,
// the body through the Handler, then the verdict.
func (t *Transport) receiveSnapshot(ctx context.Context, conn net.Conn, br *bufio.Reader, from uint64) {
	c := t.countersFor(from)
	log := t.log.With("peer", from, "remote", conn.RemoteAddr())
	start := time.Now()
	fr := &frameReader{r: br, max: t.cfg.MaxFrameSize}
	payload, _, err := fr.next()
	var msgs []Message
	if err == nil {
		msgs, err = decodePayload(payload, nil)
		if err == nil && len(msgs) != 1 {
			err = fmt.Errorf("%w: snapshot header frame holds %d messages, want 1", ErrCorruptFrame, len(msgs))
		}
	}
	if err != nil {
		c.snapsReceiveFailed.Add(1)
		if errors.Is(err, ErrFrameTooLarge) || errors.Is(err, ErrCorruptFrame) || errors.Is(err, io.ErrUnexpectedEOF) {
			c.frameErrors.Add(1)
		}
		log.Warn("bad snapshot stream", "err", err)
		t.writeVerdict(conn, br, statusFailed, err.Error(), false)
		return
	}
	m := msgs[0]
	body := &bodyReader{fr: fr}
	herr := t.cfg.Handler.HandleSnapshot(ctx, from, m, body)
	c.snapBytesReceived.Add(uint64(body.n))
	if herr == nil && body.err != nil {
		// The handler swallowed a truncated body; never acknowledge an
		// incomplete snapshot.
		herr = body.err
	}
	if herr != nil {
		c.snapsReceiveFailed.Add(1)
		log.Warn("snapshot receive failed", "group", m.Group, "bytes", body.n, "err", herr)
		t.writeVerdict(conn, br, statusFailed, herr.Error(), body.done)
		return
	}
	c.snapsReceived.Add(1)
	log.Info("snapshot received", "group", m.Group, "bytes", body.n, "took", time.Since(start))
	t.writeVerdict(conn, br, statusOK, "", body.done)
}

// writeVerdict sends the verdict. If the sender may still be writing (the
// body was not read to its end), it then half-closes and drains the
// connection for a while before the caller closes it: closing a socket with
// unread data makes the kernel send a reset, which can destroy the verdict
// before the sender reads it.
func (t *Transport) writeVerdict(conn net.Conn, br *bufio.Reader, code statusCode, msg string, drained bool) {
	_ = conn.SetWriteDeadline(time.Now().Add(t.cfg.WriteTimeout))
	if _, err := conn.Write(appendStatus(nil, code, msg)); err != nil {
		return
	}
	if drained {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(t.cfg.WriteTimeout))
	_, _ = io.Copy(io.Discard, br)
}

// bodyReader is the io.Reader a HandleSnapshot gets: the chunks' bytes,
// then io.EOF at the end marker, or ErrSnapshotTruncated if the stream
// breaks first.
type bodyReader struct {
	fr   *frameReader
	cur  []byte // rest of the current chunk (owned by fr until next)
	done bool   // end marker seen
	err  error  // sticky
	n    int64
}

func (b *bodyReader) Read(p []byte) (int, error) {
	for len(b.cur) == 0 {
		if b.done {
			return 0, io.EOF
		}
		if b.err != nil {
			return 0, b.err
		}
		payload, _, err := b.fr.next()
		if err != nil {
			// Never let an io.EOF show through: a caller testing
			// errors.Is(err, io.EOF) would take the stream as complete.
			b.err = fmt.Errorf("%w: %w", ErrSnapshotTruncated, noEOF(err))
			return 0, b.err
		}
		if len(payload) == 0 {
			b.done = true
			return 0, io.EOF
		}
		b.cur = payload
	}
	n := copy(p, b.cur)
	b.cur = b.cur[n:]
	b.n += int64(n)
	return n, nil
}
