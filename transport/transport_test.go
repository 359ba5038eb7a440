package transport

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

func TestSendReceive(t *testing.T) {
	c := newCluster(t, nil, 1, 2, 3)
	const perPeer = 500
	ids := []uint64{1, 2, 3}
	want := make(map[[2]uint64][]Message)
	for _, from := range ids {
		for _, to := range ids {
			if from == to {
				continue
			}
			for i := range perPeer {
				// Mixed groups and sizes, sent in batches of varying length.
				m := appMsg(uint64(i%64), from, to, uint64(i), bytes.Repeat([]byte{byte(i)}, i%300))
				want[[2]uint64{from, to}] = append(want[[2]uint64{from, to}], m)
			}
		}
	}
	var wg sync.WaitGroup
	for key, msgs := range want {
		wg.Go(func() {
			tr := c.node(key[0]).tr
			for i := 0; i < len(msgs); {
				n := min(1+i%7, len(msgs)-i)
				tr.Send(key[1], msgs[i:i+n])
				i += n
			}
		})
	}
	wg.Wait()
	for _, to := range ids {
		waitFor(t, 10*time.Second, "all messages", func() bool {
			return c.node(to).rec.received.Load() == 2*perPeer
		})
	}
	for key, msgs := range want {
		// Per sender, order is preserved.
		sameMessages(t, c.node(key[1]).rec.from(key[0]), msgs)
	}
	m := c.node(1).tr.Metrics()
	p := m.Peers[2]
	if p.MessagesSent != perPeer || p.MessagesReceived != perPeer || p.MessagesDropped != 0 || p.Connects != 1 {
		t.Errorf("node 1 metrics for peer 2: %+v", p)
	}
	if m.Total.MessagesSent != 2*perPeer || m.Total.MessagesReceived != 2*perPeer {
		t.Errorf("node 1 totals: %+v", m.Total)
	}
	if p.FramesSent == 0 || p.BytesSent == 0 || p.FramesReceived == 0 || p.BytesReceived == 0 {
		t.Errorf("frames and bytes not counted: %+v", p)
	}
}

// TestSendCoalesces: what piles up while the sender is busy goes out as few
// frames in one Write.
func TestSendCoalesces(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1 := c.node(1)
	const n = 3000
	for i := range n {
		n1.tr.Send(2, []Message{appMsg(uint64(i%64), 1, 2, uint64(i), make([]byte, 64))})
	}
	waitFor(t, 10*time.Second, "delivery", func() bool { return c.node(2).rec.received.Load() == n })
	p := n1.tr.Metrics().Peers[2]
	t.Logf("%d messages in %d frames, %d writes", p.MessagesSent, p.FramesSent, p.Writes)
	// The first dial alone takes long enough for most of them to queue.
	if p.Writes > n/10 || p.FramesSent > n/10 {
		t.Errorf("%d messages took %d writes and %d frames; want coalescing", n, p.Writes, p.FramesSent)
	}
}

func TestLargeMessageCompressed(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	big := bytes.Repeat([]byte("a compressible raft entry "), 40<<10) // ~1 MiB
	m := appMsg(7, 1, 2, 100, big)
	n1.tr.Send(2, []Message{m})
	waitFor(t, 5*time.Second, "delivery", func() bool { return n2.rec.received.Load() == 1 })
	sameMessages(t, n2.rec.from(1), []Message{m})
	p := n1.tr.Metrics().Peers[2]
	if p.BytesSent >= uint64(len(big))/4 {
		t.Errorf("a %d-byte compressible message took %d bytes on the wire", len(big), p.BytesSent)
	}

	// Incompressible data goes raw, not bigger.
	raw := appMsg(8, 1, 2, 101, randomBytes(9, 256<<10))
	n1.tr.Send(2, []Message{raw})
	waitFor(t, 5*time.Second, "delivery", func() bool { return n2.rec.received.Load() == 2 })
	sameMessages(t, n2.rec.from(1)[1:], []Message{raw})
	size := uint64(proto.Size(raw.Msg))
	if got := n1.tr.Metrics().Peers[2].BytesSent - p.BytesSent; got > size+32 {
		t.Errorf("incompressible message of %d bytes took %d on the wire", size, got)
	}
}

