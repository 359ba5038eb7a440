package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The WAL's key layout. Every key is fixed-width and big-endian so that the
// byte order of keys is the numeric order of (kind, group, index), which
// makes one group's log one contiguous key range: a DeleteRange truncates it
// and a bounded iterator reads it.
//
//	entry:      [0x01][group u64][index u64]   → [term u64][type u8][data]
//	hard state: [0x02][group u64]              → [term u64][vote u64][commit u64]
//	snapshot:   [0x03][group u64]              → [index u64][term u64][conf state proto]
//
// The kind byte comes first (not the group) so that all hard states are one
// range: Groups() lists them with a single scan.
const (
	kindEntry     byte = 0x01
	kindHardState byte = 0x02
	kindSnapshot  byte = 0x03

	entryKeyLen = 1 + 8 + 8
	groupKeyLen = 1 + 8

	// entryValueHeader is the fixed prefix of an entry value: term and type.
	entryValueHeader = 8 + 1
	hardStateLen     = 3 * 8
	snapMetaHeader   = 2 * 8
)

var errBadKey = errors.New("wal: malformed key")

func appendEntryKey(dst []byte, group, index uint64) []byte {
	dst = append(dst, kindEntry)
	dst = binary.BigEndian.AppendUint64(dst, group)
	return binary.BigEndian.AppendUint64(dst, index)
}

func entryKey(group, index uint64) []byte {
	return appendEntryKey(make([]byte, 0, entryKeyLen), group, index)
}

// entryBounds returns the key range [lo, hi) holding the group's entries with
// indexes in [from, to). to == 0 means "to the end of the group".
func entryBounds(group, from, to uint64) (lo, hi []byte) {
	lo = entryKey(group, from)
	if to == 0 {
		// The first key of the next group; group ids never reach MaxUint64 in
		// practice, but handle it rather than wrap around.
		if group == ^uint64(0) {
			return lo, []byte{kindEntry + 1}
		}
		return lo, entryKey(group+1, 0)
	}
	return lo, entryKey(group, to)
}

func groupKey(kind byte, group uint64) []byte {
	k := make([]byte, 0, groupKeyLen)
	k = append(k, kind)
	return binary.BigEndian.AppendUint64(k, group)
}

func hardStateKey(group uint64) []byte { return groupKey(kindHardState, group) }
func snapshotKey(group uint64) []byte  { return groupKey(kindSnapshot, group) }

// decodeEntryKey is the inverse of entryKey.
func decodeEntryKey(k []byte) (group, index uint64, err error) {
	if len(k) != entryKeyLen || k[0] != kindEntry {
		return 0, 0, fmt.Errorf("%w: entry key %x", errBadKey, k)
	}
	return binary.BigEndian.Uint64(k[1:9]), binary.BigEndian.Uint64(k[9:17]), nil
}

// decodeGroupKey is the inverse of hardStateKey and snapshotKey.
func decodeGroupKey(k []byte) (kind byte, group uint64, err error) {
	if len(k) != groupKeyLen || (k[0] != kindHardState && k[0] != kindSnapshot) {
		return 0, 0, fmt.Errorf("%w: group key %x", errBadKey, k)
	}
	return k[0], binary.BigEndian.Uint64(k[1:]), nil
}

// Values. Entries are not stored as protobuf: the index is already in the key
// and a fixed header is cheaper to encode and decode than reflection-based
// proto, on the hottest path of the node.

func appendEntryValue(dst []byte, term uint64, typ uint8, data []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, term)
	dst = append(dst, typ)
	return append(dst, data...)
}

// decodeEntryValue splits an entry value. data aliases v.
func decodeEntryValue(v []byte) (term uint64, typ uint8, data []byte, err error) {
	if len(v) < entryValueHeader {
		return 0, 0, nil, fmt.Errorf("wal: entry value of %d bytes is shorter than its %d-byte header", len(v), entryValueHeader)
	}
	return binary.BigEndian.Uint64(v), v[8], v[entryValueHeader:], nil
}

func appendHardStateValue(dst []byte, term, vote, commit uint64) []byte {
	dst = binary.BigEndian.AppendUint64(dst, term)
	dst = binary.BigEndian.AppendUint64(dst, vote)
	return binary.BigEndian.AppendUint64(dst, commit)
}

func decodeHardStateValue(v []byte) (term, vote, commit uint64, err error) {
	if len(v) != hardStateLen {
		return 0, 0, 0, fmt.Errorf("wal: hard state value of %d bytes, want %d", len(v), hardStateLen)
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), binary.BigEndian.Uint64(v[16:]), nil
}

func appendSnapshotValue(dst []byte, index, term uint64, confState []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, index)
	dst = binary.BigEndian.AppendUint64(dst, term)
	return append(dst, confState...)
}

// decodeSnapshotValue splits a snapshot metadata value. confState aliases v.
func decodeSnapshotValue(v []byte) (index, term uint64, confState []byte, err error) {
	if len(v) < snapMetaHeader {
		return 0, 0, nil, fmt.Errorf("wal: snapshot value of %d bytes is shorter than its %d-byte header", len(v), snapMetaHeader)
	}
	return binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:]), v[snapMetaHeader:], nil
}
