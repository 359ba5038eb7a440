package transport

// This file holds every encoding the transport puts on the wire: the
// handshake, the status reply, message frames and their payload, and
// snapshot chunks (which are frames too). doc.go draws the layouts.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/s2"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// DefaultPreamble is the default Config.Preamble: the bytes a dialer writes
// first on every connection so that a port shared with other protocols can
// route the connection to HandleConn.
const DefaultPreamble = "KVRAFT1\n"

// protocolVersion is the handshake version. A change to anything after the
// handshake bumps it; an acceptor refuses versions it does not speak, so
// mixed versions fail loudly at connect time instead of misparsing frames.
const protocolVersion = 1

// streamKind says what a connection carries after the handshake.
type streamKind uint8

const (
	// kindMessages is a long-lived connection carrying message frames one
	// way, from the dialer to the acceptor.
	kindMessages streamKind = 1
	// kindSnapshot is a connection carrying one snapshot stream, and the
	// receiver's verdict back.
	kindSnapshot streamKind = 2
)

func (k streamKind) String() string {
	switch k {
	case kindMessages:
		return "messages"
	case kindSnapshot:
		return "snapshot"
	default:
		return fmt.Sprintf("kind(%d)", uint8(k))
	}
}

// handshakeSize is the fixed size of the handshake: version(1) kind(1)
// cluster(8) from(8) to(8). It is fixed so the acceptor can read it with one
// bounded read, before it trusts anything the peer says.
const handshakeSize = 1 + 1 + 8 + 8 + 8

// handshake is what the dialer sends right after the preamble.
type handshake struct {
	version uint8
	kind    streamKind
	cluster uint64
	from    uint64
	to      uint64
}

func appendHandshake(dst []byte, h handshake) []byte {
	dst = append(dst, h.version, byte(h.kind))
	dst = binary.BigEndian.AppendUint64(dst, h.cluster)
	dst = binary.BigEndian.AppendUint64(dst, h.from)
	dst = binary.BigEndian.AppendUint64(dst, h.to)
	return dst
}

func readHandshake(r io.Reader) (handshake, error) {
	var b [handshakeSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return handshake{}, err
	}
	return handshake{
		version: b[0],
		kind:    streamKind(b[1]),
		cluster: binary.BigEndian.Uint64(b[2:]),
		from:    binary.BigEndian.Uint64(b[10:]),
		to:      binary.BigEndian.Uint64(b[18:]),
	}, nil
}

// statusCode is the first byte of a status: the acceptor's answer to a
// handshake, and a snapshot receiver's verdict.
type statusCode uint8

const (
	statusOK statusCode = iota
	statusBadVersion
	statusClusterMismatch
	statusWrongNode
	statusClusterUnknown
	statusRefused // blocked, or shutting down
	statusBadHandshake
	statusFailed // snapshot verdict: the receiver returned an error
)

// err maps a status to the error the dialer or snapshot sender returns, so
// callers can use errors.Is across the wire.
func (c statusCode) err(msg string) error {
	var sentinel error
	switch c {
	case statusOK:
		return nil
	case statusBadVersion, statusBadHandshake:
		sentinel = ErrHandshake
	case statusClusterMismatch:
		sentinel = ErrClusterMismatch
	case statusWrongNode:
		sentinel = ErrWrongNode
	case statusClusterUnknown:
		sentinel = ErrClusterIDUnknown
	case statusRefused:
		sentinel = ErrRefused
	case statusFailed:
		sentinel = ErrSnapshotRejected
	default:
		sentinel = ErrHandshake
		msg = fmt.Sprintf("unknown status %d: %s", c, msg)
	}
	return fmt.Errorf("%w: %s", sentinel, msg)
}

// maxStatusMsg bounds the text of a status. The reader's bound is the u16
// length itself; the writer truncates to this so an error carrying a huge
// string cannot bloat the reply.
const maxStatusMsg = 4 << 10

func appendStatus(dst []byte, code statusCode, msg string) []byte {
	if len(msg) > maxStatusMsg {
		msg = msg[:maxStatusMsg]
	}
	dst = append(dst, byte(code))
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(msg)))
	return append(dst, msg...)
}