// TestBacklogWrittenInBoundedWrites: a backlog of large messages goes out
// in several bounded Writes, not one huge buffer, and all of it arrives.
func TestBacklogWrittenInBoundedWrites(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	data := randomBytes(11, 1<<20)
	const n = 20
	for i := range n {
		n1.tr.Send(2, []Message{appMsg(uint64(i), 1, 2, uint64(i), data)})
	}
	waitFor(t, 10*time.Second, "delivery", func() bool { return n2.rec.received.Load() == n })
	p := n1.tr.Metrics().Peers[2]
	// Each Write holds at most maxWriteBytes plus one message.
	if want := uint64(n << 20 / (maxWriteBytes + 1<<20)); p.Writes < want {
		t.Fatalf("%d MiB went out in %d writes, want at least %d", n, p.Writes, want)
	}
	if p.MessagesDropped != 0 {
		t.Fatalf("%d dropped", p.MessagesDropped)
	}
}

// sendTimed sends n heartbeats one Send at a time and returns the slowest
// call and the average.
func sendTimed(tr *Transport, to uint64, n int) (worst, avg time.Duration) {
	start := time.Now()
	for i := range n {
		s := time.Now()
		tr.Send(to, []Message{heartbeat(uint64(i%64), tr.cfg.NodeID, to)})
		worst = max(worst, time.Since(s))
	}
	return worst, time.Since(start) / time.Duration(n)
}

// checkSendFast fails if Send looked like it waited for the network: any
// wait would be at least a dial or write timeout (hundreds of ms).
func checkSendFast(t *testing.T, worst, avg time.Duration) {
	t.Helper()
	t.Logf("Send to a dead peer: worst %v, average %v", worst, avg)
	if worst > 100*time.Millisecond || avg > 200*time.Microsecond {
		t.Errorf("Send blocked: worst %v, average %v", worst, avg)
	}
}

func TestPeerDown(t *testing.T) {
	c := newCluster(t, nil, 1)
	n1 := c.node(1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.setAddr(2, ln.Addr().String())
	ln.Close() // nothing listens there now: connection refused

	const n = 20000 // well over QueueSize
	worst, avg := sendTimed(n1.tr, 2, n)
	checkSendFast(t, worst, avg)
	waitFor(t, 5*time.Second, "every message dropped", func() bool {
		return n1.tr.Metrics().Peers[2].MessagesDropped == n
	})
	if got := n1.rec.unreachableCount(2); got != 1 {
		t.Fatalf("PeerUnreachable called %d times in one failure episode, want 1", got)
	}
	p := n1.tr.Metrics().Peers[2]
	if p.MessagesSent != 0 || p.ConnectFailures == 0 {
		t.Fatalf("metrics: %+v", p)
	}

	// The peer comes up; later messages get through.
	n2 := c.start(2)
	waitFor(t, 5*time.Second, "delivery after the peer came up", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		return n2.rec.received.Load() > 0
	})
	// It goes down again: a new episode, a new report.
	c.stop(2)
	waitFor(t, 5*time.Second, "a second unreachable report", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		return n1.rec.unreachableCount(2) == 2
	})
}

// TestPeerHung: the peer's host accepts connections but its process never
// answers (stopped, overloaded). Dials time out; Send stays instant.
func TestPeerHung(t *testing.T) {
	c := newCluster(t, func(id uint64, cfg *Config) { cfg.DialTimeout = 100 * time.Millisecond }, 1)
	n1 := c.node(1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	defer func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	}()
	c.setAddr(2, ln.Addr().String())

	worst, avg := sendTimed(n1.tr, 2, 5000)
	checkSendFast(t, worst, avg)
	waitFor(t, 5*time.Second, "the handshake to time out", func() bool {
		return n1.tr.Metrics().Peers[2].ConnectFailures > 0
	})
	select {
	case id := <-n1.rec.unreachable:
		if id != 2 {
			t.Fatalf("unreachable %d", id)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no PeerUnreachable")
	}
}

// rawAcceptor accepts connections on a loopback listener, answers the
// handshake with OK and then runs serve on each (until the test ends).
type rawAcceptor struct {
	ln       net.Listener
	stop     chan struct{} // closed at cleanup; serve funcs return then
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
	accepted int
}

func newRawAcceptor(t *testing.T, serve func(conn net.Conn, stop <-chan struct{})) *rawAcceptor {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &rawAcceptor{ln: ln, stop: make(chan struct{})}
	a.wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			a.mu.Lock()
			a.conns = append(a.conns, conn)
			a.accepted++
			a.mu.Unlock()
			a.wg.Go(func() {
				hdr := make([]byte, len(DefaultPreamble)+handshakeSize)
				if _, err := io.ReadFull(conn, hdr); err != nil {
					return
				}
				if _, err := conn.Write(appendStatus(nil, statusOK, "")); err != nil {
					return
				}
				serve(conn, a.stop)
			})
		}
	})
	t.Cleanup(func() {
		close(a.stop)
		ln.Close()
		a.mu.Lock()
		for _, c := range a.conns {
			c.Close()
		}
		a.mu.Unlock()
		a.wg.Wait()
	})
	return a
}

