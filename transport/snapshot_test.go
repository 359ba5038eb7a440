package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"
)

func snapMsg(group, from, to, index uint64) Message {
	return Message{Group: group, Msg: &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(from), To: proto.Uint64(to), Term: proto.Uint64(4),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
			Index: proto.Uint64(index), Term: proto.Uint64(4),
			ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}},
		}},
	}}
}

// snapBody is a body of about n bytes, half compressible, half not, written
// in odd-sized pieces so chunk boundaries fall everywhere.
func snapBody(n int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < n; i++ {
		if i%2 == 0 {
			b.Write(bytes.Repeat([]byte("key-value "), 10_000))
		} else {
			b.Write(randomBytes(uint64(i), 77_777))
		}
	}
	return b.Bytes()[:n]
}

func writeInPieces(data []byte) func(io.Writer) error {
	return func(w io.Writer) error {
		for i, sz := 0, 1; i < len(data); sz = sz*3%65_537 + 1 {
			end := min(i+sz, len(data))
			if _, err := w.Write(data[i:end]); err != nil {
				return err
			}
			i = end
		}
		return nil
	}
}

// snapshotResult is what a receiving handler saw.
type snapshotResult struct {
	from uint64
	m    Message
	body []byte
	err  error // from reading body
}

// capture makes a handler that records the stream and then returns ret.
func capture(ret error) (func(context.Context, uint64, Message, io.Reader) error, chan snapshotResult) {
	ch := make(chan snapshotResult, 16)
	return func(ctx context.Context, from uint64, m Message, body io.Reader) error {
		b, err := io.ReadAll(body)
		ch <- snapshotResult{from: from, m: m, body: b, err: err}
		if err != nil {
			return err
		}
		return ret
	}, ch
}

func TestSnapshotRoundTrip(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	h, got := capture(nil)
	n2.rec.snapshot = h
	for _, size := range []int{0, 1, snapshotChunkSize, 3<<20 + 17} {
		data := snapBody(size)
		m := snapMsg(9, 1, 2, 1000)
		if err := n1.tr.SendSnapshot(t.Context(), 2, m, writeInPieces(data)); err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		r := <-got
		if r.err != nil || r.from != 1 || r.m.Group != 9 || !proto.Equal(r.m.Msg, m.Msg) {
			t.Fatalf("%d bytes: received %+v", size, r)
		}
		if sha256.Sum256(r.body) != sha256.Sum256(data) {
			t.Fatalf("%d bytes: body differs (got %d bytes)", size, len(r.body))
		}
	}
	p1, p2 := n1.tr.Metrics().Peers[2], n2.tr.Metrics().Peers[1]
	if p1.SnapshotsSent != 4 || p2.SnapshotsReceived != 4 || p1.SnapshotBytesSent != p2.SnapshotBytesReceived {
		t.Fatalf("metrics: sender %+v, receiver %+v", p1, p2)
	}
}

// TestSnapshotReceiverVerdicts: what the receiver's handler returns is what
// the sender gets, whether it read the body or not.
func TestSnapshotReceiverVerdicts(t *testing.T) {
	tests := []struct {
		name    string
		handler func(ctx context.Context, from uint64, m Message, body io.Reader) error
		size    int
		want    error  // nil: success
		wantMsg string // in the error
	}{
		{
			name: "error after reading everything",
			handler: func(_ context.Context, _ uint64, _ Message, body io.Reader) error {
				_, _ = io.Copy(io.Discard, body)
				return errors.New("checksum mismatch at index 1000")
			},
			size: 1 << 20, want: ErrSnapshotRejected, wantMsg: "checksum mismatch at index 1000",
		},
		{
			name: "error after reading part",
			handler: func(_ context.Context, _ uint64, _ Message, body io.Reader) error {
				_, _ = io.CopyN(io.Discard, body, 100_000)
				return errors.New("disk full")
			},
			size: 8 << 20, want: ErrSnapshotRejected, wantMsg: "disk full",
		},
		{
			name: "error without reading",
			handler: func(context.Context, uint64, Message, io.Reader) error {
				return errors.New("snapshot is stale")
			},
			size: 16 << 20, want: ErrSnapshotRejected, wantMsg: "snapshot is stale",
		},
		{
			name: "success without reading everything",
			handler: func(_ context.Context, _ uint64, _ Message, body io.Reader) error {
				_, err := io.CopyN(io.Discard, body, 1000)
				return err
			},
			size: 16 << 20,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCluster(t, nil, 1, 2)
			c.node(2).rec.snapshot = tc.handler
			data := snapBody(tc.size)
			start := time.Now()
			err := c.node(1).tr.SendSnapshot(t.Context(), 2, snapMsg(1, 1, 2, 5), writeInPieces(data))
			t.Logf("SendSnapshot returned after %v: %v", time.Since(start), err)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("got %v, want %v with %q", err, tc.want, tc.wantMsg)
			}
			if m := c.node(2).tr.Metrics().Peers[1]; m.SnapshotsReceiveFailed != 1 {
				t.Fatalf("receiver metrics: %+v", m)
			}
			if m := c.node(1).tr.Metrics().Peers[2]; m.SnapshotsSendFailed != 1 {
				t.Fatalf("sender metrics: %+v", m)
			}
		})
	}
}

