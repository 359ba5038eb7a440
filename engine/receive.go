package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/errors/oserror"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/klauspost/compress/s2"
)

// StagedSnapshot is a snapshot received and verified into a staging
// sstable, not yet visible. Exactly one of Install or Discard should be
// called; both are safe to call again afterwards. A StagedSnapshot is used
// by one goroutine.
type StagedSnapshot struct {
	e         *Engine
	path      string
	partition uint64
	state     AppliedState
	keys      int64
	bytes     int64
	stream    int64
	done      bool
}

// Partition returns the partition the snapshot is of.
func (s *StagedSnapshot) Partition() uint64 { return s.partition }

// State returns the applied state the snapshot installs. ConfState is a
// fresh copy.
func (s *StagedSnapshot) State() AppliedState { return s.state.clone() }

// Keys returns the number of user keys in the snapshot.
func (s *StagedSnapshot) Keys() int64 { return s.keys }

// Bytes returns the sum of the user key and value lengths in the snapshot.
func (s *StagedSnapshot) Bytes() int64 { return s.bytes }

// StreamBytes returns the length of the stream as read, compressed.
func (s *StagedSnapshot) StreamBytes() int64 { return s.stream }

// ReceiveSnapshot reads a stream written by Snapshot.WriteTo to its end,
// verifies it and writes it to a staging sstable in the engine's directory.
// Nothing becomes visible until Install. Memory use does not depend on the
// partition's size: one record at a time.
//
// A stream that is truncated, damaged, out of order or over the engine's
// size limits returns an error wrapping ErrCorruptSnapshot; an error of r
// itself is returned wrapped as is. On any error the staging file is removed.
//
// ReceiveSnapshot does not hold up Close while it reads; if the engine is
// closed meanwhile, Install fails and the next Open removes the file.
func (e *Engine) ReceiveSnapshot(r io.Reader) (_ *StagedSnapshot, err error) {
	if err := e.enter(); err != nil {
		return nil, err
	}
	wopts := e.popts.MakeWriterOptions(0, e.db.TableFormat())
	e.closeMu.RUnlock()

	path := e.fs.PathJoin(e.stagingDir, fmt.Sprintf("snap-%06d.sst", e.stagingSeq.Add(1)))
	f, err := e.fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, fmt.Errorf("engine: creating staging file: %w", err)
	}
	w := sstable.NewWriter(objstorageprovider.NewFileWritable(f), wopts)
	closed := false
	defer func() {
		if err == nil {
			return
		}
		if !closed {
			_ = w.Close()
		}
		if rerr := e.fs.Remove(path); rerr != nil {
			e.log.Error("removing staging file", "path", path, "err", rerr)
		}
	}()

	src := &sourceReader{r: r}
	d := &streamDecoder{
		src:          src,
		maxKey:       e.opts.MaxKeySize,
		maxValue:     e.opts.MaxValueSize,
		maxConfState: e.opts.MaxConfStateSize,
		stagingWrite: w.Set,
	}
	staged, err := d.decode()
	if err != nil {
		if src.err != nil {
			return nil, fmt.Errorf("engine: reading snapshot stream: %w", src.err)
		}
		return nil, err
	}
	closed = true
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("engine: writing staging sstable: %w", err)
	}
	staged.e, staged.path, staged.stream = e, path, src.n
	return staged, nil
}

