package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// appMsg is a MsgApp carrying one entry per data slice.
func appMsg(group, from, to, index uint64, data ...[]byte) Message {
	m := &raftpb.Message{
		Type:    raftpb.MsgApp.Enum(),
		From:    proto.Uint64(from),
		To:      proto.Uint64(to),
		Term:    proto.Uint64(3),
		LogTerm: proto.Uint64(3),
		Index:   proto.Uint64(index),
		Commit:  proto.Uint64(index),
	}
	for i, d := range data {
		m.Entries = append(m.Entries, &raftpb.Entry{
			Term:  proto.Uint64(3),
			Index: proto.Uint64(index + 1 + uint64(i)),
			Type:  raftpb.EntryNormal.Enum(),
			Data:  d,
		})
	}
	return Message{Group: group, Msg: m}
}

func heartbeat(group, from, to uint64) Message {
	return Message{Group: group, Msg: &raftpb.Message{
		Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(from), To: proto.Uint64(to), Term: proto.Uint64(7),
	}}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// encode packs msgs into frames as the sender does.
func encode(t testing.TB, msgs []Message, maxFrame, threshold int) ([]byte, int) {
	t.Helper()
	e := newFrameEncoder(maxFrame, threshold)
	for _, m := range msgs {
		if err := e.add(m.Group, m.Msg); err != nil {
			t.Fatalf("add: %v", err)
		}
	}
	b := e.bytes()
	return append([]byte(nil), b...), e.frames
}

// decodeAll reads every frame of b and returns the messages and the flags
// of each frame.
func decodeAll(b []byte, maxFrame int) ([]Message, []byte, error) {
	fr := frameReader{r: bytes.NewReader(b), max: maxFrame}
	var msgs []Message
	var flags []byte
	for {
		payload, _, err := fr.next()
		if errors.Is(err, io.EOF) {
			return msgs, flags, nil
		}
		if err != nil {
			return msgs, flags, err
		}
		flags = append(flags, fr.hdr[4])
		if msgs, err = decodePayload(payload, msgs); err != nil {
			return msgs, flags, err
		}
	}
}

func sameMessages(t *testing.T, got, want []Message) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Group != want[i].Group || !proto.Equal(got[i].Msg, want[i].Msg) {
			t.Fatalf("message %d: got group %d %v, want group %d %v", i, got[i].Group, got[i].Msg, want[i].Group, want[i].Msg)
		}
	}
}

func TestFrameRoundTrip(t *testing.T) {
	compressible := bytes.Repeat([]byte("kvnode "), 2000) // 14 KB
	incompressible := randomBytes(1, 16<<10)
	many := func(n, size int) []Message {
		var ms []Message
		for i := range n {
			ms = append(ms, appMsg(uint64(i%64), 1, 2, uint64(i), randomBytes(uint64(i), size)))
		}
		return ms
	}
	tests := []struct {
		name       string
		msgs       []Message
		maxFrame   int
		threshold  int
		wantFrames int    // 0: don't check
		wantFlags  []byte // nil: don't check
	}{
		{name: "one heartbeat", msgs: []Message{heartbeat(0, 1, 2)}, wantFrames: 1, wantFlags: []byte{0}},
		{name: "extreme groups", msgs: []Message{heartbeat(0, 1, 2), heartbeat(math.MaxUint64, 1, 2), heartbeat(1<<35, 1, 2)}, wantFrames: 1},
		{name: "empty message", msgs: []Message{{Group: 5, Msg: &raftpb.Message{}}}, wantFrames: 1},
		{name: "compressible large", msgs: []Message{appMsg(3, 1, 2, 10, compressible)}, wantFrames: 1, wantFlags: []byte{flagS2}},
		{name: "incompressible large", msgs: []Message{appMsg(3, 1, 2, 10, incompressible)}, wantFrames: 1, wantFlags: []byte{0}},
		{name: "compression disabled", msgs: []Message{appMsg(3, 1, 2, 10, compressible)}, threshold: -1, wantFrames: 1, wantFlags: []byte{0}},
		{name: "at threshold stays raw", msgs: []Message{appMsg(3, 1, 2, 10, bytes.Repeat([]byte{'a'}, 100))}, threshold: 1 << 20, wantFlags: []byte{0}},
		// 300 × ~4 KiB = ~1.2 MiB: crosses the 1 MiB soft frame target.
		{name: "coalesced past the frame target", msgs: many(300, 4<<10), maxFrame: 64 << 20, wantFrames: 2},
		// 40 × ~1 KiB with an 8 KiB frame limit: frames split at the limit.
		{name: "split at the frame limit", msgs: many(40, 1<<10), maxFrame: 8 << 10, wantFrames: 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.maxFrame == 0 {
				tc.maxFrame = defaultMaxFrameSize
			}
			if tc.threshold == 0 {
				tc.threshold = defaultCompressThreshold
			}
			b, frames := encode(t, tc.msgs, tc.maxFrame, tc.threshold)
			if tc.wantFrames != 0 && frames != tc.wantFrames {
				t.Errorf("encoded %d frames, want %d", frames, tc.wantFrames)
			}
			got, flags, err := decodeAll(b, tc.maxFrame)
			if err != nil {
				t.Fatal(err)
			}
			if len(flags) != frames {
				t.Errorf("decoded %d frames, encoder said %d", len(flags), frames)
			}
			if tc.wantFlags != nil && !bytes.Equal(flags, tc.wantFlags) {
				t.Errorf("frame flags %v, want %v", flags, tc.wantFlags)
			}
			sameMessages(t, got, tc.msgs)
		})
	}
}

