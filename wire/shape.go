package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
)

// A shape is what a body type expects on the wire, derived once per type
// from its Go type and codec tags. validate checks a body against it before
// the codec decodes anything: every length prefix must fit in the bytes
// that remain (this bounds the codec's allocations), and every known field
// must have a msgpack type that means what the Go type means.
type shape struct {
	kind   kind
	elem   *shape            // kindArray: the elements
	fields map[string]*shape // kindMap: the known fields; others are skipped
}

type kind uint8

const (
	kindAny    kind = iota // an unknown field, or a Go type the codec checks alone
	kindBytes              // []byte: bin or str
	kindString             // string: str or bin
	kindBool               // bool: true or false
	kindUint               // unsigned integers: any msgpack integer
	kindArray              // other slices: array
	kindMap                // structs: map with string keys
)

var (
	anyShape = &shape{kind: kindAny}
	shapes   sync.Map // reflect.Type → *shape
)

func shapeOf(t reflect.Type) *shape {
	if s, ok := shapes.Load(t); ok {
		return s.(*shape)
	}
	s := buildShape(t, map[reflect.Type]*shape{})
	shapes.Store(t, s)
	return s
}

// buildShape derives t's shape. seen breaks cycles through slices of
// structs; the body types have none, but Decode accepts any type.
func buildShape(t reflect.Type, seen map[reflect.Type]*shape) *shape {
	if s, ok := seen[t]; ok {
		return s
	}
	switch t.Kind() {
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return &shape{kind: kindBytes}
		}
		s := &shape{kind: kindArray}
		seen[t] = s
		s.elem = buildShape(t.Elem(), seen)
		return s
	case reflect.String:
		return &shape{kind: kindString}
	case reflect.Bool:
		return &shape{kind: kindBool}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &shape{kind: kindUint}
	case reflect.Struct:
		s := &shape{kind: kindMap, fields: map[string]*shape{}}
		seen[t] = s
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("codec"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			s.fields[name] = buildShape(f.Type, seen)
		}
		return s
	default:
		return anyShape
	}
}

var errTruncated = errors.New("truncated")

// validate checks that body is exactly one msgpack map matching s, with
// every length prefix within the body and nesting at most maxDepth. It
// allocates nothing unless it fails.
func validate(body []byte, s *shape) error {
	if !isMap(body[0]) {
		return fmt.Errorf("body is %s, not a map", describe(body[0]))
	}
	rest, err := check(body, s, 1)
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d trailing bytes", len(rest))
	}
	return nil
}

// check returns b after the value at its start, which must match s.
func check(b []byte, s *shape, depth int) ([]byte, error) {
	if len(b) == 0 {
		return nil, errTruncated
	}
	c := b[0]
	if c == 0xc0 {
		return b[1:], nil // nil decodes as the zero value of any field
	}
	var ok bool
	switch s.kind {
	case kindAny:
		return skip(b, depth)
	case kindBytes, kindString:
		ok = isStr(c) || isBin(c)
	case kindBool:
		ok = c == 0xc2 || c == 0xc3
	case kindUint:
		ok = isInt(c)
	case kindArray:
		if !isArray(c) {
			break
		}
		n, rest, err := containerLen(b)
		if err != nil {
			return nil, err
		}
		if err := checkCount(rest, n, depth); err != nil {
			return nil, err
		}
		for i := uint64(0); i < n; i++ {
			if rest, err = check(rest, s.elem, depth+1); err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
		}
		return rest, nil
	case kindMap:
		if !isMap(c) {
			break
		}
		n, rest, err := containerLen(b)
		if err != nil {
			return nil, err
		}
		if err := checkCount(rest, 2*n, depth); err != nil {
			return nil, err
		}
		for i := uint64(0); i < n; i++ {
			if len(rest) == 0 {
				return nil, errTruncated
			}
			if !isStr(rest[0]) && !isBin(rest[0]) {
				return nil, fmt.Errorf("map key is %s, not a string", describe(rest[0]))
			}
			after, err := skip(rest, depth+1)
			if err != nil {
				return nil, err
			}
			name := rawString(rest[:len(rest)-len(after)])
			f := s.fields[string(name)]
			if f == nil {
				f = anyShape
			}
			if rest, err = check(after, f, depth+1); err != nil {
				return nil, fmt.Errorf("field %q: %w", name, err)
			}
		}
		return rest, nil
	}
	if !ok {
		return nil, fmt.Errorf("want %s, got %s", s.kind, describe(c))
	}
	return skip(b, depth)
}