func readStatus(r io.Reader) (statusCode, string, error) {
	var h [3]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, "", err
	}
	n := binary.BigEndian.Uint16(h[1:])
	msg := make([]byte, n) // at most 64 KiB: bounded by the field's width
	if _, err := io.ReadFull(r, msg); err != nil {
		return 0, "", noEOF(err)
	}
	return statusCode(h[0]), string(msg), nil
}

// Frame layout: [u32 payload length, big-endian][u8 flags][payload].
const (
	frameHeaderSize = 5

	// flagS2 marks a payload compressed as one s2 block.
	flagS2 = 1 << 0
	// knownFlags are the flag bits this version understands. A frame with
	// any other bit set is refused rather than misread.
	knownFlags = flagS2
)

// frameReader reads frames from a connection, reusing its buffers. It checks
// the declared length against max before allocating anything, and the
// decompressed length too, so a hostile or corrupt header cannot make it
// allocate more than max bytes.
type frameReader struct {
	r   io.Reader
	max int
	hdr [frameHeaderSize]byte
	buf []byte // wire payload
	dec []byte // decompressed payload
}

// retainLimit is the largest buffer a reader or encoder keeps between
// frames; a rare huge frame should not pin its memory on an idle connection.
const retainLimit = 4 << 20

// next reads one frame and returns its (decompressed) payload, valid until
// the next call, and the frame's size on the wire. It returns io.EOF only
// when the stream ends cleanly at a frame boundary; a stream that ends
// inside a frame yields io.ErrUnexpectedEOF.
func (fr *frameReader) next() (payload []byte, wire int, err error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return nil, 0, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[:4])
	flags := fr.hdr[4]
	if uint64(n) > uint64(fr.max) {
		return nil, 0, fmt.Errorf("%w: declared %d bytes, limit %d", ErrFrameTooLarge, n, fr.max)
	}
	if flags&^knownFlags != 0 {
		return nil, 0, fmt.Errorf("%w: unknown flags %#x", ErrCorruptFrame, flags)
	}
	if cap(fr.buf) > retainLimit {
		fr.buf = nil
	}
	if cap(fr.buf) < int(n) {
		fr.buf = make([]byte, n)
	}
	fr.buf = fr.buf[:n]
	if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
		return nil, 0, noEOF(err)
	}
	wire = frameHeaderSize + int(n)
	if flags&flagS2 == 0 {
		return fr.buf, wire, nil
	}
	dlen, err := s2.DecodedLen(fr.buf)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrCorruptFrame, err)
	}
	if dlen > fr.max {
		return nil, 0, fmt.Errorf("%w: decompresses to %d bytes, limit %d", ErrFrameTooLarge, dlen, fr.max)
	}
	if cap(fr.dec) > retainLimit {
		fr.dec = nil
	}
	if cap(fr.dec) < dlen {
		fr.dec = make([]byte, dlen)
	}
	fr.dec, err = s2.Decode(fr.dec[:cap(fr.dec)], fr.buf)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrCorruptFrame, err)
	}
	return fr.dec, wire, nil
}

// noEOF turns io.EOF into io.ErrUnexpectedEOF: once part of a structure has
// been read, the stream ending is truncation, never a clean end.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// decodePayload parses a message frame's payload, a sequence of
// [uvarint group][uvarint len][len bytes of proto-marshaled raftpb.Message],
// appending to msgs. Decoded messages never alias payload, so the caller may
// reuse it.
func decodePayload(payload []byte, msgs []Message) ([]Message, error) {
	for off := 0; off < len(payload); {
		group, n := binary.Uvarint(payload[off:])
		if n <= 0 {
			return msgs, fmt.Errorf("%w: bad group varint at offset %d", ErrCorruptFrame, off)
		}
		off += n
		size, n := binary.Uvarint(payload[off:])
		if n <= 0 {
			return msgs, fmt.Errorf("%w: bad length varint at offset %d", ErrCorruptFrame, off)
		}
		off += n
		if size > uint64(len(payload)-off) {
			return msgs, fmt.Errorf("%w: message of %d bytes at offset %d overruns the %d-byte payload", ErrCorruptFrame, size, off, len(payload))
		}
		m, err := decodeMessage(payload[off : off+int(size)])
		if err != nil {
			return msgs, fmt.Errorf("%w: group %d: %v", ErrCorruptFrame, group, err)
		}
		off += int(size)
		msgs = append(msgs, Message{Group: group, Msg: m})
	}
	return msgs, nil
}

