package transport

// This file decodes raft messages off the wire without protobuf-go's
// reflection tables. raftpb (raft v3.7) is proto2 with a pointer for every
// scalar field, so proto.Unmarshal makes about ten allocations per message
// and four more per entry; under load that was a sixth of every byte the
// node allocated. decodeMessage parses the common shape into one block per
// message and one per batch of entries, and hands anything else (a snapshot,
// storage responses, unknown fields or enum values, a field with an
// unexpected wire type) to proto.Unmarshal, so what it accepts always decodes
// exactly as proto.Unmarshal would (FuzzDecodeMessage checks this).

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"go.etcd.io/raft/v3/raftpb"
)

// Field numbers of raftpb.Message and raftpb.Entry (raft.proto).
const (
	msgFieldType       = 1
	msgFieldTo         = 2
	msgFieldFrom       = 3
	msgFieldTerm       = 4
	msgFieldLogTerm    = 5
	msgFieldIndex      = 6
	msgFieldEntries    = 7
	msgFieldCommit     = 8
	msgFieldReject     = 10
	msgFieldRejectHint = 11
	msgFieldContext    = 12
	msgFieldVote       = 13

	entryFieldType  = 1
	entryFieldTerm  = 2
	entryFieldIndex = 3
	entryFieldData  = 4
)

// decodeMessage parses one proto-encoded raftpb.Message. The result never
// aliases b.
func decodeMessage(b []byte) (*raftpb.Message, error) {
	if m, ok := decodeMessageFast(b); ok {
		return m, nil
	}
	m := new(raftpb.Message)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, err
	}
	return m, nil
}

// messageBlock is a Message and the scalars its pointer fields point at:
// one allocation instead of one per field.
type messageBlock struct {
	m                                                        raftpb.Message
	typ                                                      raftpb.MessageType
	to, from, term, logTerm, index, commit, vote, rejectHint uint64
	reject                                                   bool
}

// entryBlock is the same for an Entry; a message's entries are one slice of
// them.
type entryBlock struct {
	e           raftpb.Entry
	typ         raftpb.EntryType
	term, index uint64
}

// decodeMessageFast decodes b if every field in it is one it knows, with
// the wire type proto would accept for it, and every enum value is known
// (proto2 enums are closed: proto.Unmarshal keeps an unknown value among
// the unknown fields, not in the field). Otherwise it reports false and b
// is left to proto.Unmarshal.
//
// One pass validates and fills everything but the entries, which it only
// validates and sizes; a second pass decodes them into one slice of blocks
// and one data buffer.
func decodeMessageFast(b []byte) (*raftpb.Message, bool) {
	blk := new(messageBlock)
	m := &blk.m
	var nEntries, dataLen int
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return nil, false
			}
			off += n
			switch num {
			case msgFieldEntries:
				dl, ok := scanEntry(v)
				if !ok {
					return nil, false
				}
				nEntries++
				dataLen += dl
			case msgFieldContext:
				// Last one wins, as in proto. Present but empty stays
				// non-nil: proto tells the two apart.
				m.Context = append(make([]byte, 0, len(v)), v...)
			default:
				return nil, false
			}
			continue
		}
		if typ != protowire.VarintType {
			return nil, false
		}
		v, n := protowire.ConsumeVarint(b[off:])
		if n < 0 {
			return nil, false
		}
		off += n
		switch num {
		case msgFieldType:
			if !knownMessageType(v) {
				return nil, false
			}
			blk.typ = raftpb.MessageType(v)
			m.Type = &blk.typ
		case msgFieldTo:
			blk.to = v
			m.To = &blk.to
		case msgFieldFrom:
			blk.from = v
			m.From = &blk.from
		case msgFieldTerm:
			blk.term = v
			m.Term = &blk.term
		case msgFieldLogTerm:
			blk.logTerm = v
			m.LogTerm = &blk.logTerm
		case msgFieldIndex:
			blk.index = v
			m.Index = &blk.index
		case msgFieldCommit:
			blk.commit = v
			m.Commit = &blk.commit
		case msgFieldReject:
			blk.reject = protowire.DecodeBool(v)
			m.Reject = &blk.reject
		case msgFieldRejectHint:
			blk.rejectHint = v
			m.RejectHint = &blk.rejectHint
		case msgFieldVote:
			blk.vote = v
			m.Vote = &blk.vote
		default:
			return nil, false
		}
	}
	if nEntries == 0 {
		return m, true
	}

	// The entries, validated above.
	ents := make([]entryBlock, nEntries)
	m.Entries = make([]*raftpb.Entry, 0, nEntries)
	data := make([]byte, 0, dataLen)
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		off += n
		if typ != protowire.BytesType {
			_, n = protowire.ConsumeVarint(b[off:])
			off += n
			continue
		}
		v, n := protowire.ConsumeBytes(b[off:])
		off += n
		if num == msgFieldEntries {
			eb := &ents[len(m.Entries)]
			data = fillEntry(eb, v, data)
			m.Entries = append(m.Entries, &eb.e)
		}
	}
	return m, true
}

