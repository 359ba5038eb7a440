package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"slices"
	"sync"
	"time"

	"kvnode/engine"
	"kvnode/wire"
)

// The binary protocol server (docs/protocol.md). Each connection has a
// reader (this goroutine) and a writer. Requests are pipelined: each runs
// on its own goroutine, at most maxInFlight per connection, and responses
// go out in completion order, batched into as few writes as possible.
// Unlike HTTP, a request for a partition this node does not lead is not
// forwarded: the answer names the leader, and the client goes there.

const maxInFlight = 1024

// frameLimit is the largest request frame accepted: room for the largest
// value plus framing, and never less than the protocol's default.
func (n *Node) frameLimit() int {
	return max(wire.DefaultMaxFrameSize, n.cfg.MaxValueSize+n.cfg.MaxKeySize+64<<10)
}

func (n *Node) trackConn(c net.Conn, add bool) bool {
	n.clients.Lock()
	defer n.clients.Unlock()
	if add {
		if n.stopping.Load() {
			return false
		}
		n.clients.conns[c] = struct{}{}
	} else {
		delete(n.clients.conns, c)
	}
	return true
}

func (n *Node) closeClientConns() {
	n.clients.Lock()
	defer n.clients.Unlock()
	for c := range n.clients.conns {
		c.Close()
	}
}

type clientConn struct {
	n    *Node
	conn net.Conn

	mu      sync.Mutex
	pending [][]byte // encoded response frames not yet written
	wake    chan struct{}
	closed  bool
	err     error
}

func (n *Node) serveClient(conn net.Conn, br *bufio.Reader) {
	if !n.trackConn(conn, true) {
		conn.Close()
		return
	}
	defer n.trackConn(conn, false)
	c := &clientConn{n: n, conn: conn, wake: make(chan struct{}, 1)}
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	var inflight sync.WaitGroup
	sem := make(chan struct{}, maxInFlight)
	fr := wire.NewFrameReader(br, n.frameLimit())
	for {
		f, err := fr.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				// A broken frame: say so, then hang up; the stream is
				// no longer in sync.
				c.respondError(0, wire.StatusMalformedFrame, "malformed frame: "+err.Error(), nil)
				n.metrics.clientRequests.WithLabelValues("frame", wire.StatusMalformedFrame.String()).Inc()
			}
			break
		}
		op := f.Op()
		if !op.Known() {
			c.respondError(f.ID, wire.StatusUnknownOp, "unknown operation "+op.String(), nil)
			n.metrics.clientRequests.WithLabelValues("unknown", wire.StatusUnknownOp.String()).Inc()
			continue
		}
		body := slices.Clone(f.Body)
		select {
		case sem <- struct{}{}:
		case <-n.ctx.Done():
		}
		if n.ctx.Err() != nil {
			break
		}
		inflight.Add(1)
		go func(id uint64, op wire.Op, body []byte) {
			defer inflight.Done()
			defer func() { <-sem }()
			c.handle(id, op, body)
		}(f.ID, op, body)
	}
	inflight.Wait()
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.signal()
	<-writerDone
	conn.Close()
}

