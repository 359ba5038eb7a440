package wire

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync"

	"github.com/hashicorp/go-msgpack/v2/codec"
)

// Request and response bodies. The codec tags are the field names of
// docs/protocol.md. Keys and values are msgpack bin; decoders also accept
// str, which some msgpack libraries write for byte strings.

// GetRequest is the body of OpGet.
type GetRequest struct {
	Key []byte `codec:"k"`
	// Stale asks the node to read its local replica without a linearizable
	// read barrier: fast, possibly behind.
	Stale bool `codec:"stale,omitempty"`
}

// GetResponse answers a GetRequest (StatusOK). An absent key is
// StatusNotFound, not an empty response.
type GetResponse struct {
	Value   []byte `codec:"v"`
	Version uint64 `codec:"ver"`
}

// SetRequest is the body of OpSet.
type SetRequest struct {
	Key   []byte `codec:"k"`
	Value []byte `codec:"v"`
}

// SetResponse answers a SetRequest: the version the write gave the key.
type SetResponse struct {
	Version uint64 `codec:"ver"`
}

// DeleteRequest is the body of OpDelete.
type DeleteRequest struct {
	Key []byte `codec:"k"`
}

// DeleteResponse answers a DeleteRequest: the version of the delete, or 0 if
// the key was absent.
type DeleteResponse struct {
	Version uint64 `codec:"ver"`
}

// CASRequest is the body of OpCompareAndSet: write Value iff the key's
// version is Expect (0: iff the key does not exist).
type CASRequest struct {
	Key    []byte `codec:"k"`
	Value  []byte `codec:"v"`
	Expect uint64 `codec:"expect"`
}

// CASResponse answers a CASRequest. OK reports whether the value was
// written; Version is then the new version, and otherwise the current one
// (0 if the key is absent).
type CASResponse struct {
	OK      bool   `codec:"ok"`
	Version uint64 `codec:"ver"`
}

// MGetRequest is the body of OpMGet.
type MGetRequest struct {
	Keys  [][]byte `codec:"keys"`
	Stale bool     `codec:"stale,omitempty"`
}

// MGetItem is one key's result in an MGetResponse.
type MGetItem struct {
	Found   bool   `codec:"found"`
	Value   []byte `codec:"v"`
	Version uint64 `codec:"ver"`
}

// MGetResponse answers an MGetRequest, one item per key in request order.
type MGetResponse struct {
	Items []MGetItem `codec:"items"`
}

// MSetItem is one key and value of an MSetRequest.
type MSetItem struct {
	Key   []byte `codec:"k"`
	Value []byte `codec:"v"`
}

// MSetRequest is the body of OpMSet.
type MSetRequest struct {
	Items []MSetItem `codec:"items"`
}

// MSetResponse answers an MSetRequest: one version per item, in request
// order.
type MSetResponse struct {
	Versions []uint64 `codec:"vers"`
}

// PingRequest is the body of OpPing. It has no fields; an empty body is
// valid.
type PingRequest struct{}

// PingResponse answers a PingRequest.
type PingResponse struct{}

// ErrorBody is the body of every response whose status is not StatusOK.
type ErrorBody struct {
	// Code repeats the frame's status.
	Code Status `codec:"code"`
	// Msg says what went wrong, for people.
	Msg string `codec:"msg"`
	// Leader and LeaderAddr name the partition's leader (node id and KV
	// address) in a StatusNotLeader response, when the node knows them.
	Leader     string `codec:"leader,omitempty"`
	LeaderAddr string `codec:"leader_addr,omitempty"`
}

// ErrMalformedBody is wrapped by Decode's error when a body is not a valid
// msgpack map of the expected shape: truncated, trailing bytes, a length
// prefix beyond the body, nesting too deep, or a field of the wrong type.
// A server answers it with StatusBadRequest.
var ErrMalformedBody = errors.New("wire: malformed body")

// maxDepth bounds the nesting of a body. The deepest body defined here is 3
// levels (MGetResponse: map, array, map); the slack is for fields added
// later, which older decoders skip.
const maxDepth = 16