func (a *rawAcceptor) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.accepted
}

// TestStuckPeer: the peer handshakes but never reads. Once the socket
// buffers fill, the write times out, the connection is dropped, the batch
// is dropped and counted, and the sender reconnects.
func TestStuckPeer(t *testing.T) {
	c := newCluster(t, func(id uint64, cfg *Config) { cfg.WriteTimeout = 200 * time.Millisecond }, 1)
	n1 := c.node(1)
	stuck := newRawAcceptor(t, func(conn net.Conn, stop <-chan struct{}) {
		<-stop // never reads
	})
	c.setAddr(2, stuck.ln.Addr().String())
	data := randomBytes(3, 1<<20) // incompressible
	waitFor(t, 15*time.Second, "a write timeout", func() bool {
		w, _ := sendTimed(n1.tr, 2, 1) // heartbeats stay instant meanwhile
		if w > 100*time.Millisecond {
			t.Fatalf("Send took %v behind a stuck peer", w)
		}
		n1.tr.Send(2, []Message{appMsg(1, 1, 2, 1, data)})
		time.Sleep(5 * time.Millisecond)
		return n1.tr.Metrics().Peers[2].MessagesDropped > 0 && stuck.count() >= 2
	})
	if n1.rec.unreachableCount(2) == 0 {
		t.Fatal("no PeerUnreachable after a write timeout")
	}
}

// TestPeerRestart: the peer dies (its connection ends under the sender) and
// comes back at a new address; the sender notices, reconnects with backoff,
// and later messages get through.
func TestPeerRestart(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1 := c.node(1)
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
	waitFor(t, 5*time.Second, "first delivery", func() bool { return c.node(2).rec.received.Load() == 1 })

	c.stop(2)
	for range 50 {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(time.Millisecond)
	}
	waitFor(t, 5*time.Second, "drops while the peer is down", func() bool {
		return n1.tr.Metrics().Peers[2].MessagesDropped > 0
	})
	n2 := c.start(2)
	waitFor(t, 5*time.Second, "delivery after restart", func() bool {
		n1.tr.Send(2, []Message{heartbeat(2, 1, 2)})
		return n2.rec.received.Load() > 0
	})
	p := n1.tr.Metrics().Peers[2]
	if p.Connects < 2 || p.Reconnects < 1 {
		t.Fatalf("metrics after a restart: %+v", p)
	}
}

