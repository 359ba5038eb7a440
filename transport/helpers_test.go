package transport

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a Handler that records what it is given.
type recorder struct {
	mu struct {
		sync.Mutex
		msgs        map[uint64][]Message // by sender
		frames      int
		unreachable map[uint64]int
	}
	received    atomic.Int64
	unreachable chan uint64 // every PeerUnreachable, buffered
	// countOnly makes HandleMessages only count (for benchmarks).
	countOnly atomic.Bool
	// snapshot, if set, handles snapshots; otherwise they are read to the
	// end and accepted.
	snapshot func(ctx context.Context, from uint64, m Message, body io.Reader) error
}

func newRecorder() *recorder {
	r := &recorder{unreachable: make(chan uint64, 1024)}
	r.mu.msgs = make(map[uint64][]Message)
	r.mu.unreachable = make(map[uint64]int)
	return r
}

func (r *recorder) HandleMessages(from uint64, msgs []Message) {
	if r.countOnly.Load() {
		r.received.Add(int64(len(msgs)))
		return
	}
	r.mu.Lock()
	r.mu.msgs[from] = append(r.mu.msgs[from], msgs...)
	r.mu.frames++
	r.mu.Unlock()
	r.received.Add(int64(len(msgs)))
}

func (r *recorder) HandleSnapshot(ctx context.Context, from uint64, m Message, body io.Reader) error {
	if r.snapshot != nil {
		return r.snapshot(ctx, from, m, body)
	}
	_, err := io.Copy(io.Discard, body)
	return err
}

func (r *recorder) PeerUnreachable(to uint64) {
	r.mu.Lock()
	r.mu.unreachable[to]++
	r.mu.Unlock()
	select {
	case r.unreachable <- to:
	default:
	}
}

func (r *recorder) from(peer uint64) []Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Message(nil), r.mu.msgs[peer]...)
}

func (r *recorder) unreachableCount(peer uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mu.unreachable[peer]
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testLogger discards, unless TRANSPORT_TEST_LOG is set (then it logs to
// stderr at debug level).
func testLogger() *slog.Logger {
	if os.Getenv("TRANSPORT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// cluster is a set of transports on loopback that resolve each other.
type cluster struct {
	t     testing.TB
	id    atomic.Uint64 // the cluster id every node reports, unless overridden
	mu    sync.Mutex
	addrs map[uint64]string
	nodes map[uint64]*testNode
	// tweak, if set, adjusts each node's config.
	tweak func(id uint64, cfg *Config)
}

type testNode struct {
	id    uint64
	tr    *Transport
	rec   *recorder
	ln    net.Listener
	serve chan error
}

func newCluster(t testing.TB, tweak func(id uint64, cfg *Config), ids ...uint64) *cluster {
	c := &cluster{t: t, addrs: make(map[uint64]string), nodes: make(map[uint64]*testNode), tweak: tweak}
	c.id.Store(42)
	t.Cleanup(c.closeAll)
	for _, id := range ids {
		c.start(id)
	}
	return c
}

func (c *cluster) resolve(id uint64) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	a, ok := c.addrs[id]
	if !ok {
		return "", fmt.Errorf("node %d unknown", id)
	}
	return a, nil
}

func (c *cluster) setAddr(id uint64, addr string) {
	c.mu.Lock()
	c.addrs[id] = addr
	c.mu.Unlock()
}

func (c *cluster) config(id uint64, h Handler) Config {
	cfg := Config{
		NodeID:       id,
		ClusterID:    c.id.Load,
		Resolve:      c.resolve,
		Handler:      h,
		Logger:       testLogger().With("test_node", id),
		DialTimeout:  time.Second,
		BackoffMin:   5 * time.Millisecond,
		BackoffMax:   50 * time.Millisecond,
		WriteTimeout: 2 * time.Second,
	}
	if c.tweak != nil {
		c.tweak(id, &cfg)
	}
	return cfg
}

// start starts node id listening on a fresh loopback port.
func (c *cluster) start(id uint64) *testNode {
	c.t.Helper()
	rec := newRecorder()
	tr, err := New(c.config(id, rec))
	if err != nil {
		c.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.t.Fatal(err)
	}
	n := &testNode{id: id, tr: tr, rec: rec, ln: ln, serve: make(chan error, 1)}
	go func() { n.serve <- tr.Serve(ln) }()
	c.mu.Lock()
	c.addrs[id] = ln.Addr().String()
	c.nodes[id] = n
	c.mu.Unlock()
	return n
}

func (c *cluster) node(id uint64) *testNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// stop closes node id and checks that Serve returned ErrClosed.
func (c *cluster) stop(id uint64) {
	c.t.Helper()
	c.mu.Lock()
	n := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.tr.Close(); err != nil {
		c.t.Errorf("close node %d: %v", id, err)
	}
	select {
	case err := <-n.serve:
		if err != ErrClosed {
			c.t.Errorf("node %d: Serve returned %v, want ErrClosed", id, err)
		}
	case <-time.After(5 * time.Second):
		c.t.Errorf("node %d: Serve did not return after Close", id)
	}
}

func (c *cluster) closeAll() {
	c.mu.Lock()
	var ids []uint64
	for id := range c.nodes {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		c.stop(id)
	}
}

// rawDial opens a connection to addr and writes the preamble and the given
// handshake; it returns the connection and the status the acceptor sent.
func rawDial(t testing.TB, addr string, hs handshake) (net.Conn, statusCode, string, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	buf := appendHandshake([]byte(DefaultPreamble), hs)
	if _, err := conn.Write(buf); err != nil {
		return conn, 0, "", err
	}
	code, msg, err := readStatus(conn)
	return conn, code, msg, err
}

// waitClosed waits until the peer closes conn (a read returns an error).
func waitClosed(t testing.TB, conn net.Conn) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		_, err := conn.Read(buf)
		if err == nil {
			continue
		}
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatal("the peer did not close the connection")
		}
		return
	}
}
