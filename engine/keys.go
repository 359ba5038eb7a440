package engine

import (
	"encoding/binary"
	"fmt"
)

// Key layout. Every key starts with the partition id as a fixed-width
// big-endian uint64, so a partition's whole state is one contiguous span:
// a snapshot is one range scan and an install is one excise. The byte after
// the partition id says what the key holds; it is followed by the user key
// for data keys only.
//
//	[partition u64 BE][kindAppliedState]            → [index u64 BE][term u64 BE]
//	[partition u64 BE][kindConfState]               → raft ConfState bytes (opaque)
//	[partition u64 BE][kindData][user key ...]      → [version u64 BE][value ...]
//
// kindSpanEnd is never written: [partition][kindSpanEnd] is the exclusive end
// of the partition's span, which works for every partition id including
// MaxUint64 (there is no "next partition" to use as a bound there).
const (
	kindAppliedState byte = 0x01
	kindConfState    byte = 0x02
	kindData         byte = 0x10
	kindSpanEnd      byte = 0xff

	partitionLen = 8
	keyHeaderLen = partitionLen + 1 // partition id + kind
	versionLen   = 8
	appliedLen   = 16 // index + term
)

// partitionStart returns the first key a partition can have.
func partitionStart(p uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, partitionLen), p)
}

// partitionEnd returns the exclusive upper bound of a partition's span.
func partitionEnd(p uint64) []byte {
	return stateKey(p, kindSpanEnd)
}

// stateKey returns the key [p][kind] of a partition-wide record.
func stateKey(p uint64, kind byte) []byte {
	k := make([]byte, keyHeaderLen)
	binary.BigEndian.PutUint64(k, p)
	k[partitionLen] = kind
	return k
}

func appliedStateKey(p uint64) []byte { return stateKey(p, kindAppliedState) }
func confStateKey(p uint64) []byte    { return stateKey(p, kindConfState) }

// dataStart and dataEnd bound the data keys of a partition.
func dataStart(p uint64) []byte { return stateKey(p, kindData) }
func dataEnd(p uint64) []byte   { return stateKey(p, kindData+1) }

// appendDataKey appends the key of user key k in partition p to dst.
func appendDataKey(dst []byte, p uint64, k []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, p)
	dst = append(dst, kindData)
	return append(dst, k...)
}

// decodeKey splits an engine key. userKey aliases k and is only set for
// data keys. Unknown kinds are an error: a key this code does not understand
// means the store was written by something else.
func decodeKey(k []byte) (p uint64, kind byte, userKey []byte, err error) {
	if len(k) < keyHeaderLen {
		return 0, 0, nil, fmt.Errorf("%w: key %x shorter than %d bytes", ErrCorrupt, k, keyHeaderLen)
	}
	p = binary.BigEndian.Uint64(k)
	kind = k[partitionLen]
	switch kind {
	case kindAppliedState, kindConfState:
		if len(k) != keyHeaderLen {
			return 0, 0, nil, fmt.Errorf("%w: state key %x has trailing bytes", ErrCorrupt, k)
		}
	case kindData:
		userKey = k[keyHeaderLen:]
		if len(userKey) == 0 {
			return 0, 0, nil, fmt.Errorf("%w: data key %x has an empty user key", ErrCorrupt, k)
		}
	default:
		return 0, 0, nil, fmt.Errorf("%w: key %x has unknown kind %#x", ErrCorrupt, k, kind)
	}
	return p, kind, userKey, nil
}

// appendDataValue appends the stored form of a data value to dst.
func appendDataValue(dst []byte, version uint64, value []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, version)
	return append(dst, value...)
}

// decodeDataValue splits a stored data value; value aliases v.
func decodeDataValue(v []byte) (version uint64, value []byte, err error) {
	if len(v) < versionLen {
		return 0, nil, fmt.Errorf("%w: data value of %d bytes has no version", ErrCorrupt, len(v))
	}
	version = binary.BigEndian.Uint64(v)
	if version == 0 {
		// Versions are raft indexes, which start at 1; 0 means "absent" in
		// the API and must never be stored.
		return 0, nil, fmt.Errorf("%w: data value has version 0", ErrCorrupt)
	}
	return version, v[versionLen:], nil
}

func encodeAppliedState(index, term uint64) []byte {
	v := make([]byte, appliedLen)
	binary.BigEndian.PutUint64(v, index)
	binary.BigEndian.PutUint64(v[8:], term)
	return v
}

func decodeAppliedState(v []byte) (index, term uint64, err error) {
	if len(v) != appliedLen {
		return 0, 0, fmt.Errorf("%w: applied state of %d bytes, want %d", ErrCorrupt, len(v), appliedLen)
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), nil
}