func (c *clientConn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// send queues a response frame for the writer.
func (c *clientConn) send(frame []byte) {
	c.mu.Lock()
	c.pending = append(c.pending, frame)
	c.mu.Unlock()
	c.signal()
}

// writeLoop writes queued responses, everything queued in one Write.
func (c *clientConn) writeLoop() {
	var buf []byte
	for {
		<-c.wake
		// Let the request goroutines finishing now queue their answers
		// first: one write carries them all.
		runtime.Gosched()
		c.mu.Lock()
		frames, closed := c.pending, c.closed
		c.pending = nil
		c.mu.Unlock()
		buf = buf[:0]
		for _, f := range frames {
			buf = append(buf, f...)
		}
		if len(buf) > 0 {
			_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := c.conn.Write(buf); err != nil {
				// The client is gone; stop reading too.
				c.conn.Close()
			}
		}
		if closed {
			c.mu.Lock()
			left := len(c.pending)
			c.mu.Unlock()
			if left == 0 {
				return
			}
			c.signal()
		}
	}
}

func (c *clientConn) respond(id uint64, v any) {
	frame, err := wire.EncodeFrame(nil, id, uint8(wire.StatusOK), v)
	if err != nil {
		c.respondError(id, wire.StatusInternal, "encoding the response: "+err.Error(), nil)
		return
	}
	if len(frame)-4 > wire.DefaultMaxFrameSize {
		// The client would take it for a broken stream.
		c.respondError(id, wire.StatusTooLarge, fmt.Sprintf("the response of %d bytes exceeds the frame limit of %d bytes; ask for fewer keys", len(frame), wire.DefaultMaxFrameSize), nil)
		return
	}
	c.send(frame)
}

func (c *clientConn) respondError(id uint64, st wire.Status, msg string, leader *nodeInfo) {
	eb := wire.ErrorBody{Code: st, Msg: msg}
	if leader != nil {
		eb.Leader, eb.LeaderAddr = leader.Name, leader.KVAddr
	}
	frame, err := wire.EncodeFrame(nil, id, uint8(st), &eb)
	if err != nil {
		return
	}
	c.send(frame)
}

// respondOpError maps an operation error to a status.
func (c *clientConn) respondOpError(id uint64, op wire.Op, err error) {
	var nl *notLeaderError
	st := wire.StatusInternal
	var leader *nodeInfo
	switch {
	case errors.Is(err, engine.ErrNotFound):
		st = wire.StatusNotFound
	case errors.Is(err, errBadRequest), errors.Is(err, wire.ErrMalformedBody):
		st = wire.StatusBadRequest
	case errors.Is(err, errTooLarge):
		st = wire.StatusTooLarge
	case errors.As(err, &nl):
		st, leader = wire.StatusNotLeader, nl.Leader
	case errors.Is(err, errUnavailable):
		st = wire.StatusUnavailable
	case errors.Is(err, errStopping):
		st = wire.StatusStopping
	}
	c.n.metrics.clientRequests.WithLabelValues(op.String(), st.String()).Inc()
	c.respondError(id, st, err.Error(), leader)
}

func (c *clientConn) handle(id uint64, op wire.Op, body []byte) {
	n := c.n
	ctx, cancel := context.WithCancel(n.ctx)
	defer cancel()
	var resp any
	var err error
	switch op {
	case wire.OpGet:
		var req wire.GetRequest
		if err = wire.Decode(body, &req); err == nil {
			var r wire.GetResponse
			r.Value, r.Version, err = n.get(ctx, req.Key, req.Stale)
			resp = &r
		}
	case wire.OpSet:
		var req wire.SetRequest
		if err = wire.Decode(body, &req); err == nil {
			var r wire.SetResponse
			r.Version, err = n.put(ctx, req.Key, req.Value)
			resp = &r
		}
	case wire.OpDelete:
		var req wire.DeleteRequest
		if err = wire.Decode(body, &req); err == nil {
			var r wire.DeleteResponse
			r.Version, err = n.del(ctx, req.Key)
			resp = &r
		}
	case wire.OpCompareAndSet:
		var req wire.CASRequest
		if err = wire.Decode(body, &req); err == nil {
			var r wire.CASResponse
			r.OK, r.Version, err = n.cas(ctx, req.Key, req.Value, req.Expect)
			resp = &r
		}
	case wire.OpMGet:
		var req wire.MGetRequest
		if err = wire.Decode(body, &req); err == nil {
			resp, err = n.mget(ctx, req)
		}
	case wire.OpMSet:
		var req wire.MSetRequest
		if err = wire.Decode(body, &req); err == nil {
			resp, err = n.mset(ctx, req)
		}
	case wire.OpPing:
		resp = &wire.PingResponse{}
	}
	if err != nil {
		c.respondOpError(id, op, err)
		return
	}
	n.metrics.clientRequests.WithLabelValues(op.String(), wire.StatusOK.String()).Inc()
	c.respond(id, resp)
}

// maxBatchItems bounds the keys of one MGet or MSet: a frame of tiny
// items would otherwise decode into a great deal of memory.
const maxBatchItems = 10000

// groupKeys maps each key to its group, checking every key first: a bad
// key fails the whole request before anything is done.
func (n *Node) groupKeys(keys int, key func(i int) []byte) (map[uint64][]int, error) {
	byGroup := map[uint64][]int{}
	for i := range keys {
		g, err := n.keyGroup(key(i))
		if err != nil {
			return nil, err
		}
		byGroup[g] = append(byGroup[g], i)
	}
	return byGroup, nil
}

// eachGroup runs fn for every group concurrently and returns the first
// error.
func eachGroup(byGroup map[uint64][]int, fn func(g uint64, idx []int) error) error {
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for g, idx := range byGroup {
		wg.Go(func() {
			if err := fn(g, idx); err != nil {
				once.Do(func() { first = err })
			}
		})
	}
	wg.Wait()
	return first
}

// mget reads many keys, the keys of each partition together.
func (n *Node) mget(ctx context.Context, req wire.MGetRequest) (*wire.MGetResponse, error) {
	if len(req.Keys) > maxBatchItems {
		return nil, fmt.Errorf("%w: %d keys in one MGet; at most %d", errBadRequest, len(req.Keys), maxBatchItems)
	}
	byGroup, err := n.groupKeys(len(req.Keys), func(i int) []byte { return req.Keys[i] })
	if err != nil {
		return nil, err
	}
	resp := &wire.MGetResponse{Items: make([]wire.MGetItem, len(req.Keys))}
	err = eachGroup(byGroup, func(g uint64, idx []int) error {
		for _, i := range idx {
			v, ver, err := n.read(ctx, g, req.Keys[i], req.Stale)
			if errors.Is(err, engine.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			resp.Items[i] = wire.MGetItem{Found: true, Value: v, Version: ver}
		}
		return nil
	})
	return resp, err
}

// mset writes many keys: one raft entry per partition, atomic within it.
func (n *Node) mset(ctx context.Context, req wire.MSetRequest) (*wire.MSetResponse, error) {
	if len(req.Items) > maxBatchItems {
		return nil, fmt.Errorf("%w: %d items in one MSet; at most %d", errBadRequest, len(req.Items), maxBatchItems)
	}
	for _, it := range req.Items {
		if err := n.checkValue(it.Value); err != nil {
			return nil, err
		}
	}
	byGroup, err := n.groupKeys(len(req.Items), func(i int) []byte { return req.Items[i].Key })
	if err != nil {
		return nil, err
	}
	resp := &wire.MSetResponse{Versions: make([]uint64, len(req.Items))}
	err = eachGroup(byGroup, func(g uint64, idx []int) error {
		ops := make([]engine.Op, len(idx))
		for j, i := range idx {
			ops[j] = engine.Op{Kind: engine.OpPut, Key: req.Items[i].Key, Value: req.Items[i].Value}
		}
		res, err := n.write(ctx, g, ops)
		if err != nil {
			return err
		}
		for j, i := range idx {
			resp.Versions[i] = res[j].Version
		}
		return nil
	})
	return resp, err
}