// frameEncoder packs messages into as few frames as the limits allow, all in
// one buffer so the sender can hand a whole batch to a single Write.
type frameEncoder struct {
	max       int // payload limit of one frame (the peer's MaxFrameSize)
	target    int // soft limit: start a new frame once the open one is this big
	threshold int // compress payloads larger than this; negative: never

	buf     []byte
	scratch []byte
	open    int // offset of the open frame's header in buf; -1 if none
	frames  int
}

// maxFrameTarget is the soft size of one coalesced frame. Bigger frames save
// little (a header is 5 bytes) but make the receiver hold and decode more
// before the first message of the frame reaches raft, and compress one big
// block instead of pipelining.
const maxFrameTarget = 1 << 20

func newFrameEncoder(maxFrame, threshold int) *frameEncoder {
	return &frameEncoder{max: maxFrame, target: min(maxFrame, maxFrameTarget), threshold: threshold, open: -1}
}

// reset empties the encoder for the next batch, dropping a buffer that a
// rare huge batch grew beyond retainLimit.
func (e *frameEncoder) reset() {
	if cap(e.buf) > retainLimit {
		e.buf = nil
	}
	if cap(e.scratch) > retainLimit {
		e.scratch = nil
	}
	e.buf = e.buf[:0]
	e.open = -1
	e.frames = 0
}

// add appends one message. A message whose record alone exceeds the frame
// limit is refused with ErrMessageTooLarge and leaves the encoder unchanged.
func (e *frameEncoder) add(group uint64, m *raftpb.Message) error {
	size := proto.Size(m)
	rec := uvarintLen(group) + uvarintLen(uint64(size)) + size
	if rec > e.max {
		return fmt.Errorf("%w: %d bytes, frame limit %d", ErrMessageTooLarge, rec, e.max)
	}
	if e.open >= 0 {
		cur := len(e.buf) - e.open - frameHeaderSize
		if cur >= e.target || cur+rec > e.max {
			e.closeFrame()
		}
	}
	if e.open < 0 {
		e.open = len(e.buf)
		e.buf = append(e.buf, make([]byte, frameHeaderSize)...)
	}
	e.buf = binary.AppendUvarint(e.buf, group)
	e.buf = binary.AppendUvarint(e.buf, uint64(size))
	var err error
	// UseCachedSize: proto.Size above just computed and cached the sizes.
	e.buf, err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(e.buf, m)
	if err != nil {
		return fmt.Errorf("transport: marshal message: %w", err)
	}
	return nil
}

// closeFrame finishes the open frame: compresses it in place when that pays,
// and fills in its header.
func (e *frameEncoder) closeFrame() {
	if e.open < 0 {
		return
	}
	e.buf = finishFrame(e.buf, e.open, e.threshold, &e.scratch)
	e.open = -1
	e.frames++
}

// bytes closes the open frame and returns every frame encoded since reset.
func (e *frameEncoder) bytes() []byte {
	e.closeFrame()
	return e.buf
}

// finishFrame completes the frame whose header starts at buf[start] and
// whose payload is the rest of buf. The payload is s2-compressed when it is
// larger than threshold and compression makes it smaller; otherwise it is
// sent as is, so incompressible data costs one failed attempt, not a bigger
// frame.
func finishFrame(buf []byte, start, threshold int, scratch *[]byte) []byte {
	payload := buf[start+frameHeaderSize:]
	var flags byte
	if threshold >= 0 && len(payload) > threshold {
		c := s2.Encode((*scratch)[:cap(*scratch)], payload)
		*scratch = c
		if len(c) < len(payload) {
			n := copy(payload, c)
			buf = buf[:start+frameHeaderSize+n]
			payload = payload[:n]
			flags |= flagS2
		}
	}
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	buf[start+4] = flags
	return buf
}

// appendFrame appends data as one frame (compressed when it pays). Snapshot
// chunks use it; a zero-length data is the end-of-body marker.
func appendFrame(dst, data []byte, threshold int, scratch *[]byte) []byte {
	start := len(dst)
	dst = append(dst, make([]byte, frameHeaderSize)...)
	dst = append(dst, data...)
	return finishFrame(dst, start, threshold, scratch)
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}
