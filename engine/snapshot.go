package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/klauspost/compress/s2"
)

// Snapshot stream format, version 1. Integers are big-endian unless they
// are uvarints.
//
//	header   magic "KVNSNAP\x00" (8 bytes) | format version u32 (= 1)
//	frames   zero or more of: length u32 (1..maxFrameLen) | one s2 block
//	         (github.com/klauspost/compress/s2 block format) that decodes
//	         to 1..frameBlockSize bytes of the record stream
//	end      u32 0
//	trailer  record count u64 | xxhash64 of every byte before this field
//
// The record stream, the concatenation of the decoded frames, is a sequence
// of records, type u8 | payload length uvarint | payload:
//
//  1. one state record (type 1): partition u64 | index u64 | term u64 |
//     conf state (the rest of the payload);
//  2. zero or more data records (type 2), in strictly increasing user key
//     order: key length uvarint | key | version u64 | value (the rest).
//
// A record may span frames. Every length is read before what it measures,
// so a reader checks it against its limits before allocating. The checksum
// covers the bytes as sent, compressed, so any damage in transit is caught
// even where the compressed form is redundant (s2 copies from a run of
// zeros decode the same whatever their offset, so a checksum of the decoded
// bytes alone would miss such flips, harmlessly but surprisingly).
const (
	snapshotMagic         = "KVNSNAP\x00"
	snapshotFormatVersion = 1
	snapshotHeaderLen     = len(snapshotMagic) + 4

	recState byte = 1
	recKV    byte = 2

	stateFixedLen = 24 // partition + index + term

	// frameBlockSize bounds the decoded size of a frame, and so the memory
	// of both ends.
	frameBlockSize = 1 << 20
)

// maxFrameLen bounds the encoded size of a frame.
var maxFrameLen = s2.MaxEncodedLen(frameBlockSize)

// Snapshot is a consistent point-in-time view of one partition, to be
// streamed to another engine. It pins the Pebble state it reads (like an
// open iterator), so close it promptly. A Snapshot is used by one goroutine.
type Snapshot struct {
	e         *Engine
	partition uint64
	state     AppliedState
	it        *pebble.Iterator
	closed    bool
}

// NewSnapshot captures the partition's data and applied state at one point
// in time. A partition without state yields a snapshot with a zero
// AppliedState and no data, which an engine will refuse to install
// (ErrStaleIndex).
func (e *Engine) NewSnapshot(partition uint64) (_ *Snapshot, err error) {
	if err := e.enter(); err != nil {
		return nil, err
	}
	defer e.closeMu.RUnlock()
	// A Pebble iterator reads one consistent version of the DB for its whole
	// life, so the state keys and the data it returns agree.
	it, err := e.db.NewIter(&pebble.IterOptions{
		LowerBound: partitionStart(partition),
		UpperBound: partitionEnd(partition),
	})
	if err != nil {
		return nil, err
	}
	s := &Snapshot{e: e, partition: partition, it: it}
	for valid := it.First(); valid; valid = it.Next() {
		_, kind, _, err := decodeKey(it.Key())
		if err != nil {
			return nil, errors.Join(err, it.Close())
		}
		if kind == kindData {
			break
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, errors.Join(err, it.Close())
		}
		switch kind {
		case kindAppliedState:
			if s.state.Index, s.state.Term, err = decodeAppliedState(v); err != nil {
				return nil, errors.Join(err, it.Close())
			}
		case kindConfState:
			s.state.ConfState = bytes.Clone(v)
		}
	}
	if err := it.Error(); err != nil {
		return nil, errors.Join(err, it.Close())
	}
	e.mu.Lock()
	e.mu.snapshots++
	e.mu.Unlock()
	return s, nil
}

// Partition returns the partition the snapshot is of.
func (s *Snapshot) Partition() uint64 { return s.partition }

// State returns the applied state the snapshot's data corresponds to.
// ConfState is a fresh copy.
func (s *Snapshot) State() AppliedState { return s.state.clone() }

