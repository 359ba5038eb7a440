package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/klauspost/compress/s2"
)

// fillPartition writes n keys to partition p of e, some with large values,
// then deletes a few, ending at index last.
func fillPartition(t testing.TB, e *Engine, p uint64, n int, prefix string) (last uint64) {
	t.Helper()
	b := e.NewBatch()
	defer b.Close()
	idx := e.Applied(p).Index
	for i := range n {
		idx++
		v := fmt.Sprintf("%s-value-%d", prefix, i)
		if i%97 == 0 {
			v = strings.Repeat(v, 2000) // crosses s2 blocks
		}
		if _, err := b.Apply(p, idx, 3, []Op{put(fmt.Sprintf("%s-%05d", prefix, i), v)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i += 10 {
		idx++
		if _, err := b.Apply(p, idx, 3, []Op{del(fmt.Sprintf("%s-%05d", prefix, i))}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.SetConfState(p, []byte("conf-"+prefix)); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	return idx
}

func snapshotBytes(t testing.TB, e *Engine, p uint64) ([]byte, AppliedState) {
	t.Helper()
	s, err := e.NewSnapshot(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var buf bytes.Buffer
	n, err := s.WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Fatalf("WriteTo returned %d, wrote %d", n, buf.Len())
	}
	return buf.Bytes(), s.State()
}

func TestSnapshotRoundTrip(t *testing.T) {
	const p = 5
	tests := []struct {
		name string
		// source prepares partition p on the source engine.
		source func(t *testing.T, e *Engine)
		// target prepares the target engine before the install.
		target func(t *testing.T, e *Engine)
	}{
		{
			name:   "replaces existing data",
			source: func(t *testing.T, e *Engine) { fillPartition(t, e, p, 300, "src") },
			target: func(t *testing.T, e *Engine) {
				fillPartition(t, e, p, 50, "old")
				mustApply(t, e, p, e.Applied(p).Index+1, 3, put("src-00001", "stale"))
			},
		},
		{
			name:   "new partition",
			source: func(t *testing.T, e *Engine) { fillPartition(t, e, p, 100, "src") },
			target: func(t *testing.T, e *Engine) {},
		},
		{
			name: "empty partition replaces data",
			source: func(t *testing.T, e *Engine) {
				mustApply(t, e, p, 1, 1, put("gone", "soon"))
				mustApply(t, e, p, 2, 1, del("gone"))
				mustApply(t, e, p, 3, 2)
			},
			target: func(t *testing.T, e *Engine) {
				mustApply(t, e, p, 1, 1, put("a", "1"), put("b", "2"))
				b := e.NewBatch()
				defer b.Close()
				_ = b.SetConfState(p, []byte("old-conf"))
				if err := b.Commit(); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := openEngine(t, vfs.NewMem(), "src", nil)
			// Neighbours on both sides of p must not be touched.
			mustApply(t, src, p-1, 1, 1, put("src-neighbour", "x"))
			mustApply(t, src, p+1, 1, 1, put("src-neighbour", "x"))
			tc.source(t, src)

			dstFS := vfs.NewCrashableMem()
			dst := openEngine(t, dstFS, "dst", nil)
			mustApply(t, dst, p-1, 1, 1, put("dst-neighbour", "y"))
			mustApply(t, dst, p+1, 4, 1, put("dst-neighbour", "z"))
			tc.target(t, dst)
			before := map[uint64]string{p - 1: partitionDump(t, dst, p-1), p + 1: partitionDump(t, dst, p+1)}

			stream, state := snapshotBytes(t, src, p)
			// Writes after the snapshot was taken are not in it.
			snap, err := src.NewSnapshot(p)
			if err != nil {
				t.Fatal(err)
			}
			mustApply(t, src, p, state.Index+1, 9, put("after", "snapshot"))
			var again bytes.Buffer
			if _, err := snap.WriteTo(&again); err != nil {
				t.Fatal(err)
			}
			snap.Close()
			if !bytes.Equal(again.Bytes(), stream) {
				t.Fatal("snapshot stream changed after a later write")
			}

			staged, err := dst.ReceiveSnapshot(bytes.NewReader(stream))
			if err != nil {
				t.Fatal(err)
			}
			if staged.Partition() != p || !reflect.DeepEqual(staged.State(), state) ||
				staged.StreamBytes() != int64(len(stream)) {
				t.Fatalf("staged: partition %d state %+v stream %d", staged.Partition(), staged.State(), staged.StreamBytes())
			}
			wantKeys, wantBytes, err := src.PartitionStats(p)
			if err != nil {
				t.Fatal(err)
			}
			// The later write "after" added one key of 5+8 bytes.
			if staged.Keys() != wantKeys-1 || staged.Bytes() != wantBytes-13 {
				t.Fatalf("staged counts %d keys %d bytes, source had %d, %d before the later write",
					staged.Keys(), staged.Bytes(), wantKeys-1, wantBytes-13)
			}
			if err := staged.Install(); err != nil {
				t.Fatal(err)
			}
			if err := staged.Install(); !errors.Is(err, ErrClosed) {
				t.Fatalf("second Install: %v", err)
			}
			if err := staged.Discard(); err != nil {
				t.Fatalf("Discard after Install: %v", err)
			}

			check := func(t *testing.T, dst *Engine) {
				t.Helper()
				want := map[string]kv{}
				for k, v := range partitionData(t, src, p) {
					if k != "after" {
						want[k] = v
					}
				}
				if got := partitionData(t, dst, p); !reflect.DeepEqual(got, want) {
					t.Fatalf("target data (%d keys) differs from source (%d keys)", len(got), len(want))
				}
				if got := dst.Applied(p); !reflect.DeepEqual(got, state) {
					t.Fatalf("target applied %+v, want %+v", got, state)
				}
				if got := dst.SyncedApplied(p); got != state.Index {
					t.Fatalf("target synced %d, want %d", got, state.Index)
				}
				for q, d := range before {
					if got := partitionDump(t, dst, q); got != d {
						t.Fatalf("neighbour partition %d changed:\n%s\nwant\n%s", q, got, d)
					}
				}
				if names := stagingFiles(t, dst); len(names) != 0 {
					t.Fatalf("staging files left: %v", names)
				}
			}
			check(t, dst)

			// The install is durable when it returns: a crash that keeps only
			// synced data still has it.
			crashed := dstFS.CrashClone(vfs.CrashCloneCfg{})
			re := openEngine(t, crashed, "dst", nil)
			check(t, re)
			// And the engine keeps working on top of it.
			mustApply(t, re, p, state.Index+1, state.Term, put("more", "data"))
		})
	}
}

// TestSnapshotOnDisk installs a snapshot into an engine on a real disk,
// where ingestion hard-links the staging file.
func TestSnapshotOnDisk(t *testing.T) {
	src := openEngine(t, vfs.NewMem(), "src", nil)
	last := fillPartition(t, src, 9, 500, "k")
	dst := openEngine(t, vfs.Default, t.TempDir(), nil)
	fillPartition(t, dst, 9, 20, "old")
	stream, _ := snapshotBytes(t, src, 9)
	st, err := dst.InstallSnapshot(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if st.Index != last {
		t.Fatalf("installed index %d, want %d", st.Index, last)
	}
	if !reflect.DeepEqual(partitionData(t, dst, 9), partitionData(t, src, 9)) {
		t.Fatal("target differs from source")
	}
	if names := stagingFiles(t, dst); len(names) != 0 {
		t.Fatalf("staging files left: %v", names)
	}
}

func TestSnapshotStale(t *testing.T) {
	src := openEngine(t, vfs.NewMem(), "src", nil)
	mustApply(t, src, 1, 5, 1, put("a", "1"))
	stream, _ := snapshotBytes(t, src, 1)
	empty, _ := snapshotBytes(t, src, 2) // no state at all: index 0

	for _, tc := range []struct {
		name    string
		p       uint64
		applied uint64
		stream  []byte
	}{
		{"equal index", 1, 5, stream},
		{"older snapshot", 1, 6, stream},
		{"index zero", 2, 0, empty},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := openEngine(t, vfs.NewMem(), "dst", nil)
			p := tc.p
			if tc.applied > 0 {
				mustApply(t, dst, p, tc.applied, 1, put("mine", "x"))
			}
			before := rawDump(t, dst)
			if _, err := dst.InstallSnapshot(bytes.NewReader(tc.stream)); !errors.Is(err, ErrStaleIndex) {
				t.Fatalf("InstallSnapshot error = %v, want ErrStaleIndex", err)
			}
			if rawDump(t, dst) != before {
				t.Fatal("stale install changed the engine")
			}
			if names := stagingFiles(t, dst); len(names) != 0 {
				t.Fatalf("staging files left: %v", names)
			}
		})
	}
}

// TestSnapshotCorruption flips bits and truncates a valid stream at many
// positions: every damaged stream must be rejected, leave the target as it
// was, and leave no staging file.
func TestSnapshotCorruption(t *testing.T) {
	const p = 4
	src := openEngine(t, vfs.NewMem(), "src", nil)
	fillPartition(t, src, p, 400, "k")
	stream, _ := snapshotBytes(t, src, p)

	dst := openEngine(t, vfs.NewMem(), "dst", nil)
	fillPartition(t, dst, p, 30, "old")
	mustApply(t, dst, p+1, 1, 1, put("other", "x"))
	before := rawDump(t, dst)

	// Positions: every byte of the first and last 300, and a stride through
	// the middle.
	var positions []int
	for i := range len(stream) {
		if i < 300 || i >= len(stream)-300 || i%97 == 0 {
			positions = append(positions, i)
		}
	}
	expectRejected := func(t *testing.T, what string, data []byte) {
		t.Helper()
		_, err := dst.InstallSnapshot(bytes.NewReader(data))
		if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("%s: error = %v, want ErrCorruptSnapshot", what, err)
		}
		if names := stagingFiles(t, dst); len(names) != 0 {
			t.Fatalf("%s: staging files left: %v", what, names)
		}
	}
	t.Run("flipped bit", func(t *testing.T) {
		for _, pos := range positions {
			data := bytes.Clone(stream)
			data[pos] ^= 1 << (pos % 8)
			expectRejected(t, fmt.Sprintf("bit flip at %d of %d", pos, len(stream)), data)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for _, n := range positions {
			expectRejected(t, fmt.Sprintf("truncated to %d of %d", n, len(stream)), stream[:n])
		}
	})
	t.Run("trailing garbage", func(t *testing.T) {
		expectRejected(t, "trailing byte", append(bytes.Clone(stream), 0))
		expectRejected(t, "second stream", append(bytes.Clone(stream), stream[snapshotHeaderLen:]...))
	})
	if got := rawDump(t, dst); got != before {
		t.Fatal("a rejected stream changed the target")
	}
	// The undamaged stream still installs.
	if _, err := dst.InstallSnapshot(bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
}

// rawRecord is one record of a hand-built stream.
type rawRecord struct {
	typ     byte
	payload []byte
}

func stateRecord(p, index, term uint64, conf []byte) rawRecord {
	b := binary.BigEndian.AppendUint64(nil, p)
	b = binary.BigEndian.AppendUint64(b, index)
	b = binary.BigEndian.AppendUint64(b, term)
	return rawRecord{recState, append(b, conf...)}
}

func kvRecord(key string, version uint64, value string) rawRecord {
	b := binary.AppendUvarint(nil, uint64(len(key)))
	b = append(b, key...)
	b = binary.BigEndian.AppendUint64(b, version)
	return rawRecord{recKV, append(b, value...)}
}

// buildStream encodes records with a correct header, framing, count and
// checksum, so only the property under test is wrong. count < 0 means the
// true count.
func buildStream(t *testing.T, magic string, recs []rawRecord, count int) []byte {
	t.Helper()
	var out bytes.Buffer
	fw := &frameWriter{w: &out, h: xxhash.New()}
	if err := fw.writeRaw(binary.BigEndian.AppendUint32([]byte(magic), snapshotFormatVersion)); err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := fw.write(append(binary.AppendUvarint([]byte{r.typ}, uint64(len(r.payload))), r.payload...)); err != nil {
			t.Fatal(err)
		}
	}
	if count < 0 {
		count = len(recs)
	}
	return finishStream(t, fw, &out, uint64(count))
}

// finishStream writes the end marker, count and checksum.
func finishStream(t *testing.T, fw *frameWriter, out *bytes.Buffer, count uint64) []byte {
	t.Helper()
	if err := fw.flush(); err != nil {
		t.Fatal(err)
	}
	if err := fw.writeRaw(binary.BigEndian.AppendUint64(make([]byte, 4), count)); err != nil {
		t.Fatal(err)
	}
	out.Write(binary.BigEndian.AppendUint64(nil, fw.h.Sum64()))
	return out.Bytes()
}

// rawFrames builds a stream whose frames are given as raw bytes, with a
// correct checksum.
func rawFrames(t *testing.T, st rawRecord, frames ...[]byte) []byte {
	t.Helper()
	var out bytes.Buffer
	fw := &frameWriter{w: &out, h: xxhash.New()}
	_ = fw.writeRaw(binary.BigEndian.AppendUint32([]byte(snapshotMagic), snapshotFormatVersion))
	_ = fw.write(append(binary.AppendUvarint([]byte{st.typ}, uint64(len(st.payload))), st.payload...))
	_ = fw.flush()
	for _, f := range frames {
		_ = fw.writeRaw(f)
	}
	return finishStream(t, fw, &out, 1)
}

func TestSnapshotMalformed(t *testing.T) {
	st := stateRecord(3, 10, 2, []byte("conf"))
	huge := rawRecord{recKV, binary.AppendUvarint(nil, 1<<40)}
	tests := []struct {
		name   string
		stream func(t *testing.T) []byte
	}{
		{"empty stream", func(t *testing.T) []byte { return nil }},
		{"wrong magic", func(t *testing.T) []byte { return buildStream(t, "KVNSNAP\x01", []rawRecord{st}, -1) }},
		{"wrong version", func(t *testing.T) []byte {
			b := buildStream(t, snapshotMagic, []rawRecord{st}, -1)
			b[len(snapshotMagic)+3] = 2
			return b
		}},
		{"no state record", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{kvRecord("a", 1, "v")}, -1)
		}},
		{"two state records", func(t *testing.T) []byte { return buildStream(t, snapshotMagic, []rawRecord{st, st}, -1) }},
		{"keys out of order", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("b", 1, "v"), kvRecord("a", 1, "v")}, -1)
		}},
		{"duplicate key", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 1, "v"), kvRecord("a", 2, "v")}, -1)
		}},
		{"version above snapshot index", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 11, "v")}, -1)
		}},
		{"version zero", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 0, "v")}, -1)
		}},
		{"empty key", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("", 1, "v")}, -1)
		}},
		{"key over limit", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord(strings.Repeat("k", 65), 1, "v")}, -1)
		}},
		{"value over limit", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 1, strings.Repeat("v", 129))}, -1)
		}},
		{"conf state over limit", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{stateRecord(3, 10, 2, make([]byte, 129))}, -1)
		}},
		{"huge record length", func(t *testing.T) []byte {
			// Claims 1 TiB; must be refused before any allocation.
			return buildStream(t, snapshotMagic, []rawRecord{st, huge}, -1)
		}},
		{"huge key length", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, {recKV, binary.AppendUvarint(make([]byte, 0, 20), 1<<40)}}, -1)
		}},
		{"key length not in shortest form", func(t *testing.T) []byte {
			// Key length 1 as two bytes; the record length counts them.
			payload := append([]byte{0x81, 0x00, 'a'}, binary.BigEndian.AppendUint64(nil, 1)...)
			return buildStream(t, snapshotMagic, []rawRecord{st, {recKV, append(payload, 'v')}}, -1)
		}},
		{"uvarint overflow", func(t *testing.T) []byte {
			payload := bytes.Repeat([]byte{0xff}, 10)
			return buildStream(t, snapshotMagic, []rawRecord{st, {recKV, append(payload, 0x01)}}, -1)
		}},
		{"unknown record type", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, {7, []byte("x")}}, -1)
		}},
		{"wrong count", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 1, "v")}, 3)
		}},
		{"short state record", func(t *testing.T) []byte {
			return buildStream(t, snapshotMagic, []rawRecord{{recState, make([]byte, 10)}}, -1)
		}},
		{"frame length over limit", func(t *testing.T) []byte {
			return rawFrames(t, st, binary.BigEndian.AppendUint32(nil, uint32(maxFrameLen+1)))
		}},
		{"frame that is not s2", func(t *testing.T) []byte {
			return rawFrames(t, st, []byte{0, 0, 0, 3, 0xff, 0xff, 0xff})
		}},
		{"frame decoding to nothing", func(t *testing.T) []byte {
			return rawFrames(t, st, append([]byte{0, 0, 0, 1}, s2.Encode(nil, nil)...))
		}},
		{"record cut by the end marker", func(t *testing.T) []byte {
			kv := kvRecord("a", 1, "v")
			b := append(binary.AppendUvarint([]byte{kv.typ}, uint64(len(kv.payload))), kv.payload...)
			enc := s2.Encode(nil, b[:len(b)-1])
			return rawFrames(t, st, append(binary.BigEndian.AppendUint32(nil, uint32(len(enc))), enc...))
		}},
		{"bad checksum", func(t *testing.T) []byte {
			b := buildStream(t, snapshotMagic, []rawRecord{st}, -1)
			b[len(b)-1]++
			return b
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := openEngine(t, vfs.NewMem(), "dst", &Options{MaxKeySize: 64, MaxValueSize: 128, MaxConfStateSize: 128})
			mustApply(t, dst, 3, 1, 1, put("keep", "me"))
			before := rawDump(t, dst)
			_, err := dst.InstallSnapshot(bytes.NewReader(tc.stream(t)))
			if !errors.Is(err, ErrCorruptSnapshot) {
				t.Fatalf("error = %v, want ErrCorruptSnapshot", err)
			}
			if rawDump(t, dst) != before {
				t.Fatal("target changed")
			}
			if names := stagingFiles(t, dst); len(names) != 0 {
				t.Fatalf("staging files left: %v", names)
			}
		})
	}
	// The builder itself produces streams the engine accepts.
	t.Run("valid hand-built stream", func(t *testing.T) {
		dst := openEngine(t, vfs.NewMem(), "dst", nil)
		s := buildStream(t, snapshotMagic, []rawRecord{st, kvRecord("a", 1, "v"), kvRecord("b", 10, "")}, -1)
		if _, err := dst.InstallSnapshot(bytes.NewReader(s)); err != nil {
			t.Fatal(err)
		}
		want := map[string]kv{"a": {"v", 1}, "b": {"", 10}}
		if got := partitionData(t, dst, 3); !reflect.DeepEqual(got, want) {
			t.Fatalf("data = %v", got)
		}
	})
}