// handle is the one codec handle both ends use. It is configured here and
// never modified afterwards, as the codec requires for concurrent use.
var handle = func() *codec.MsgpackHandle {
	h := &codec.MsgpackHandle{}
	// WriteExt selects the current msgpack spec: []byte is written as bin
	// and strings as str, so the two stay distinguishable on the wire.
	h.WriteExt = true
	// Decode validates every length prefix against the bytes that remain
	// before the codec sees the body (see validate), so the codec may
	// allocate what a prefix says in one step. Its default (256 KiB at
	// first, then growing in 256 KiB steps with a copy each time) would make
	// decoding a 16 MiB value quadratic.
	h.MaxInitLen = math.MaxInt32
	h.MaxDepth = maxDepth
	return h
}()

// encoder is a pooled codec.Encoder with the slice it writes to. Keeping the
// slice in the pooled struct means handing the codec a pointer to it does
// not allocate.
type encoder struct {
	enc *codec.Encoder
	out []byte
}

var (
	encoders = sync.Pool{New: func() any {
		e := &encoder{out: emptyBuf}
		e.enc = codec.NewEncoderBytes(&e.out, handle)
		return e
	}}
	decoders = sync.Pool{New: func() any { return codec.NewDecoderBytes(emptyBuf, handle) }}
	// emptyBuf is what pooled encoders and decoders point at between uses,
	// so that they do not keep a caller's buffer alive. Nothing is ever
	// written to it: every use points them at the caller's buffer first.
	emptyBuf = []byte{}
)

// Encode appends the msgpack encoding of v (a pointer to, or a value of, one
// of the body types) to dst and returns the extended slice. It fails only
// for values msgpack cannot express, which is a programming error.
func Encode(dst []byte, v any) ([]byte, error) {
	start := len(dst)
	e := encoders.Get().(*encoder)
	// The codec writes from the start of the slice it is given; giving it
	// the unused tail of dst lets it encode in place when dst has room.
	e.out = dst[start:]
	e.enc.ResetBytes(&e.out)
	err := e.enc.Encode(v)
	out := e.out
	e.out = emptyBuf
	e.enc.ResetBytes(&e.out)
	encoders.Put(e)
	if err != nil {
		return dst, fmt.Errorf("wire: encode %T: %w", v, err)
	}
	if len(out) > 0 && cap(dst)-start >= len(out) && &dst[:start+1][start] == &out[0] {
		return dst[:start+len(out)], nil
	}
	return append(dst, out...), nil
}

// Decode decodes body into v, a pointer to one of the body types. v is
// zeroed first, so fields absent from the body are zero. An empty body
// decodes as an empty map. The decoded value does not alias body.
//
// A body that is not exactly one well-formed msgpack map, or whose known
// fields have the wrong msgpack types, yields an error wrapping
// ErrMalformedBody; Decode never panics on any input. The types are
// checked before the codec runs (see shape.go) because the codec on its own
// is lenient: it would read a map into a byte slice, or 1 as true. Accepted
// per field: nil for any field (its zero value); bin or str for []byte and
// string; true or false for bool; any integer for unsigned fields (the codec
// rejects negative and out-of-range ones); an array for other slices; a map
// for structs.
func Decode(body []byte, v any) (err error) {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return fmt.Errorf("wire: Decode needs a non-nil pointer, got %T", v)
	}
	rv.Elem().SetZero()
	if len(body) == 0 {
		return nil
	}
	if err := validate(body, shapeOf(rv.Elem().Type())); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedBody, err)
	}
	d := decoders.Get().(*codec.Decoder)
	defer func() {
		// The codec recovers its own panics into errors; this is a second
		// net, because "never panics on any input" is a promise to servers
		// that decode what strangers send. A decoder that panicked is not
		// reused.
		if r := recover(); r != nil {
			rv.Elem().SetZero()
			err = fmt.Errorf("%w: decoder panic: %v", ErrMalformedBody, r)
			return
		}
		d.ResetBytes(emptyBuf) // do not keep the body alive
		decoders.Put(d)
	}()
	d.ResetBytes(body)
	if err := d.Decode(v); err != nil {
		rv.Elem().SetZero()
		return fmt.Errorf("%w: %w", ErrMalformedBody, err)
	}
	if n := d.NumBytesRead(); n != len(body) {
		// validate already proved the body is exactly one value; this only
		// guards against the codec disagreeing.
		rv.Elem().SetZero()
		return fmt.Errorf("%w: decoded %d of %d bytes", ErrMalformedBody, n, len(body))
	}
	return nil
}
