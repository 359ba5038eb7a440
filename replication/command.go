package replication

import (
	"encoding/binary"
	"errors"
	"fmt"

	"kvnode/engine"
)

// The payload of a normal raft entry:
//
//	[format u8 = 1][proposal id u64 BE][op count uvarint]
//	then per op: [kind u8][expect uvarint][key len uvarint][key][value len uvarint][value]
//
// The proposal id lets the proposing replica match the applied entry to the
// caller waiting for it. Ids are unique per node: the node id in the top 16
// bits, a counter below. An entry with no data is raft's own (a new
// leader's empty entry) and carries no command.
const commandFormat byte = 1

var errBadCommand = errors.New("replication: malformed command")

func encodeCommand(dst []byte, id uint64, ops []engine.Op) []byte {
	dst = append(dst, commandFormat)
	dst = binary.BigEndian.AppendUint64(dst, id)
	dst = binary.AppendUvarint(dst, uint64(len(ops)))
	for i := range ops {
		op := &ops[i]
		dst = append(dst, byte(op.Kind))
		dst = binary.AppendUvarint(dst, op.Expect)
		dst = binary.AppendUvarint(dst, uint64(len(op.Key)))
		dst = append(dst, op.Key...)
		dst = binary.AppendUvarint(dst, uint64(len(op.Value)))
		dst = append(dst, op.Value...)
	}
	return dst
}

// commandSize is the exact length encodeCommand will produce.
func commandSize(ops []engine.Op) int {
	n := 1 + 8 + uvarintLen(uint64(len(ops)))
	for i := range ops {
		op := &ops[i]
		n += 1 + uvarintLen(op.Expect) + uvarintLen(uint64(len(op.Key))) + len(op.Key) +
			uvarintLen(uint64(len(op.Value))) + len(op.Value)
	}
	return n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// commandID returns the proposal id of an encoded command without decoding
// the rest.
func commandID(data []byte) (uint64, bool) {
	if len(data) < 9 || data[0] != commandFormat {
		return 0, false
	}
	return binary.BigEndian.Uint64(data[1:9]), true
}

// decodeCommand is the inverse of encodeCommand. Keys and values alias
// data, which raft never modifies.
func decodeCommand(data []byte, ops []engine.Op) (uint64, []engine.Op, error) {
	id, ok := commandID(data)
	if !ok {
		return 0, nil, fmt.Errorf("%w: bad header", errBadCommand)
	}
	p := data[9:]
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)) {
		return 0, nil, fmt.Errorf("%w: bad op count", errBadCommand)
	}
	p = p[k:]
	for range n {
		if len(p) < 1 {
			return 0, nil, fmt.Errorf("%w: truncated op", errBadCommand)
		}
		op := engine.Op{Kind: engine.OpKind(p[0])}
		p = p[1:]
		var err error
		if op.Expect, p, err = readUvarint(p); err != nil {
			return 0, nil, err
		}
		if op.Key, p, err = readBytes(p); err != nil {
			return 0, nil, err
		}
		if op.Value, p, err = readBytes(p); err != nil {
			return 0, nil, err
		}
		ops = append(ops, op)
	}
	if len(p) != 0 {
		return 0, nil, fmt.Errorf("%w: %d trailing bytes", errBadCommand, len(p))
	}
	return id, ops, nil
}

func readUvarint(p []byte) (uint64, []byte, error) {
	v, k := binary.Uvarint(p)
	if k <= 0 {
		return 0, nil, fmt.Errorf("%w: bad varint", errBadCommand)
	}
	return v, p[k:], nil
}

func readBytes(p []byte) ([]byte, []byte, error) {
	n, p, err := readUvarint(p)
	if err != nil {
		return nil, nil, err
	}
	if n > uint64(len(p)) {
		return nil, nil, fmt.Errorf("%w: length %d beyond the %d bytes left", errBadCommand, n, len(p))
	}
	if n == 0 {
		return nil, p, nil
	}
	return p[:n:n], p[n:], nil
}

// validateOps rejects what the engine would refuse, before anything is
// proposed: bad input never reaches the log.
func validateOps(ops []engine.Op) error {
	if len(ops) == 0 {
		return fmt.Errorf("%w: no operations", ErrInvalidCommand)
	}
	for i := range ops {
		op := &ops[i]
		if len(op.Key) == 0 {
			return fmt.Errorf("%w: op %d has an empty key", ErrInvalidCommand, i)
		}
		switch op.Kind {
		case engine.OpPut, engine.OpDelete:
			if op.Expect != 0 {
				return fmt.Errorf("%w: op %d: %v takes no expected version", ErrInvalidCommand, i, op.Kind)
			}
		case engine.OpCompareAndSet, engine.OpCompareAndDelete:
		default:
			return fmt.Errorf("%w: op %d has unknown kind %d", ErrInvalidCommand, i, op.Kind)
		}
		if (op.Kind == engine.OpDelete || op.Kind == engine.OpCompareAndDelete) && len(op.Value) != 0 {
			return fmt.Errorf("%w: op %d: %v takes no value", ErrInvalidCommand, i, op.Kind)
		}
	}
	return nil
}