// sourceReader counts bytes and remembers the first error that is not EOF,
// so a failing connection is not reported as a corrupt snapshot.
type sourceReader struct {
	r   io.Reader
	n   int64
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// frameReader reads the frames of a stream and serves the decoded record
// stream. It hashes every wire byte it reads.
type frameReader struct {
	in   *bufio.Reader
	h    *xxhash.Digest
	enc  []byte
	dec  []byte
	pos  int
	done bool // the end marker was read
}

// readRaw reads len(p) wire bytes and hashes them. Running out of input is
// truncation: a complete stream ends only after the trailer.
func (f *frameReader) readRaw(p []byte) error {
	if _, err := io.ReadFull(f.in, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("%w: %w", ErrCorruptSnapshot, err)
	}
	_, _ = f.h.Write(p)
	return nil
}

// next loads the next frame; it returns io.EOF at the end marker.
func (f *frameReader) next() error {
	if f.done {
		return io.EOF
	}
	var hdr [4]byte
	if err := f.readRaw(hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 {
		f.done = true
		return io.EOF
	}
	if uint64(n) > uint64(maxFrameLen) {
		return corruptf("frame of %d bytes", n)
	}
	f.enc = grow(f.enc, int(n))
	if err := f.readRaw(f.enc); err != nil {
		return err
	}
	if dl, err := s2.DecodedLen(f.enc); err != nil || dl == 0 || dl > frameBlockSize {
		return corruptf("frame decodes to %d bytes (%v)", dl, err)
	}
	if cap(f.dec) < frameBlockSize {
		f.dec = make([]byte, frameBlockSize)
	}
	dec, err := s2.Decode(f.dec[:cap(f.dec)], f.enc)
	if err != nil {
		return corruptf("frame: %v", err)
	}
	f.dec, f.pos = dec, 0
	return nil
}

// Read implements io.Reader over the record stream.
func (f *frameReader) Read(p []byte) (int, error) {
	for f.pos == len(f.dec) {
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, f.dec[f.pos:])
	f.pos += n
	return n, nil
}

// ReadByte implements io.ByteReader for binary.ReadUvarint.
func (f *frameReader) ReadByte() (byte, error) {
	for f.pos == len(f.dec) {
		if err := f.next(); err != nil {
			return 0, err
		}
	}
	c := f.dec[f.pos]
	f.pos++
	return c, nil
}

// streamDecoder parses a snapshot stream and feeds the staging writer.
type streamDecoder struct {
	src          io.Reader
	maxKey       int
	maxValue     int
	maxConfState int
	// stagingWrite receives the engine keys and values in order.
	stagingWrite func(key, value []byte) error
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorruptSnapshot, fmt.Sprintf(format, args...))
}

// inRecord turns a read error inside the record stream into corruption:
// the end marker (io.EOF) in the middle of a record is truncation.
func inRecord(what string, err error) error {
	if errors.Is(err, ErrCorruptSnapshot) {
		return err
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("%w: reading %s: %w", ErrCorruptSnapshot, what, err)
}

func (d *streamDecoder) decode() (*StagedSnapshot, error) {
	f := &frameReader{in: bufio.NewReaderSize(d.src, 64<<10), h: xxhash.New()}
	var hdr [snapshotHeaderLen]byte
	if err := f.readRaw(hdr[:]); err != nil {
		return nil, err
	}
	if string(hdr[:len(snapshotMagic)]) != snapshotMagic {
		return nil, corruptf("bad magic %q", hdr[:len(snapshotMagic)])
	}
	if v := binary.BigEndian.Uint32(hdr[len(snapshotMagic):]); v != snapshotFormatVersion {
		return nil, corruptf("unsupported format version %d", v)
	}

	s := &StagedSnapshot{}
	var (
		count            uint64
		haveState        bool
		key, prevKey     []byte
		value            []byte
		engKey, engValue []byte
		// vb is declared here, not per record: passed to io.ReadFull it
		// escapes, and would cost an allocation per key.
		vb [versionLen]byte
	)
	for {
		typ, err := f.ReadByte()
		if err == io.EOF {
			break // end marker at a record boundary
		}
		if err != nil {
			return nil, err
		}
		plen, err := readUvarint(f)
		if err != nil {
			return nil, inRecord("record length", err)
		}
		if typ != recState && !haveState {
			return nil, corruptf("record type %d before the state record", typ)
		}
		switch typ {
		case recState:
			if haveState {
				return nil, corruptf("second state record")
			}
			if plen < stateFixedLen || plen-stateFixedLen > uint64(d.maxConfState) {
				return nil, corruptf("state record of %d bytes", plen)
			}
			var fixed [stateFixedLen]byte
			if _, err := io.ReadFull(f, fixed[:]); err != nil {
				return nil, inRecord("state record", err)
			}
			s.partition = binary.BigEndian.Uint64(fixed[0:])
			s.state.Index = binary.BigEndian.Uint64(fixed[8:])
			s.state.Term = binary.BigEndian.Uint64(fixed[16:])
			if n := plen - stateFixedLen; n > 0 {
				s.state.ConfState = make([]byte, n)
				if _, err := io.ReadFull(f, s.state.ConfState); err != nil {
					return nil, inRecord("conf state", err)
				}
			}
			haveState = true
			// The state keys sort before every data key of the partition, so
			// they go first into the sstable, whose keys must ascend.
			if err := d.stagingWrite(appliedStateKey(s.partition),
				encodeAppliedState(s.state.Index, s.state.Term)); err != nil {
				return nil, fmt.Errorf("engine: writing staging sstable: %w", err)
			}
			if len(s.state.ConfState) > 0 {
				if err := d.stagingWrite(confStateKey(s.partition), s.state.ConfState); err != nil {
					return nil, fmt.Errorf("engine: writing staging sstable: %w", err)
				}
			}

		case recKV:
			if plen > uint64(binary.MaxVarintLen64+d.maxKey+versionLen+d.maxValue) {
				return nil, corruptf("data record of %d bytes", plen)
			}
			klen, err := readUvarint(f)
			if err != nil {
				return nil, inRecord("key length", err)
			}
			if klen == 0 || klen > uint64(d.maxKey) {
				return nil, corruptf("key of %d bytes", klen)
			}
			fixed := uint64(uvarintLen(klen)) + klen + versionLen
			if plen < fixed || plen-fixed > uint64(d.maxValue) {
				return nil, corruptf("data record of %d bytes with a %d-byte key", plen, klen)
			}
			vlen := int(plen - fixed)
			key = grow(key, int(klen))
			if _, err := io.ReadFull(f, key); err != nil {
				return nil, inRecord("key", err)
			}
			if prevKey != nil && bytes.Compare(key, prevKey) <= 0 {
				return nil, corruptf("key %q after %q: out of order", key, prevKey)
			}
			if _, err := io.ReadFull(f, vb[:]); err != nil {
				return nil, inRecord("version", err)
			}
			version := binary.BigEndian.Uint64(vb[:])
			if version == 0 || version > s.state.Index {
				return nil, corruptf("key %q has version %d, snapshot index %d", key, version, s.state.Index)
			}
			value = grow(value, vlen)
			if _, err := io.ReadFull(f, value); err != nil {
				return nil, inRecord("value", err)
			}
			engKey = appendDataKey(engKey[:0], s.partition, key)
			engValue = appendDataValue(engValue[:0], version, value)
			if err := d.stagingWrite(engKey, engValue); err != nil {
				return nil, fmt.Errorf("engine: writing staging sstable: %w", err)
			}
			s.keys++
			s.bytes += int64(len(key)) + int64(vlen)
			key, prevKey = prevKey, key

		default:
			return nil, corruptf("unknown record type %d", typ)
		}
		count++
	}
	if !haveState {
		return nil, corruptf("no state record")
	}

	var n [8]byte
	if err := f.readRaw(n[:]); err != nil {
		return nil, err
	}
	want := f.h.Sum64()
	var sum [8]byte
	if _, err := io.ReadFull(f.in, sum[:]); err != nil {
		return nil, inRecord("checksum", err)
	}
	if got := binary.BigEndian.Uint64(sum[:]); got != want {
		return nil, corruptf("checksum %#x, computed %#x", got, want)
	}
	if got := binary.BigEndian.Uint64(n[:]); got != count {
		return nil, corruptf("trailer counts %d records, stream has %d", got, count)
	}
	if _, err := f.in.ReadByte(); err != io.EOF {
		if err == nil {
			return nil, corruptf("data after the trailer")
		}
		return nil, inRecord("end of stream", err)
	}
	return s, nil
}

// readUvarint reads a uvarint and insists on its shortest encoding, so the
// number of bytes it took is uvarintLen of its value, which the length
// arithmetic of data records relies on.
func readUvarint(r io.ByteReader) (uint64, error) {
	var x uint64
	for i := range binary.MaxVarintLen64 {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		if i == binary.MaxVarintLen64-1 && b > 1 {
			return 0, corruptf("uvarint overflows 64 bits")
		}
		x |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			if i > 0 && b == 0 {
				return 0, corruptf("uvarint not in its shortest form")
			}
			return x, nil
		}
	}
	return 0, corruptf("uvarint longer than %d bytes", binary.MaxVarintLen64)
}

// grow returns b resized to n bytes, reallocating only when it must.
func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n)
	}
	return b[:n]
}