func TestEncoderRejectsOversizedMessage(t *testing.T) {
	e := newFrameEncoder(minMaxFrameSize, defaultCompressThreshold)
	if err := e.add(1, heartbeat(1, 1, 2).Msg); err != nil {
		t.Fatal(err)
	}
	before := len(e.buf)
	err := e.add(1, appMsg(1, 1, 2, 1, make([]byte, minMaxFrameSize)).Msg)
	if !errors.Is(err, ErrMessageTooLarge) {
		t.Fatalf("got %v, want ErrMessageTooLarge", err)
	}
	if len(e.buf) != before {
		t.Fatalf("a refused message changed the buffer: %d -> %d bytes", before, len(e.buf))
	}
	got, _, err := decodeAll(e.bytes(), minMaxFrameSize)
	if err != nil || len(got) != 1 {
		t.Fatalf("after a refusal: %d messages, %v", len(got), err)
	}
}

func frameBytes(n uint32, flags byte, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, n)
	b = append(b, flags)
	return append(b, payload...)
}

func TestReadFrameErrors(t *testing.T) {
	const max = 64 << 10
	valid, _ := encode(t, []Message{heartbeat(1, 1, 2)}, max, -1)
	hugeS2 := binary.AppendUvarint(nil, 1<<30) // s2 block claiming 1 GiB
	hugeS2 = append(hugeS2, 0, 0, 0)
	tests := []struct {
		name string
		in   []byte
		want error // for next() or, if next succeeds, decodePayload
	}{
		{"empty stream", nil, io.EOF},
		{"partial header", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"declared length over the limit", frameBytes(max+1, 0, nil), ErrFrameTooLarge},
		{"declared length 4 GiB", frameBytes(math.MaxUint32, 0, nil), ErrFrameTooLarge},
		{"header then nothing", frameBytes(10, 0, nil), io.ErrUnexpectedEOF},
		{"truncated payload", valid[:len(valid)-1], io.ErrUnexpectedEOF},
		{"unknown flag", frameBytes(0, 0x80, nil), ErrCorruptFrame},
		{"bad s2 block", frameBytes(4, flagS2, []byte{0xff, 0xff, 0xff, 0xff}), ErrCorruptFrame},
		{"s2 block decompressing over the limit", frameBytes(uint32(len(hugeS2)), flagS2, hugeS2), ErrFrameTooLarge},
		{"bad group varint", frameBytes(11, 0, bytes.Repeat([]byte{0xff}, 11)), ErrCorruptFrame},
		{"missing length varint", frameBytes(1, 0, []byte{5}), ErrCorruptFrame},
		{"message overruns payload", frameBytes(3, 0, []byte{5, 100, 0}), ErrCorruptFrame},
		{"message is not protobuf", frameBytes(4, 0, []byte{5, 2, 0xff, 0xff}), ErrCorruptFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fr := frameReader{r: bytes.NewReader(tc.in), max: max}
			payload, _, err := fr.next()
			if err == nil {
				_, err = decodePayload(payload, nil)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			// Nothing of the declared size was allocated.
			if cap(fr.buf) > max || cap(fr.dec) > max {
				t.Fatalf("reader allocated %d/%d bytes, limit %d", cap(fr.buf), cap(fr.dec), max)
			}
		})
	}
}

func TestDecodedMessagesDoNotAliasTheBuffer(t *testing.T) {
	data := []byte("entry data that must survive buffer reuse")
	b, _ := encode(t, []Message{appMsg(1, 1, 2, 5, data)}, defaultMaxFrameSize, -1)
	got, _, err := decodeAll(b, defaultMaxFrameSize)
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 0xee
	}
	if d := got[0].Msg.GetEntries()[0].GetData(); !bytes.Equal(d, data) {
		t.Fatalf("entry data changed with the frame buffer: %q", d)
	}
}

