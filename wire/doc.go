// Package wire is the binary protocol spoken on KV_PORT between the Go
// client (package client) and a node (package node): preambles, frames, op
// and status codes, the msgpack bodies, and the key-to-partition hash.
// docs/protocol.md is the contract; this package is its one implementation,
// shared by both ends so that they cannot drift apart. It imports nothing
// from kvnode.
//
// # Frames
//
// After the preamble, each direction is a sequence of frames:
//
//	[length u32 BE][request id u64 BE][code u8][body]
//
// where length = 9 + len(body). AppendFrame and EncodeFrame write frames;
// FrameReader reads them, checking the length against a limit before it
// allocates anything.
//
// # Bodies
//
// Bodies are msgpack maps, encoded and decoded with Encode and Decode
// through one shared codec.MsgpackHandle. Decode never trusts a length
// prefix: it first walks the body, checking it against the shape of the Go
// type (shape.go), and rejects any string, binary, array or map that claims
// more than the bytes that remain, and any known field of the wrong msgpack
// type. So a hostile body cannot make the codec allocate more than a small
// multiple of the body's size, nor slip a map in where bytes belong.
// Decoded values never alias the body, so the body's buffer may be reused
// at once. Unknown fields are skipped, so that a field can be added to a
// body without breaking older peers.
package wire