// scanEntry validates an encoded Entry as decodeMessageFast does a Message,
// and returns the bytes its Data fields hold.
func scanEntry(b []byte) (dataLen int, ok bool) {
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		if n < 0 {
			return 0, false
		}
		off += n
		switch {
		case num == entryFieldData && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b[off:])
			if n < 0 {
				return 0, false
			}
			dataLen += len(v)
			off += n
		case typ == protowire.VarintType && (num == entryFieldType || num == entryFieldTerm || num == entryFieldIndex):
			v, n := protowire.ConsumeVarint(b[off:])
			if n < 0 || (num == entryFieldType && !knownEntryType(v)) {
				return 0, false
			}
			off += n
		default:
			return 0, false
		}
	}
	return dataLen, true
}

// fillEntry decodes a validated Entry into eb, copying its data to the end
// of data (whose capacity scanEntry sized), and returns data extended.
func fillEntry(eb *entryBlock, b []byte, data []byte) []byte {
	e := &eb.e
	for off := 0; off < len(b); {
		num, typ, n := protowire.ConsumeTag(b[off:])
		off += n
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b[off:])
			off += n
			start := len(data)
			data = append(data, v...)
			// The cap bound keeps an append to one entry's Data from
			// overwriting the next entry's.
			e.Data = data[start:len(data):len(data)]
			continue
		}
		v, n := protowire.ConsumeVarint(b[off:])
		off += n
		switch num {
		case entryFieldType:
			eb.typ = raftpb.EntryType(v)
			e.Type = &eb.typ
		case entryFieldTerm:
			eb.term = v
			e.Term = &eb.term
		case entryFieldIndex:
			eb.index = v
			e.Index = &eb.index
		}
	}
	return data
}

// Known enum numbers, read from the generated descriptors so that a raft
// upgrade adding a message type needs no change here.
var (
	knownMessageTypes = enumNumbers(raftpb.MessageType(0).Descriptor().Values())
	knownEntryTypes   = enumNumbers(raftpb.EntryType(0).Descriptor().Values())
)

func knownMessageType(v uint64) bool {
	return v < uint64(len(knownMessageTypes)) && knownMessageTypes[v]
}
func knownEntryType(v uint64) bool { return v < uint64(len(knownEntryTypes)) && knownEntryTypes[v] }

func enumNumbers(vs protoreflect.EnumValueDescriptors) []bool {
	var known []bool
	for i := range vs.Len() {
		n := int(vs.Get(i).Number())
		if n < 0 || n > 1<<10 {
			continue // not expected in raft; such a value takes the slow path
		}
		for len(known) <= n {
			known = append(known, false)
		}
		known[n] = true
	}
	return known
}
