package transport

import (
	"bytes"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func entry(typ raftpb.EntryType, term, index uint64, data []byte) *raftpb.Entry {
	return &raftpb.Entry{Type: typ.Enum(), Term: proto.Uint64(term), Index: proto.Uint64(index), Data: data}
}

// decodeCases are messages as raft sends them (fast path), and the shapes
// that must fall back to proto.Unmarshal.
func decodeCases() []struct {
	name string
	wire []byte
	fast bool
} {
	mustMarshal := func(m *raftpb.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			panic(err)
		}
		return b
	}
	app := appMsg(1, 1, 2, 41, []byte("one"), nil, []byte{}, bytes.Repeat([]byte("x"), 300)).Msg
	app.Entries = append(app.Entries, entry(raftpb.EntryConfChangeV2, 3, 46, []byte{8, 1}))
	withUnknown := protowire.AppendTag(mustMarshal(heartbeat(1, 1, 2).Msg), 99, protowire.VarintType)
	withUnknown = protowire.AppendVarint(withUnknown, 7)
	unknownType := protowire.AppendTag(nil, msgFieldType, protowire.VarintType)
	unknownType = protowire.AppendVarint(unknownType, 200)
	entryUnknownType := protowire.AppendTag(nil, entryFieldType, protowire.VarintType)
	entryUnknownType = protowire.AppendVarint(entryUnknownType, 9)
	badEntry := protowire.AppendTag(nil, msgFieldEntries, protowire.BytesType)
	badEntry = protowire.AppendBytes(badEntry, entryUnknownType)
	// A field twice: proto keeps the last scalar and the last bytes.
	twice := mustMarshal(&raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), Commit: proto.Uint64(5), Context: []byte("a")})
	twice = append(twice, mustMarshal(&raftpb.Message{Commit: proto.Uint64(9), Context: []byte("bb")})...)
	wrongWireType := protowire.AppendTag(nil, msgFieldTo, protowire.Fixed64Type)
	wrongWireType = protowire.AppendFixed64(wrongWireType, 2)

	return []struct {
		name string
		wire []byte
		fast bool
	}{
		{"append with entries", mustMarshal(app), true},
		{"empty append (commit hint)", mustMarshal(appMsg(1, 1, 2, 41).Msg), true},
		{"heartbeat", mustMarshal(heartbeat(1, 1, 2).Msg), true},
		{"heartbeat with empty context", mustMarshal(&raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), Context: []byte{}}), true},
		{"reject with hint", mustMarshal(&raftpb.Message{
			Type: raftpb.MsgAppResp.Enum(), To: proto.Uint64(1), From: proto.Uint64(2), Term: proto.Uint64(7),
			Index: proto.Uint64(9), LogTerm: proto.Uint64(6), Reject: proto.Bool(true), RejectHint: proto.Uint64(4),
		}), true},
		{"vote", mustMarshal(&raftpb.Message{Type: raftpb.MsgPreVote.Enum(), Vote: proto.Uint64(0), Term: proto.Uint64(1 << 40)}), true},
		{"read index", mustMarshal(&raftpb.Message{Type: raftpb.MsgReadIndex.Enum(), Entries: []*raftpb.Entry{{Data: []byte("ctx")}}}), true},
		{"empty message", nil, true},
		{"field twice", twice, true},
		{"snapshot", mustMarshal(&raftpb.Message{Type: raftpb.MsgSnap.Enum(), Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(3)}}}), false},
		{"responses", mustMarshal(&raftpb.Message{Type: raftpb.MsgStorageAppend.Enum(), Responses: []*raftpb.Message{heartbeat(1, 1, 2).Msg}}), false},
		{"unknown field", withUnknown, false},
		{"unknown message type", unknownType, false},
		{"unknown entry type", badEntry, false},
		{"wrong wire type", wrongWireType, false},
	}
}

// TestDecodeMessage checks that both paths decode exactly as proto does, and
// that raft's everyday messages take the fast one.
func TestDecodeMessage(t *testing.T) {
	for _, tc := range decodeCases() {
		t.Run(tc.name, func(t *testing.T) {
			want := new(raftpb.Message)
			if err := proto.Unmarshal(tc.wire, want); err != nil {
				t.Fatal(err)
			}
			_, fast := decodeMessageFast(tc.wire)
			if fast != tc.fast {
				t.Fatalf("fast path taken: %v, want %v", fast, tc.fast)
			}
			in := bytes.Clone(tc.wire)
			got, err := decodeMessage(in)
			if err != nil {
				t.Fatal(err)
			}
			// Never aliases its input.
			for i := range in {
				in[i] = 0xff
			}
			if !proto.Equal(got, want) {
				t.Fatalf("decoded\n%v\nwant\n%v", got, want)
			}
		})
	}
}

// TestDecodedEntriesAreSeparate checks that the entries sharing one data
// buffer cannot write into each other.
func TestDecodedEntriesAreSeparate(t *testing.T) {
	b, err := proto.Marshal(appMsg(1, 1, 2, 1, []byte("ab"), []byte("cd")).Msg)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := decodeMessageFast(b)
	if !ok {
		t.Fatal("fast path refused an append")
	}
	_ = append(m.Entries[0].Data, 'X')
	if got := string(m.Entries[1].Data); got != "cd" {
		t.Fatalf("second entry's data %q after appending to the first", got)
	}
	m.Entries[0].Index = proto.Uint64(100)
	if m.Entries[1].GetIndex() != 3 {
		t.Fatalf("second entry's index %d", m.Entries[1].GetIndex())
	}
}

// FuzzDecodeMessage checks, for any input, that decodeMessage agrees with
// proto.Unmarshal: both fail, or both succeed with equal messages.
func FuzzDecodeMessage(f *testing.F) {
	for _, tc := range decodeCases() {
		f.Add(tc.wire)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		want := new(raftpb.Message)
		werr := proto.Unmarshal(b, want)
		got, err := decodeMessage(b)
		if (err != nil) != (werr != nil) {
			t.Fatalf("decodeMessage error %v, proto.Unmarshal error %v", err, werr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatalf("decoded\n%v\nwant\n%v", got, want)
		}
	})
}

// BenchmarkDecodeMessage compares the fast path with proto.Unmarshal on an
// append of one 300-byte entry, the benchmark's typical message.
func BenchmarkDecodeMessage(b *testing.B) {
	wire, err := proto.Marshal(appMsg(1, 1, 2, 41, make([]byte, 300)).Msg)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := decodeMessageFast(wire); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("proto", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(wire, new(raftpb.Message)); err != nil {
				b.Fatal(err)
			}
		}
	})
}
