package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"kvnode/wire"
)

// NodeConn speaks the binary protocol to one node, one request at a time:
// for reading a given node's own replica (stale reads), which the Go
// client, routing by partition, cannot be told to do.
type NodeConn struct {
	conn net.Conn
	fr   *wire.FrameReader
	id   uint64
}

// DialNode connects to a node's KV address.
func DialNode(ctx context.Context, kvAddr string) (*NodeConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", kvAddr)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte(wire.ClientPreamble)); err != nil {
		conn.Close()
		return nil, err
	}
	return &NodeConn{conn: conn, fr: wire.NewFrameReader(bufio.NewReader(conn), 0)}, nil
}

// Close closes the connection.
func (c *NodeConn) Close() error { return c.conn.Close() }

// StatusError is a non-OK answer.
type StatusError struct {
	Status wire.Status
	Body   wire.ErrorBody
}

func (e *StatusError) Error() string { return fmt.Sprintf("status %v: %s", e.Status, e.Body.Msg) }

// Call sends one request and decodes the answer into resp.
func (c *NodeConn) Call(ctx context.Context, op wire.Op, req, resp any) error {
	c.id++
	frame, err := wire.EncodeFrame(nil, c.id, uint8(op), req)
	if err != nil {
		return err
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	c.conn.SetDeadline(dl)
	if _, err := c.conn.Write(frame); err != nil {
		return err
	}
	f, err := c.fr.Next()
	if err != nil {
		return err
	}
	if f.ID != c.id {
		return fmt.Errorf("response id %d, want %d", f.ID, c.id)
	}
	if st := f.Status(); st != wire.StatusOK {
		se := &StatusError{Status: st}
		_ = wire.Decode(f.Body, &se.Body)
		return se
	}
	return wire.Decode(f.Body, resp)
}

// StaleMGet reads keys from the node's own replicas.
func (c *NodeConn) StaleMGet(ctx context.Context, keys []string) ([]wire.MGetItem, error) {
	req := wire.MGetRequest{Stale: true}
	for _, k := range keys {
		req.Keys = append(req.Keys, []byte(k))
	}
	var resp wire.MGetResponse
	if err := c.Call(ctx, wire.OpMGet, &req, &resp); err != nil {
		return nil, err
	}
	if len(resp.Items) != len(keys) {
		return nil, errors.New("MGet answered a different number of items")
	}
	return resp.Items, nil
}