// TestBadInboundStreams sends broken streams to a node by hand. Each is
// refused or cut off, counted, and never reaches the Handler; afterwards a
// real peer still gets through.
func TestBadInboundStreams(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n2 := c.node(2)
	addr := n2.ln.Addr().String()
	good := handshake{version: protocolVersion, kind: kindMessages, cluster: 42, from: 1, to: 2}
	with := func(f func(*handshake)) handshake { h := good; f(&h); return h }
	validFrame, _ := encode(t, []Message{heartbeat(1, 1, 2)}, defaultMaxFrameSize, -1)

	refusals := []struct {
		name string
		hs   handshake
		want statusCode
	}{
		{"wrong cluster id", with(func(h *handshake) { h.cluster = 43 }), statusClusterMismatch},
		{"zero cluster id", with(func(h *handshake) { h.cluster = 0 }), statusClusterMismatch},
		{"wrong target node", with(func(h *handshake) { h.to = 3 }), statusWrongNode},
		{"unknown version", with(func(h *handshake) { h.version = 9 }), statusBadVersion},
		{"unknown kind", with(func(h *handshake) { h.kind = 7 }), statusBadHandshake},
		{"sender id 0", with(func(h *handshake) { h.from = 0 }), statusBadHandshake},
		{"sender is the acceptor", with(func(h *handshake) { h.from = 2 }), statusBadHandshake},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := n2.tr.Metrics().RejectedConns
			conn, code, msg, err := rawDial(t, addr, tc.hs)
			if err != nil || code != tc.want {
				t.Fatalf("status %d %q %v, want %d", code, msg, err, tc.want)
			}
			t.Logf("refused: %s", msg)
			waitClosed(t, conn)
			if got := n2.tr.Metrics().RejectedConns; got != before+1 {
				t.Fatalf("RejectedConns %d -> %d", before, got)
			}
		})
	}

	cutoffs := []struct {
		name string
		send []byte
		// closeAfter: the test closes its side after sending (the peer died
		// mid-frame) instead of waiting for the node to cut it off.
		closeAfter bool
	}{
		{"oversized declared length", frameBytes(defaultMaxFrameSize+1, 0, nil), false},
		{"declared 4 GiB", frameBytes(0xffffffff, 0, nil), false},
		{"unknown flags", frameBytes(1, 0x40, []byte{0}), false},
		{"undecodable payload", frameBytes(4, 0, []byte{5, 2, 0xff, 0xff}), false},
		{"garbage s2 block", frameBytes(4, flagS2, []byte{0xff, 0xff, 0xff, 0xff}), false},
		{"half-written frame", validFrame[:len(validFrame)/2], true},
		{"header only", validFrame[:frameHeaderSize], true},
	}
	for _, tc := range cutoffs {
		t.Run(tc.name, func(t *testing.T) {
			before := n2.tr.Metrics().Peers[1].FrameErrors
			received := n2.rec.received.Load()
			conn, code, msg, err := rawDial(t, addr, good)
			if err != nil || code != statusOK {
				t.Fatalf("handshake: %d %q %v", code, msg, err)
			}
			if _, err := conn.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.closeAfter {
				conn.Close()
			} else {
				waitClosed(t, conn)
			}
			waitFor(t, 5*time.Second, "the frame error to be counted", func() bool {
				return n2.tr.Metrics().Peers[1].FrameErrors == before+1
			})
			if got := n2.rec.received.Load(); got != received {
				t.Fatalf("a bad stream delivered %d messages", got-received)
			}
		})
	}

	t.Run("garbage after the preamble", func(t *testing.T) {
		before := n2.tr.Metrics().RejectedConns
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write(append([]byte(DefaultPreamble), randomBytes(5, 4096)...)); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, conn)
		waitFor(t, 5*time.Second, "the rejection to be counted", func() bool {
			return n2.tr.Metrics().RejectedConns == before+1
		})
	})
	t.Run("wrong preamble", func(t *testing.T) {
		before := n2.tr.Metrics().RejectedConns
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("GET / HTTP/1.1\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		waitClosed(t, conn)
		if got := n2.tr.Metrics().RejectedConns; got != before+1 {
			t.Fatalf("RejectedConns %d -> %d", before, got)
		}
	})
	t.Run("valid frames still work", func(t *testing.T) {
		received := n2.rec.received.Load()
		conn, code, _, err := rawDial(t, addr, good)
		if err != nil || code != statusOK {
			t.Fatal(code, err)
		}
		// An empty frame (no messages) is valid, then a real one.
		if _, err := conn.Write(append(frameBytes(0, 0, nil), validFrame...)); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "delivery", func() bool { return n2.rec.received.Load() == received+1 })
		c.node(1).tr.Send(2, []Message{heartbeat(1, 1, 2)})
		waitFor(t, 5*time.Second, "delivery from a real peer", func() bool { return n2.rec.received.Load() == received+2 })
	})
}