// Install makes the snapshot the partition's whole state, atomically: one
// IngestAndExcise removes everything the partition had (data, applied
// state, conf state) and adds the snapshot's. It returns ErrStaleIndex, and
// changes nothing, if the snapshot's index is not above the partition's
// applied index. When Install returns nil the new state is durable, and
// SyncedApplied reports the snapshot's index.
//
// A failure of the ingestion is a storage failure and stops the engine.
func (s *StagedSnapshot) Install() (err error) {
	if s.done {
		return fmt.Errorf("%w: staged snapshot already installed or discarded", ErrClosed)
	}
	e := s.e
	if err := e.enter(); err != nil {
		return err
	}
	defer e.closeMu.RUnlock()
	e.writeMu.Lock()
	defer e.writeMu.Unlock()

	e.mu.Lock()
	var cur uint64
	if ps := e.mu.parts[s.partition]; ps != nil {
		cur = ps.applied.Index
	}
	e.mu.Unlock()
	if s.state.Index <= cur {
		return fmt.Errorf("%w: partition %d: snapshot index %d, applied %d",
			ErrStaleIndex, s.partition, s.state.Index, cur)
	}

	// Make every earlier commit durable first. The ingestion is durable when
	// it returns; without this, a crash could keep the ingestion but lose
	// earlier unsynced batches of other partitions, and the engine would no
	// longer hold a prefix of its history.
	if err := e.syncAndPublish(); err != nil {
		return err
	}
	defer e.recoverFatal(&err)
	span := pebble.KeyRange{Start: partitionStart(s.partition), End: partitionEnd(s.partition)}
	if _, err := e.db.IngestAndExcise(context.Background(), []string{s.path}, nil, nil, span); err != nil {
		return e.fail(fmt.Errorf("installing snapshot of partition %d: %w", s.partition, err))
	}
	s.done = true // Pebble removed the staging file

	e.mu.Lock()
	ps := e.mu.parts[s.partition]
	if ps == nil {
		ps = &partState{born: e.nextSeqLocked()}
		e.mu.parts[s.partition] = ps
	}
	ps.applied = s.state.clone()
	ps.synced = s.state.Index
	ps.gen = e.nextSeqLocked()
	e.mu.Unlock()
	e.log.Info("snapshot installed", "partition", s.partition, "index", s.state.Index,
		"term", s.state.Term, "keys", s.keys, "bytes", s.bytes)
	return nil
}

// Discard removes the staging file. It is a no-op after Install succeeded
// or a previous Discard.
func (s *StagedSnapshot) Discard() error {
	if s.done {
		return nil
	}
	s.done = true
	if err := s.e.fs.Remove(s.path); err != nil && !oserror.IsNotExist(err) {
		return fmt.Errorf("engine: removing staging file: %w", err)
	}
	return nil
}

// InstallSnapshot receives the stream from r and installs it. On error
// nothing is installed and no staging file is left.
func (e *Engine) InstallSnapshot(r io.Reader) (AppliedState, error) {
	s, err := e.ReceiveSnapshot(r)
	if err != nil {
		return AppliedState{}, err
	}
	if err := s.Install(); err != nil {
		if derr := s.Discard(); derr != nil {
			return AppliedState{}, errors.Join(err, derr)
		}
		return AppliedState{}, err
	}
	return s.State(), nil
}