// TestSnapshotSenderFails: a body that fails part-way aborts the stream; the
// receiver's body reader reports truncation, not a clean end.
func TestSnapshotSenderFails(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	h, got := capture(nil)
	c.node(2).rec.snapshot = h
	boom := errors.New("engine iterator failed")
	err := c.node(1).tr.SendSnapshot(t.Context(), 2, snapMsg(1, 1, 2, 5), func(w io.Writer) error {
		if _, err := w.Write(snapBody(1 << 20)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("SendSnapshot: %v, want the body's error", err)
	}
	r := <-got
	if !errors.Is(r.err, ErrSnapshotTruncated) || errors.Is(r.err, io.EOF) {
		t.Fatalf("receiver's body read ended with %v, want ErrSnapshotTruncated", r.err)
	}
	waitFor(t, 5*time.Second, "the failure to be counted", func() bool {
		return c.node(2).tr.Metrics().Peers[1].SnapshotsReceiveFailed == 1
	})
}

// TestSnapshotSenderDiesMidStream: a sender that vanishes mid-chunk (by
// hand, on the wire) leaves the receiver with ErrSnapshotTruncated.
func TestSnapshotSenderDiesMidStream(t *testing.T) {
	c := newCluster(t, nil, 2)
	h, got := capture(nil)
	c.node(2).rec.snapshot = h
	var scratch []byte
	header, _ := encode(t, []Message{snapMsg(1, 1, 2, 5)}, defaultMaxFrameSize, -1)
	chunk := appendFrame(nil, randomBytes(1, 10_000), -1, &scratch)
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"between chunks", append(append([]byte(nil), header...), chunk...)},
		{"inside a chunk", append(append([]byte(nil), header...), chunk[:5000]...)},
		{"inside a chunk header", append(append([]byte(nil), header...), chunk[:3]...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, code, _, err := rawDial(t, c.node(2).ln.Addr().String(),
				handshake{version: protocolVersion, kind: kindSnapshot, cluster: 42, from: 1, to: 2})
			if err != nil || code != statusOK {
				t.Fatal(code, err)
			}
			if _, err := conn.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			conn.Close()
			select {
			case r := <-got:
				if !errors.Is(r.err, ErrSnapshotTruncated) {
					t.Fatalf("body ended with %v, want ErrSnapshotTruncated", r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("handler not called")
			}
		})
	}
	t.Run("bad header frame", func(t *testing.T) {
		conn, code, _, err := rawDial(t, c.node(2).ln.Addr().String(),
			handshake{version: protocolVersion, kind: kindSnapshot, cluster: 42, from: 1, to: 2})
		if err != nil || code != statusOK {
			t.Fatal(code, err)
		}
		two, _ := encode(t, []Message{heartbeat(1, 1, 2), heartbeat(1, 1, 2)}, defaultMaxFrameSize, -1)
		if _, err := conn.Write(two); err != nil {
			t.Fatal(err)
		}
		code, msg, err := readStatus(conn)
		if err != nil || code != statusFailed || !strings.Contains(msg, "2 messages") {
			t.Fatalf("verdict %d %q %v", code, msg, err)
		}
	})
}

// TestSnapshotBlock: blocking the peer cuts an in-flight stream on either
// side and refuses new ones.
func TestSnapshotBlock(t *testing.T) {
	for _, side := range []string{"sender blocks", "receiver blocks"} {
		t.Run(side, func(t *testing.T) {
			c := newCluster(t, nil, 1, 2)
			n1, n2 := c.node(1), c.node(2)
			started := make(chan struct{})
			var once sync.Once
			recvErr := make(chan error, 1)
			n2.rec.snapshot = func(ctx context.Context, _ uint64, _ Message, body io.Reader) error {
				buf := make([]byte, 64<<10)
				for {
					_, err := body.Read(buf)
					once.Do(func() { close(started) })
					if err != nil {
						recvErr <- err
						return err
					}
					time.Sleep(time.Millisecond) // a slow installer
				}
			}
			errc := make(chan error, 1)
			go func() {
				errc <- n1.tr.SendSnapshot(t.Context(), 2, snapMsg(1, 1, 2, 5), func(w io.Writer) error {
					chunk := randomBytes(7, 64<<10)
					for {
						if _, err := w.Write(chunk); err != nil {
							return err
						}
					}
				})
			}()
			<-started
			if side == "sender blocks" {
				n1.tr.Block(2)
			} else {
				n2.tr.Block(1)
			}
			select {
			case err := <-errc:
				if side == "sender blocks" && !errors.Is(err, ErrBlocked) {
					t.Fatalf("SendSnapshot: %v, want ErrBlocked", err)
				}
				if err == nil {
					t.Fatal("SendSnapshot succeeded across a block")
				}
				t.Logf("sender: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("SendSnapshot did not return after Block")
			}
			if err := <-recvErr; !errors.Is(err, ErrSnapshotTruncated) {
				t.Fatalf("receiver: %v, want ErrSnapshotTruncated", err)
			}
			// New streams are refused while blocked.
			err := n1.tr.SendSnapshot(t.Context(), 2, snapMsg(1, 1, 2, 5), func(io.Writer) error { return nil })
			want := ErrBlocked
			if side == "receiver blocks" {
				want = ErrRefused
			}
			if !errors.Is(err, want) {
				t.Fatalf("new stream while blocked: %v, want %v", err, want)
			}
		})
	}
}

// TestSnapshotCancel: cancelling ctx aborts the stream, and the receiver's
// handler sees a truncated body.
func TestSnapshotCancel(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	hold := make(chan struct{})
	recvErr := make(chan error, 2)
	c.node(2).rec.snapshot = func(ctx context.Context, _ uint64, _ Message, body io.Reader) error {
		_, err := io.Copy(io.Discard, body)
		if err == nil {
			// The whole body arrived: take long to "install" it.
			select {
			case <-hold:
			case <-ctx.Done():
			}
		}
		recvErr <- err
		return err
	}
	defer close(hold)

	// Cancelled while streaming.
	ctx, cancel := context.WithCancel(t.Context())
	err := c.node(1).tr.SendSnapshot(ctx, 2, snapMsg(1, 1, 2, 5), func(w io.Writer) error {
		if _, err := w.Write(snapBody(1 << 20)); err != nil {
			return err
		}
		cancel()
		for {
			if _, err := w.Write(randomBytes(1, 64<<10)); err != nil {
				return err
			}
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled while streaming: %v", err)
	}
	if err := <-recvErr; !errors.Is(err, ErrSnapshotTruncated) {
		t.Fatalf("receiver: %v", err)
	}

	// Deadline while waiting for the verdict.
	ctx, cancel = context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	err = c.node(1).tr.SendSnapshot(ctx, 2, snapMsg(1, 1, 2, 5), writeInPieces(snapBody(100_000)))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("deadline while waiting for the verdict: %v", err)
	}
}

// TestSnapshotDoesNotDelayMessages: a stalled snapshot stream has its own
// connection; heartbeats keep flowing meanwhile.
func TestSnapshotDoesNotDelayMessages(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	stalled := make(chan struct{})
	n2.rec.snapshot = func(ctx context.Context, _ uint64, _ Message, body io.Reader) error {
		close(stalled)
		<-ctx.Done() // never reads
		return ctx.Err()
	}
	errc := make(chan error, 1)
	go func() {
		errc <- n1.tr.SendSnapshot(t.Context(), 2, snapMsg(1, 1, 2, 5), writeInPieces(snapBody(32<<20)))
	}()
	<-stalled
	for i := range 50 {
		n1.tr.Send(2, []Message{heartbeat(uint64(i), 1, 2)})
		waitFor(t, time.Second, "a heartbeat past the stalled snapshot", func() bool {
			return n2.rec.received.Load() == int64(i+1)
		})
	}
	c.stop(2)
	if err := <-errc; err == nil {
		t.Fatal("SendSnapshot succeeded against a receiver that closed")
	}
}

// TestCloseWithStreamsInFlight closes both ends while message and snapshot
// streams run; everything returns and no goroutine is left behind.
func TestCloseWithStreamsInFlight(t *testing.T) {
	c := newCluster(t, nil, 1, 2)
	n1, n2 := c.node(1), c.node(2)
	inHandler := make(chan struct{}, 4)
	n2.rec.snapshot = func(ctx context.Context, _ uint64, _ Message, body io.Reader) error {
		inHandler <- struct{}{}
		buf := make([]byte, 4096)
		for {
			if _, err := body.Read(buf); err != nil {
				return err
			}
			time.Sleep(time.Millisecond)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 3 {
		wg.Go(func() {
			errs <- n1.tr.SendSnapshot(context.Background(), 2, snapMsg(1, 1, 2, 5), func(w io.Writer) error {
				b := randomBytes(2, 32<<10)
				for {
					if _, err := w.Write(b); err != nil {
						return err
					}
				}
			})
		})
	}
	// And a snapshot waiting on a verdict that never comes.
	wg.Go(func() {
		errs <- n2.tr.SendSnapshot(context.Background(), 1, snapMsg(1, 2, 1, 5), writeInPieces([]byte("small")))
	})
	n1.rec.snapshot = func(ctx context.Context, _ uint64, _ Message, body io.Reader) error {
		_, _ = io.Copy(io.Discard, body)
		inHandler <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
	stopMsgs := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stopMsgs:
				return
			default:
			}
			n1.tr.Send(2, []Message{appMsg(uint64(i%64), 1, 2, uint64(i), make([]byte, 256))})
			n2.tr.Send(1, []Message{heartbeat(uint64(i%64), 2, 1)})
		}
	})
	for range 4 {
		select {
		case <-inHandler:
		case <-time.After(10 * time.Second):
			t.Fatal("streams did not start")
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var cw sync.WaitGroup
		cw.Go(func() { c.stop(1) })
		cw.Go(func() { c.stop(2) })
		cw.Wait()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung with streams in flight")
	}
	close(stopMsgs)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Error("a stream cut by Close reported success")
		}
	}
	goleak.VerifyNone(t)
}