// skip returns b after the msgpack value at its start, whatever its type.
func skip(b []byte, depth int) ([]byte, error) {
	if len(b) == 0 {
		return nil, errTruncated
	}
	c := b[0]
	switch {
	case isArray(c), isMap(c):
		n, rest, err := containerLen(b)
		if err != nil {
			return nil, err
		}
		if isMap(c) {
			n *= 2
		}
		if err := checkCount(rest, n, depth); err != nil {
			return nil, err
		}
		for ; n > 0; n-- {
			if rest, err = skip(rest, depth+1); err != nil {
				return nil, err
			}
		}
		return rest, nil
	case c <= 0x7f, c >= 0xe0, c == 0xc0, c == 0xc2, c == 0xc3:
		return b[1:], nil // fixint, nil, bool
	case c >= 0xa0 && c <= 0xbf:
		return skipBytes(b[1:], uint64(c&0x1f)) // fixstr
	}
	b = b[1:]
	switch c {
	case 0xc4, 0xd9: // bin8, str8
		return skipPrefixed(b, 1, 0)
	case 0xc5, 0xda: // bin16, str16
		return skipPrefixed(b, 2, 0)
	case 0xc6, 0xdb: // bin32, str32
		return skipPrefixed(b, 4, 0)
	case 0xc7: // ext8: length, type, data
		return skipPrefixed(b, 1, 1)
	case 0xc8: // ext16
		return skipPrefixed(b, 2, 1)
	case 0xc9: // ext32
		return skipPrefixed(b, 4, 1)
	case 0xcc, 0xd0: // uint8, int8
		return skipBytes(b, 1)
	case 0xcd, 0xd1: // uint16, int16
		return skipBytes(b, 2)
	case 0xca, 0xce, 0xd2: // float32, uint32, int32
		return skipBytes(b, 4)
	case 0xcb, 0xcf, 0xd3: // float64, uint64, int64
		return skipBytes(b, 8)
	case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16: type, data
		return skipBytes(b, 1+1<<(c-0xd4))
	}
	return nil, fmt.Errorf("invalid msgpack byte %#02x", c) // 0xc1, never used
}

// containerLen reads the element count of the array or map at b's start.
func containerLen(b []byte) (n uint64, rest []byte, err error) {
	c := b[0]
	switch {
	case c >= 0x80 && c <= 0x9f: // fixmap, fixarray
		return uint64(c & 0x0f), b[1:], nil
	case c == 0xdc || c == 0xde: // array16, map16
		if len(b) < 3 {
			return 0, nil, errTruncated
		}
		return uint64(binary.BigEndian.Uint16(b[1:])), b[3:], nil
	default: // array32, map32
		if len(b) < 5 {
			return 0, nil, errTruncated
		}
		return uint64(binary.BigEndian.Uint32(b[1:])), b[5:], nil
	}
}

// checkCount checks a container of n values at the given depth. Every value
// takes at least one byte, so a count beyond the remaining bytes is a lie;
// rejecting it here is what bounds the codec's allocations.
func checkCount(rest []byte, n uint64, depth int) error {
	if depth >= maxDepth {
		return fmt.Errorf("nested deeper than %d", maxDepth)
	}
	if n > uint64(len(rest)) {
		return fmt.Errorf("container of %d values in %d bytes: %w", n, len(rest), errTruncated)
	}
	return nil
}

// skipPrefixed skips a big-endian length of the given width, extra bytes (an
// ext's type), then as many bytes as the length says.
func skipPrefixed(b []byte, width, extra int) ([]byte, error) {
	if len(b) < width {
		return nil, errTruncated
	}
	var n uint64
	for _, x := range b[:width] {
		n = n<<8 | uint64(x)
	}
	return skipBytes(b[width:], uint64(extra)+n)
}

func skipBytes(b []byte, n uint64) ([]byte, error) {
	if n > uint64(len(b)) {
		return nil, fmt.Errorf("%d bytes wanted, %d left: %w", n, len(b), errTruncated)
	}
	return b[n:], nil
}

// rawString returns the payload of the str or bin value v (already checked
// to be complete).
func rawString(v []byte) []byte {
	c := v[0]
	switch {
	case c >= 0xa0 && c <= 0xbf:
		return v[1:]
	case c == 0xc4 || c == 0xd9:
		return v[2:]
	case c == 0xc5 || c == 0xda:
		return v[3:]
	default:
		return v[5:]
	}
}

func isMap(c byte) bool   { return c >= 0x80 && c <= 0x8f || c == 0xde || c == 0xdf }
func isArray(c byte) bool { return c >= 0x90 && c <= 0x9f || c == 0xdc || c == 0xdd }
func isStr(c byte) bool   { return c >= 0xa0 && c <= 0xbf || c >= 0xd9 && c <= 0xdb }
func isBin(c byte) bool   { return c >= 0xc4 && c <= 0xc6 }
func isInt(c byte) bool   { return c <= 0x7f || c >= 0xe0 || c >= 0xcc && c <= 0xd3 }

func (k kind) String() string {
	switch k {
	case kindBytes:
		return "bytes"
	case kindString:
		return "a string"
	case kindBool:
		return "a bool"
	case kindUint:
		return "an integer"
	case kindArray:
		return "an array"
	case kindMap:
		return "a map"
	default:
		return "a value"
	}
}

// describe names the msgpack type that starts with byte c, for errors.
func describe(c byte) string {
	switch {
	case isMap(c):
		return "a map"
	case isArray(c):
		return "an array"
	case isStr(c):
		return "a string"
	case isBin(c):
		return "bytes"
	case isInt(c):
		return "an integer"
	case c == 0xc0:
		return "nil"
	case c == 0xc2 || c == 0xc3:
		return "a bool"
	case c == 0xca || c == 0xcb:
		return "a float"
	case c == 0xc1:
		return "the reserved byte 0xc1"
	default:
		return "an extension"
	}
}
