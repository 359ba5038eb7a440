package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// Preambles: the first bytes of every connection to KV_PORT, which tell the
// server whether a client or a peer node is calling.
const (
	// ClientPreamble starts a connection that speaks this protocol.
	ClientPreamble = "KVCLNT1\n"
	// PeerPreamble starts a connection carrying raft traffic between nodes
	// (package transport).
	PeerPreamble = "KVRAFT1\n"
	// PreambleSize is the length of either preamble.
	PreambleSize = 8
)

// Frame sizes.
const (
	// DefaultMaxFrameSize is the default limit on a frame's length field.
	DefaultMaxFrameSize = 16 << 20

	// FrameHeaderSize is the size of the bytes before the body: the length,
	// the request id and the code.
	FrameHeaderSize = 4 + 8 + 1

	// MinFrameLength is the smallest valid length field: a frame with an
	// empty body.
	MinFrameLength = 8 + 1

	// maxFrameLength is what the u32 length field can express.
	maxFrameLength = math.MaxUint32
)

var (
	// ErrFrameTooLarge is returned by FrameReader.Next when a frame's length
	// field is above the reader's limit. Nothing was allocated for it. The
	// stream cannot be resynchronised: the server answers
	// StatusMalformedFrame and closes the connection.
	ErrFrameTooLarge = errors.New("wire: frame too large")

	// ErrFrameTooShort is returned by FrameReader.Next when a frame's length
	// field is below MinFrameLength, so it cannot hold a request id and a
	// code. As with ErrFrameTooLarge, the stream is unusable after it.
	ErrFrameTooShort = errors.New("wire: frame too short")
)

// Frame is one frame read by a FrameReader.
type Frame struct {
	// ID is the request id: chosen by the client, echoed in the response.
	ID uint64
	// Code is the Op of a request or the Status of a response.
	Code uint8
	// Body is the msgpack body. It aliases the reader's buffer and is valid
	// only until the next call to Next.
	Body []byte
}

// Op returns the frame's code as an operation (for requests).
func (f Frame) Op() Op { return Op(f.Code) }

// Status returns the frame's code as a status (for responses).
func (f Frame) Status() Status { return Status(f.Code) }

// AppendFrame appends a frame with the given request id, code and body to
// dst and returns the extended slice. The caller keeps the body within the
// peer's frame limit; AppendFrame panics only if the body cannot be
// expressed at all (4 GiB or more), which is a programming error.
func AppendFrame(dst []byte, id uint64, code uint8, body []byte) []byte {
	n := uint64(MinFrameLength) + uint64(len(body))
	if n > maxFrameLength {
		panic(fmt.Sprintf("wire: frame body of %d bytes does not fit a frame", len(body)))
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(n))
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = append(dst, code)
	return append(dst, body...)
}

// EncodeFrame appends a frame whose body is v encoded as by Encode. The body
// is encoded in place, after the header, so a large value is copied once.
// On error dst is returned unchanged (in length).
func EncodeFrame(dst []byte, id uint64, code uint8, v any) ([]byte, error) {
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, 0) // length, patched below
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = append(dst, code)
	out, err := Encode(dst, v)
	if err != nil {
		return dst[:start], err
	}
	n := uint64(len(out) - start - 4)
	if n > maxFrameLength {
		return dst[:start], fmt.Errorf("wire: body of %d bytes does not fit a frame", n-MinFrameLength)
	}
	binary.BigEndian.PutUint32(out[start:], uint32(n))
	return out, nil
}

// Buffer sizes of the FrameReader.
const (
	// retainLimit is the largest body buffer a FrameReader keeps between
	// frames: a rare huge frame should not pin its memory on an idle
	// connection.
	retainLimit = 1 << 20
	// growStep is the size above which a body is read in growing steps
	// rather than into one buffer of the declared size, so a peer that
	// declares a large frame and then stalls or hangs up costs at most about
	// twice what it actually sent.
	growStep = 1 << 20
)

// FrameReader reads frames from a buffered stream, reusing one body buffer.
// It is not safe for concurrent use.
type FrameReader struct {
	r   *bufio.Reader
	max int
	hdr [FrameHeaderSize]byte
	buf []byte
	err error // sticky: once the stream is broken, it stays broken
}

// NewFrameReader returns a reader of frames from r whose length field may be
// at most maxFrameSize (DefaultMaxFrameSize if maxFrameSize <= 0). r is
// typically the same bufio.Reader the preamble was read from.
func NewFrameReader(r *bufio.Reader, maxFrameSize int) *FrameReader {
	if maxFrameSize <= 0 {
		maxFrameSize = DefaultMaxFrameSize
	}
	if uint64(maxFrameSize) > maxFrameLength {
		maxFrameSize = maxFrameLength
	}
	return &FrameReader{r: r, max: maxFrameSize}
}

// Next reads the next frame. Its Body is valid until the next call.
//
// Errors:
//   - io.EOF: the stream ended cleanly between two frames;
//   - io.ErrUnexpectedEOF: the stream ended inside a frame;
//   - ErrFrameTooLarge, ErrFrameTooShort (wrapped): a bad length field;
//   - any other read error of the underlying stream.
//
// After an error the reader is unusable and Next keeps returning that error.
func (fr *FrameReader) Next() (Frame, error) {
	if fr.err != nil {
		return Frame{}, fr.err
	}
	f, err := fr.next()
	if err != nil {
		fr.err = err
		fr.buf = nil
	}
	return f, err
}

func (fr *FrameReader) next() (Frame, error) {
	// The length is checked before the rest of the header is read: a bad
	// length means the bytes after it are not a header, and waiting for 9
	// more of them could block on a peer that sent nothing more.
	if _, err := io.ReadFull(fr.r, fr.hdr[:4]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(fr.hdr[:4])
	if n < MinFrameLength {
		return Frame{}, fmt.Errorf("%w: length %d, minimum %d", ErrFrameTooShort, n, MinFrameLength)
	}
	if uint64(n) > uint64(fr.max) {
		return Frame{}, fmt.Errorf("%w: length %d, limit %d", ErrFrameTooLarge, n, fr.max)
	}
	if _, err := io.ReadFull(fr.r, fr.hdr[4:]); err != nil {
		return Frame{}, noEOF(err)
	}
	body, err := fr.readBody(int(n) - MinFrameLength)
	if err != nil {
		return Frame{}, err
	}
	return Frame{
		ID:   binary.BigEndian.Uint64(fr.hdr[4:12]),
		Code: fr.hdr[12],
		Body: body,
	}, nil
}

// readBody reads n bytes into the reader's buffer; n is within the limit.
func (fr *FrameReader) readBody(n int) ([]byte, error) {
	if cap(fr.buf) > retainLimit {
		fr.buf = nil
	}
	if n <= cap(fr.buf) || n <= growStep {
		if n > cap(fr.buf) {
			fr.buf = make([]byte, n)
		}
		b := fr.buf[:n]
		if _, err := io.ReadFull(fr.r, b); err != nil {
			return nil, noEOF(err)
		}
		return b, nil
	}
	// A large body: allocate as the bytes arrive, doubling, never past n.
	b := make([]byte, growStep)
	read := 0
	for {
		if _, err := io.ReadFull(fr.r, b[read:]); err != nil {
			return nil, noEOF(err)
		}
		read = len(b)
		if read == n {
			fr.buf = b
			return b, nil
		}
		nb := make([]byte, min(n, 2*read))
		copy(nb, b)
		b = nb
	}
}

// noEOF turns io.EOF into io.ErrUnexpectedEOF, for reads inside a frame.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