// TestClusterMismatch: nodes of different clusters never exchange
// messages, and the dialer does not retry in a hot loop.
func TestClusterMismatch(t *testing.T) {
	c := newCluster(t, func(id uint64, cfg *Config) {
		cfg.BackoffMax = 200 * time.Millisecond
		if id == 2 {
			cfg.ClusterID = func() uint64 { return 43 }
		}
	}, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	start := time.Now()
	for time.Since(start) < 700*time.Millisecond {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(2 * time.Millisecond)
	}
	p := n1.tr.Metrics().Peers[2]
	t.Logf("connect attempts in 700ms: %d", p.ConnectFailures)
	// A refusal backs off to BackoffMax (jittered to ≥100ms) at once.
	if p.ConnectFailures == 0 || p.ConnectFailures > 10 {
		t.Fatalf("%d connect attempts in 700ms", p.ConnectFailures)
	}
	if n2.rec.received.Load() != 0 || p.MessagesSent != 0 {
		t.Fatal("messages crossed clusters")
	}
	if got := n1.rec.unreachableCount(2); got != 1 {
		t.Fatalf("PeerUnreachable %d times, want 1", got)
	}
	if n2.tr.Metrics().RejectedConns == 0 {
		t.Fatal("acceptor did not count the rejection")
	}
}

// TestClusterIDUnknown: until a node knows its cluster id it neither dials
// nor accepts; once both know, traffic flows.
func TestClusterIDUnknown(t *testing.T) {
	var id1, id2 atomic.Uint64
	c := newCluster(t, func(id uint64, cfg *Config) {
		cfg.ClusterID = map[uint64]func() uint64{1: id1.Load, 2: id2.Load}[id]
	}, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	for range 20 {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(2 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "drops", func() bool { return n1.tr.Metrics().Peers[2].MessagesDropped == 20 })
	if n2.tr.Metrics().RejectedConns != 0 {
		t.Fatal("a node that does not know its cluster id dialed")
	}
	if n1.rec.unreachableCount(2) != 1 {
		t.Fatal("no PeerUnreachable while the cluster id is unknown")
	}

	// Node 1 knows, node 2 does not: node 2 refuses.
	id1.Store(42)
	waitFor(t, 5*time.Second, "node 2 to refuse", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(2 * time.Millisecond)
		return n2.tr.Metrics().RejectedConns > 0
	})
	if n2.rec.received.Load() != 0 {
		t.Fatal("a node that does not know its cluster id accepted messages")
	}

	// Both know.
	id2.Store(42)
	waitFor(t, 5*time.Second, "delivery", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(2 * time.Millisecond)
		return n2.rec.received.Load() > 0
	})
}

// TestWrongTargetNode: an address that now belongs to another node (a stale
// membership view) is refused, not silently used.
func TestWrongTargetNode(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	c.setAddr(3, n2.ln.Addr().String())
	n1.tr.Send(3, []Message{heartbeat(1, 1, 3)})
	waitFor(t, 5*time.Second, "the refusal", func() bool {
		return n1.tr.Metrics().Peers[3].ConnectFailures > 0 && n1.tr.Metrics().Peers[3].MessagesDropped == 1
	})
	if n2.rec.received.Load() != 0 || n2.tr.Metrics().RejectedConns == 0 {
		t.Fatal("a message for node 3 reached node 2")
	}
}

func TestBlockUnblock(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
	n2.tr.Send(1, []Message{heartbeat(1, 2, 1)})
	waitFor(t, 5*time.Second, "warm-up", func() bool {
		return n1.rec.received.Load() == 1 && n2.rec.received.Load() == 1
	})

	n1.tr.Block(2)
	n1.tr.Block(2) // idempotent
	for range 30 {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		n2.tr.Send(1, []Message{heartbeat(1, 2, 1)})
		time.Sleep(3 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if a, b := n1.rec.received.Load(), n2.rec.received.Load(); a != 1 || b != 1 {
		t.Fatalf("messages crossed a block: node 1 got %d, node 2 got %d", a-1, b-1)
	}
	if d := n1.tr.Metrics().Peers[2].MessagesDropped; d != 30 {
		t.Fatalf("node 1 dropped %d of 30 messages to a blocked peer", d)
	}
	if got := n1.rec.unreachableCount(2); got != 1 {
		t.Fatalf("PeerUnreachable %d times for a blocked peer, want 1", got)
	}
	if n2.tr.Metrics().Peers[1].MessagesDropped == 0 {
		t.Fatal("node 2's messages to the blocking node were not dropped")
	}

	n1.tr.Unblock(2)
	n1.tr.Unblock(2)
	waitFor(t, 5*time.Second, "traffic both ways after Unblock", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		n2.tr.Send(1, []Message{heartbeat(1, 2, 1)})
		time.Sleep(2 * time.Millisecond)
		return n1.rec.received.Load() > 1 && n2.rec.received.Load() > 1
	})
}

func TestRemovePeer(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
	waitFor(t, 5*time.Second, "delivery", func() bool { return n2.rec.received.Load() == 1 })

	n1.tr.RemovePeer(2)
	n1.tr.RemovePeer(2) // no-op
	n1.tr.mu.Lock()
	_, ok := n1.tr.mu.peers[2]
	n1.tr.mu.Unlock()
	if ok {
		t.Fatal("peer still registered")
	}
	// A later Send starts a new sender with a new connection.
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
	waitFor(t, 5*time.Second, "delivery after re-adding", func() bool { return n2.rec.received.Load() == 2 })
	if p := n1.tr.Metrics().Peers[2]; p.Connects != 2 {
		t.Fatalf("Connects = %d, want 2", p.Connects)
	}
}

func TestUseAfterClose(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1 := c.node(1)
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
	c.stop(1)
	if err := n1.tr.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	n1.tr.Send(2, []Message{heartbeat(1, 1, 2)}) // no panic, no goroutine
	if err := n1.tr.SendSnapshot(t.Context(), 2, heartbeat(1, 1, 2), func(io.Writer) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("SendSnapshot after Close: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := n1.tr.Serve(ln); !errors.Is(err, ErrClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
	a, b := net.Pipe()
	n1.tr.HandleConn(a)
	if _, err := b.Write([]byte{1}); err == nil {
		t.Fatal("HandleConn after Close left the connection open")
	}
	n1.tr.Block(2)
	n1.tr.Unblock(2)
	n1.tr.RemovePeer(2)
}

// TestHandleConnBehindMux serves the transport behind the caller's own
// listener, which reads the preamble (a custom one) and dispatches.
func TestHandleConnBehindMux(t *testing.T) {
	const pre = "MUXRAFT\n"
	c := newCluster(t, func(id uint64, cfg *Config) { cfg.Preamble = []byte(pre) }, 1)
	rec := newRecorder()
	tr, err := New(c.config(2, rec))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.setAddr(2, ln.Addr().String())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				b := make([]byte, len(pre))
				if _, err := io.ReadFull(conn, b); err != nil || string(b) != pre {
					_, _ = conn.Write([]byte("other protocol\n"))
					conn.Close()
					return
				}
				tr.HandleConn(conn)
			})
		}
	})
	defer func() {
		ln.Close()
		tr.Close()
		wg.Wait()
	}()
	msgs := []Message{heartbeat(1, 1, 2), appMsg(2, 1, 2, 5, []byte("x"))}
	c.node(1).tr.Send(2, msgs)
	waitFor(t, 5*time.Second, "delivery through the mux", func() bool { return rec.received.Load() == 2 })
	sameMessages(t, rec.from(1), msgs)
}

// TestInboundFrameLimit: a node with a small MaxFrameSize cuts off a peer
// whose frame exceeds it, counting it, and the sender keeps working for
// smaller messages after reconnecting.
func TestInboundFrameLimit(t *testing.T) {
	c := newCluster(t, func(id uint64, cfg *Config) {
		if id == 2 {
			cfg.MaxFrameSize = 16 << 10
		}
	}, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	n1.tr.Send(2, []Message{appMsg(1, 1, 2, 1, randomBytes(1, 64<<10))})
	waitFor(t, 5*time.Second, "the frame error", func() bool { return n2.tr.Metrics().Peers[1].FrameErrors == 1 })
	waitFor(t, 5*time.Second, "small messages after the cut", func() bool {
		n1.tr.Send(2, []Message{heartbeat(1, 1, 2)})
		time.Sleep(2 * time.Millisecond)
		return n2.rec.received.Load() > 0
	})
}