func TestHandshakeAndStatusRoundTrip(t *testing.T) {
	h := handshake{version: protocolVersion, kind: kindSnapshot, cluster: math.MaxUint64, from: 7, to: 1 << 40}
	b := appendHandshake(nil, h)
	if len(b) != handshakeSize {
		t.Fatalf("handshake is %d bytes, want %d", len(b), handshakeSize)
	}
	got, err := readHandshake(bytes.NewReader(b))
	if err != nil || got != h {
		t.Fatalf("handshake round trip: %+v, %v", got, err)
	}
	if _, err := readHandshake(bytes.NewReader(b[:10])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short handshake: %v", err)
	}

	long := strings.Repeat("x", maxStatusMsg+100)
	for _, tc := range []struct {
		code statusCode
		msg  string
		want string
		is   error
	}{
		{statusOK, "", "", nil},
		{statusClusterMismatch, "cluster 1 vs 2", "cluster 1 vs 2", ErrClusterMismatch},
		{statusWrongNode, "not 3", "not 3", ErrWrongNode},
		{statusClusterUnknown, "", "", ErrClusterIDUnknown},
		{statusRefused, "blocked", "blocked", ErrRefused},
		{statusBadVersion, "v9", "v9", ErrHandshake},
		{statusFailed, long, long[:maxStatusMsg], ErrSnapshotRejected},
		{statusCode(200), "?", "?", ErrHandshake},
	} {
		code, msg, err := readStatus(bytes.NewReader(appendStatus(nil, tc.code, tc.msg)))
		if err != nil || code != tc.code || msg != tc.want {
			t.Fatalf("status %d round trip: %d %q %v", tc.code, code, msg, err)
		}
		if err := code.err(msg); !errors.Is(err, tc.is) || (tc.is == nil) != (err == nil) {
			t.Fatalf("status %d maps to %v, want %v", code, err, tc.is)
		}
	}
	if _, _, err := readStatus(bytes.NewReader([]byte{7, 0, 9, 'a'})); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated status: %v", err)
	}
}

// FuzzDecodeFrame feeds arbitrary bytes to the frame reader and payload
// decoder: they must never panic nor accept a frame over the limit, and
// whatever they accept must survive re-encoding unchanged. Its seed corpus
// runs with `go test`.
func FuzzDecodeFrame(f *testing.F) {
	const max = 64 << 10
	seed := func(msgs []Message, threshold int) []byte {
		e := newFrameEncoder(max, threshold)
		for _, m := range msgs {
			if err := e.add(m.Group, m.Msg); err != nil {
				f.Fatal(err)
			}
		}
		return append([]byte(nil), e.bytes()...)
	}
	f.Add([]byte{})
	f.Add(seed([]Message{heartbeat(0, 1, 2)}, -1))
	f.Add(seed([]Message{heartbeat(1, 1, 2), appMsg(63, 1, 2, 9, []byte("abc"), nil)}, -1))
	f.Add(seed([]Message{appMsg(2, 1, 2, 1, bytes.Repeat([]byte("zz"), 5000))}, 1024))
	f.Add(seed([]Message{{Group: 9, Msg: &raftpb.Message{
		Type:     raftpb.MsgSnap.Enum(),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(10), Term: proto.Uint64(2), ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}},
	}}}, -1))
	f.Add(frameBytes(math.MaxUint32, 0, nil))
	f.Add(frameBytes(4, flagS2, []byte{0xff, 0xff, 0xff, 0xff}))
	f.Add(frameBytes(3, 0, []byte{5, 100, 0}))
	f.Add([]byte(DefaultPreamble))
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := frameReader{r: bytes.NewReader(data), max: max}
		var msgs []Message
		for {
			payload, wire, err := fr.next()
			if err != nil {
				break
			}
			if len(payload) > max || wire > max+frameHeaderSize {
				t.Fatalf("accepted a frame of %d (wire %d) bytes over the %d limit", len(payload), wire, max)
			}
			if msgs, err = decodePayload(payload, msgs); err != nil {
				break
			}
		}
		if len(msgs) == 0 {
			return
		}
		// Decode(encode(x)) == x for whatever was accepted. A message can
		// re-encode larger than it arrived (unknown fields are kept, but
		// varints may be re-encoded shorter or longer), so allow room.
		e := newFrameEncoder(4*max, defaultCompressThreshold)
		for _, m := range msgs {
			if err := e.add(m.Group, m.Msg); err != nil {
				t.Fatalf("re-encoding an accepted message: %v", err)
			}
		}
		got, _, err := decodeAll(e.bytes(), 4*max)
		if err != nil {
			t.Fatalf("re-encoded frames do not decode: %v", err)
		}
		sameMessages(t, got, msgs)
	})
}
