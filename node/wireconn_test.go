package node

import (
	"bufio"
	"net"
	"testing"
	"time"

	"kvnode/wire"
)

// rawClient speaks the binary protocol one request at a time, for tests
// that need to send what a real client never would.
type rawClient struct {
	conn net.Conn
	fr   *wire.FrameReader
	id   uint64
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

func dialClient(t *testing.T, addr string) *rawClient {
	t.Helper()
	conn := dialRaw(t, addr)
	if _, err := conn.Write([]byte(wire.ClientPreamble)); err != nil {
		t.Fatal(err)
	}
	return &rawClient{conn: conn, fr: wire.NewFrameReader(bufio.NewReader(conn), wire.DefaultMaxFrameSize)}
}

func (c *rawClient) close() { c.conn.Close() }

func (c *rawClient) write(t *testing.T, b []byte) {
	t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

func (c *rawClient) read() (wire.Frame, error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c.fr.Next()
}

func mustEncode(v any) []byte {
	b, err := wire.Encode(nil, v)
	if err != nil {
		panic(err)
	}
	return b
}

func (c *rawClient) call(t *testing.T, op wire.Op, req any) (wire.Status, []byte) {
	t.Helper()
	return c.callRaw(t, op, mustEncode(req))
}

func (c *rawClient) callRaw(t *testing.T, op wire.Op, body []byte) (wire.Status, []byte) {
	t.Helper()
	c.id++
	c.write(t, wire.AppendFrame(nil, c.id, uint8(op), body))
	f, err := c.read()
	if err != nil {
		t.Fatalf("%v: %v", op, err)
	}
	if f.ID != c.id {
		t.Fatalf("answer for request %d, want %d", f.ID, c.id)
	}
	return f.Status(), append([]byte(nil), f.Body...)
}