// WriteTo writes the snapshot stream to w and returns the number of bytes
// written. It buffers at most one frame, whatever the partition's size. It
// may be called more than once; every call writes the whole stream.
func (s *Snapshot) WriteTo(w io.Writer) (n int64, err error) {
	if s.closed {
		return 0, fmt.Errorf("%w: snapshot closed", ErrClosed)
	}
	s.e.mu.Lock()
	sticky := s.e.mu.err
	s.e.mu.Unlock()
	if sticky != nil {
		return 0, sticky
	}
	fw := &frameWriter{w: w, h: xxhash.New(), block: make([]byte, 0, frameBlockSize)}
	defer func() { n = fw.n }()

	var hdr [snapshotHeaderLen]byte
	copy(hdr[:], snapshotMagic)
	binary.BigEndian.PutUint32(hdr[len(snapshotMagic):], snapshotFormatVersion)
	if err := fw.writeRaw(hdr[:]); err != nil {
		return 0, err
	}

	var rec []byte
	rec = append(rec[:0], recState)
	rec = binary.AppendUvarint(rec, uint64(stateFixedLen+len(s.state.ConfState)))
	rec = binary.BigEndian.AppendUint64(rec, s.partition)
	rec = binary.BigEndian.AppendUint64(rec, s.state.Index)
	rec = binary.BigEndian.AppendUint64(rec, s.state.Term)
	if err := fw.write(rec); err != nil {
		return 0, err
	}
	if err := fw.write(s.state.ConfState); err != nil {
		return 0, err
	}
	count := uint64(1)

	for valid := s.it.SeekGE(dataStart(s.partition)); valid; valid = s.it.Next() {
		k := s.it.Key()[keyHeaderLen:]
		v, err := s.it.ValueAndErr()
		if err != nil {
			return 0, err
		}
		version, value, err := decodeDataValue(v)
		if err != nil {
			return 0, err
		}
		rec = append(rec[:0], recKV)
		rec = binary.AppendUvarint(rec, uint64(uvarintLen(uint64(len(k)))+len(k)+versionLen+len(value)))
		rec = binary.AppendUvarint(rec, uint64(len(k)))
		rec = append(rec, k...)
		rec = binary.BigEndian.AppendUint64(rec, version)
		if err := fw.write(rec); err != nil {
			return 0, err
		}
		// The value goes straight into the frame buffer, not through rec,
		// so a large value is not copied twice.
		if err := fw.write(value); err != nil {
			return 0, err
		}
		count++
	}
	if err := s.it.Error(); err != nil {
		return 0, err
	}
	if err := fw.flush(); err != nil {
		return 0, err
	}
	var end [4 + 8]byte // end marker (0) and record count
	binary.BigEndian.PutUint64(end[4:], count)
	if err := fw.writeRaw(end[:]); err != nil {
		return 0, err
	}
	var sum [8]byte
	binary.BigEndian.PutUint64(sum[:], fw.h.Sum64())
	fw.h = nil // the checksum is not part of what it covers
	return 0, fw.writeRaw(sum[:])
}

// Close releases the snapshot. It is idempotent.
func (s *Snapshot) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	s.e.mu.Lock()
	s.e.mu.snapshots--
	wedged := s.e.mu.wedged
	s.e.mu.Unlock()
	if wedged {
		// Closing the iterator may need Pebble's locks; see Engine.Close.
		return nil
	}
	return s.it.Close()
}

// frameWriter cuts the record stream into compressed frames and hashes
// every byte it sends.
type frameWriter struct {
	w     io.Writer
	h     *xxhash.Digest
	n     int64
	block []byte // pending record bytes, at most frameBlockSize
	enc   []byte // compressed frame, reused
}

// write appends record bytes, sending full frames as they fill.
func (fw *frameWriter) write(p []byte) error {
	for len(p) > 0 {
		k := min(len(p), frameBlockSize-len(fw.block))
		fw.block = append(fw.block, p[:k]...)
		p = p[k:]
		if len(fw.block) == frameBlockSize {
			if err := fw.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush sends the pending bytes as one frame.
func (fw *frameWriter) flush() error {
	if len(fw.block) == 0 {
		return nil
	}
	if cap(fw.enc) < 4+maxFrameLen {
		fw.enc = make([]byte, 4+maxFrameLen)
	}
	c := s2.Encode(fw.enc[4:cap(fw.enc)], fw.block)
	binary.BigEndian.PutUint32(fw.enc, uint32(len(c)))
	fw.block = fw.block[:0]
	return fw.writeRaw(fw.enc[:4+len(c)])
}

func (fw *frameWriter) writeRaw(p []byte) error {
	if fw.h != nil {
		_, _ = fw.h.Write(p)
	}
	n, err := fw.w.Write(p)
	fw.n += int64(n)
	return err
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}