// errReader fails after n bytes with a non-EOF error.
type errReader struct {
	r   io.Reader
	n   int
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, r.err
	}
	if len(p) > r.n {
		p = p[:r.n]
	}
	n, err := r.r.Read(p)
	r.n -= n
	return n, err
}

func TestSnapshotSourceError(t *testing.T) {
	src := openEngine(t, vfs.NewMem(), "src", nil)
	fillPartition(t, src, 1, 50, "k")
	stream, _ := snapshotBytes(t, src, 1)
	dst := openEngine(t, vfs.NewMem(), "dst", nil)
	netErr := errors.New("connection reset")
	_, err := dst.ReceiveSnapshot(&errReader{r: bytes.NewReader(stream), n: len(stream) / 2, err: netErr})
	if !errors.Is(err, netErr) || errors.Is(err, ErrCorruptSnapshot) {
		t.Fatalf("error = %v, want the reader's error, not corruption", err)
	}
	if names := stagingFiles(t, dst); len(names) != 0 {
		t.Fatalf("staging files left: %v", names)
	}
}

func TestStagedDiscardAndOpenCleansStaging(t *testing.T) {
	fs := vfs.NewMem()
	src := openEngine(t, vfs.NewMem(), "src", nil)
	fillPartition(t, src, 1, 20, "k")
	stream, _ := snapshotBytes(t, src, 1)

	dst := openEngine(t, fs, "dst", nil)
	s1, err := dst.ReceiveSnapshot(bytes.NewReader(stream))
	if err != nil {
		t.Fatal(err)
	}
	if err := s1.Discard(); err != nil {
		t.Fatal(err)
	}
	if names := stagingFiles(t, dst); len(names) != 0 {
		t.Fatalf("staging files after Discard: %v", names)
	}
	if err := s1.Install(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Install after Discard: %v", err)
	}
	// A staged snapshot left behind (as by a crash) is removed by Open.
	if _, err := dst.ReceiveSnapshot(bytes.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	if names := stagingFiles(t, dst); len(names) != 1 {
		t.Fatalf("staging files = %v, want one", names)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	dst = openEngine(t, fs, "dst", nil)
	if names := stagingFiles(t, dst); len(names) != 0 {
		t.Fatalf("staging files after reopen: %v", names)
	}
	if parts := dst.Partitions(); len(parts) != 0 {
		t.Fatalf("partitions after reopen = %v", parts)
	}
}

func TestReadUvarint(t *testing.T) {
	for _, x := range []uint64{0, 1, 127, 128, 300, 1<<32 - 1, 1 << 63, 1<<64 - 1} {
		enc := binary.AppendUvarint(nil, x)
		got, err := readUvarint(bytes.NewReader(enc))
		if err != nil || got != x {
			t.Errorf("readUvarint(%x) = %d, %v; want %d", enc, got, err, x)
		}
		if uvarintLen(x) != len(enc) {
			t.Errorf("uvarintLen(%d) = %d, want %d", x, uvarintLen(x), len(enc))
		}
	}
	for _, bad := range [][]byte{
		{0x80, 0x00},                                // overlong zero
		bytes.Repeat([]byte{0xff}, 11),              // too long
		append(bytes.Repeat([]byte{0xff}, 9), 0x02), // overflow
	} {
		if _, err := readUvarint(bytes.NewReader(bad)); !errors.Is(err, ErrCorruptSnapshot) {
			t.Errorf("readUvarint(%x) error = %v, want ErrCorruptSnapshot", bad, err)
		}
	}
	if _, err := readUvarint(bytes.NewReader([]byte{0x80})); err != io.EOF {
		t.Errorf("truncated uvarint: %v, want io.EOF", err)
	}
}

// FuzzReceiveSnapshot feeds arbitrary streams to the decoder: it must never
// panic, must reject with ErrCorruptSnapshot what it cannot accept, and must
// leave no staging file either way.
func FuzzReceiveSnapshot(f *testing.F) {
	src := openEngine(f, vfs.NewMem(), "src", nil)
	mustApply(f, src, 2, 1, 1, put("a", "1"), put("b", strings.Repeat("x", 100)))
	mustApply(f, src, 2, 2, 1, del("a"))
	valid, _ := snapshotBytes(f, src, 2)
	empty, _ := snapshotBytes(f, src, 3)
	f.Add(valid)
	f.Add(empty)
	f.Add(valid[:len(valid)-9])
	f.Add(valid[:snapshotHeaderLen])
	f.Add([]byte(snapshotMagic))

	dst := openEngine(f, vfs.NewMem(), "dst", &Options{MaxKeySize: 256, MaxValueSize: 4096, MaxConfStateSize: 256})
	f.Fuzz(func(t *testing.T, stream []byte) {
		s, err := dst.ReceiveSnapshot(bytes.NewReader(stream))
		if err == nil {
			if s.Keys() < 0 || s.StreamBytes() != int64(len(stream)) {
				t.Fatalf("accepted stream with %d keys, %d of %d bytes read", s.Keys(), s.StreamBytes(), len(stream))
			}
			if err := s.Discard(); err != nil {
				t.Fatal(err)
			}
		} else if !errors.Is(err, ErrCorruptSnapshot) {
			t.Fatalf("error %v does not wrap ErrCorruptSnapshot", err)
		}
		if names := stagingFiles(t, dst); len(names) != 0 {
			t.Fatalf("staging files left: %v", names)
		}
	})
}
