package wire

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"testing"
)

// FuzzFrameReader checks that no byte stream makes a FrameReader panic,
// return a frame over its limit or hold a buffer beyond it, or fail with an
// error the server would not know how to answer; and that any frame
// AppendFrame writes reads back identically. The seeds run in `go test`.
func FuzzFrameReader(f *testing.F) {
	good := AppendFrame(nil, 1, uint8(OpGet), []byte{0x81, 0xa1, 0x6b, 0xc4, 0x01, 0x6b})
	f.Add([]byte{}, uint64(0), uint8(0))
	f.Add(good, uint64(1), uint8(OpGet))
	f.Add(append(append([]byte{}, good...), good...), uint64(1<<64-1), uint8(255))
	f.Add(good[:7], uint64(2), uint8(StatusNotLeader))
	f.Add(binary.BigEndian.AppendUint32(nil, 8), uint64(3), uint8(1))
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<32-1), uint64(4), uint8(1))
	f.Add(AppendFrame(nil, 5, 7, make([]byte, 2000)), uint64(5), uint8(7))

	const max = 1024
	f.Fuzz(func(t *testing.T, stream []byte, id uint64, code uint8) {
		fr := NewFrameReader(bufio.NewReader(bytes.NewReader(stream)), max)
		for {
			fm, err := fr.Next()
			if err != nil {
				switch {
				case err == io.EOF, errors.Is(err, io.ErrUnexpectedEOF),
					errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrFrameTooShort):
				default:
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			if len(fm.Body) > max-MinFrameLength || cap(fm.Body) > max {
				t.Fatalf("body of len %d cap %d with a limit of %d", len(fm.Body), cap(fm.Body), max)
			}
		}

		// Round trip, using the stream as a body.
		frame := AppendFrame(nil, id, code, stream)
		fr = NewFrameReader(bufio.NewReader(bytes.NewReader(frame)), len(stream)+MinFrameLength)
		fm, err := fr.Next()
		if err != nil {
			t.Fatalf("reading back a frame: %v", err)
		}
		if fm.ID != id || fm.Code != code || !bytes.Equal(fm.Body, stream) {
			t.Fatalf("read back id %d code %d body %x, wrote id %d code %d body %x", fm.ID, fm.Code, fm.Body, id, code, stream)
		}
		if _, err := fr.Next(); err != io.EOF {
			t.Fatalf("after the frame: %v, want io.EOF", err)
		}
	})
}

// FuzzDecodeBodies checks that no input makes Decode panic or return
// anything but nil or ErrMalformedBody, that a failed Decode leaves the
// zero value, and that whatever decodes re-encodes to the same value.
func FuzzDecodeBodies(f *testing.F) {
	for _, v := range bodies() {
		b, err := Encode(nil, v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{"", "\x80", "\xc0", "\x81\xa1k\xc6\xff\xff\xff\xff", "\xdf\xff\xff\xff\xff", "\x81\xa4keys\x91\x91\x91\xc0"} {
		f.Add([]byte(s))
	}

	types := []reflect.Type{}
	for _, v := range bodies() {
		t := reflect.TypeOf(v).Elem()
		if len(types) == 0 || types[len(types)-1] != t {
			types = append(types, t)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, typ := range types {
			v := reflect.New(typ).Interface()
			err := Decode(data, v)
			if err != nil {
				if !errors.Is(err, ErrMalformedBody) {
					t.Fatalf("Decode into %v: %v, want ErrMalformedBody", typ, err)
				}
				if !reflect.ValueOf(v).Elem().IsZero() {
					t.Fatalf("failed Decode into %v left %+v", typ, v)
				}
				continue
			}
			b, err := Encode(nil, v)
			if err != nil {
				t.Fatalf("re-encoding %+v: %v", v, err)
			}
			w := reflect.New(typ).Interface()
			if err := Decode(b, w); err != nil {
				t.Fatalf("decoding the re-encoding %x of %+v: %v", b, v, err)
			}
			if !reflect.DeepEqual(normalize(v), normalize(w)) {
				t.Fatalf("%v: %+v re-encoded as %+v", typ, v, w)
			}
		}
	})
}
