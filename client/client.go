package client

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"kvnode/wire"
)

// Client is a connection to a kvnode cluster. It is safe for concurrent
// use. Create one with New and stop it with Close.
type Client struct {
	cfg     Config
	log     *slog.Logger
	http    *http.Client
	ownHTTP *http.Transport // nil when Config.HTTPClient was given

	ctx     context.Context // ends when Close is called
	cancel  context.CancelFunc
	closing chan struct{}
	closed  atomic.Bool
	wg      sync.WaitGroup // every goroutine the client starts

	topo       atomic.Pointer[topology]
	refreshNow chan struct{} // cap 1: a refresh is wanted
	fetchSeq   atomic.Uint64 // numbers fetches, from 1, as they start
	topoMu     sync.Mutex    // guards the fields below, and installs to topo
	doneSeq    uint64        // the latest fetch that completed
	fetched    chan struct{} // closed (and replaced) after each fetch
	fetchErr   error         // of the latest fetch
	lastGood   string        // the endpoint that served the latest topology

	poolsMu sync.Mutex
	pools   map[string]*pool // by KV address; nil once closed

	rr atomic.Uint64 // spreads stale reads over replicas
}

// New returns a Client for the cluster that Config.Endpoints lead to. It
// does not wait for the cluster: the topology is fetched in the background,
// and the first operations wait for it (call Sync to wait explicitly, for
// instance to fail fast at startup).
func New(cfg Config) (*Client, error) {
	cfg.Endpoints = append([]string(nil), cfg.Endpoints...)
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Client{
		cfg:        cfg,
		log:        cfg.Logger,
		closing:    make(chan struct{}),
		refreshNow: make(chan struct{}, 1),
		fetched:    make(chan struct{}),
		pools:      map[string]*pool{},
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.http = cfg.HTTPClient
	if c.http == nil {
		c.ownHTTP = &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			DialContext:         (&net.Dialer{Timeout: cfg.DialTimeout}).DialContext,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     time.Minute,
		}
		c.http = &http.Client{Transport: c.ownHTTP}
	}
	c.wg.Add(1)
	go c.refreshLoop()
	c.triggerRefresh()
	return c, nil
}

// Close stops the client: operations in flight fail with ErrClosed (a
// write that may have been sent also matches ErrUnknownOutcome), later ones
// fail with ErrClosed at once, and every goroutine and connection of the
// client is gone when Close returns. Close is idempotent.
func (c *Client) Close() error {
	if !c.closed.CompareAndSwap(false, true) {
		return nil
	}
	c.cancel()
	close(c.closing)
	c.poolsMu.Lock()
	pools := c.pools
	c.pools = nil
	c.poolsMu.Unlock()
	for _, p := range pools {
		p.close()
	}
	c.wg.Wait()
	if c.ownHTTP != nil {
		c.ownHTTP.CloseIdleConnections()
	}
	return nil
}

// Sync fetches the topology now, installs it, and returns the fetch's
// error. Operations do not need it; it is for failing fast at startup, and
// for tests.
func (c *Client) Sync(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	// The fetch runs on the refresh goroutine, like every fetch, so that
	// Close knows when the HTTP client is no longer in use.
	fresh := c.fetchSeq.Load() + 1
	c.triggerRefresh()
	_, fetchErr, err := c.awaitFetch(ctx, fresh, 0)
	if err != nil {
		return err
	}
	return fetchErr
}

func (c *Client) pool(addr string) (*pool, error) {
	c.poolsMu.Lock()
	defer c.poolsMu.Unlock()
	if c.pools == nil {
		return nil, ErrClosed
	}
	p := c.pools[addr]
	if p == nil {
		// Pools are never removed before Close: a node's pool is a few
		// words once its connections are gone, and nodes are few.
		p = newPool(c, addr)
		c.pools[addr] = p
	}
	return p, nil
}

// Item is a key's value and version.
type Item struct {
	Value []byte
	// Version is the raft index of the write that last set the key: it
	// grows with every write, and CompareAndSet compares it.
	Version uint64
	// Found is false when MGet found no such key; then Value is nil and
	// Version 0. GetItem returns ErrNotFound instead.
	Found bool
}

// KV is one key and value for MSet.
type KV struct {
	Key   string
	Value []byte
}

// ReadOption changes how Get, GetItem and MGet read.
type ReadOption func(*readOptions)

type readOptions struct{ stale bool }

// Stale lets the read be served by any replica of the key's partition,
// without a linearizable read barrier: faster and spread over the
// replicas, but possibly behind the latest writes.
func Stale() ReadOption { return func(o *readOptions) { o.stale = true } }

// Linearizable makes the read linearizable (served by the leader after a
// read barrier), overriding Config.StaleReads.
func Linearizable() ReadOption { return func(o *readOptions) { o.stale = false } }

func (c *Client) readOpts(opts []ReadOption) readOptions {
	o := readOptions{stale: c.cfg.StaleReads}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Get returns the value of key, or ErrNotFound.
func (c *Client) Get(ctx context.Context, key string, opts ...ReadOption) ([]byte, error) {
	it, err := c.GetItem(ctx, key, opts...)
	return it.Value, err
}

// GetItem returns the value and version of key, or ErrNotFound.
func (c *Client) GetItem(ctx context.Context, key string, opts ...ReadOption) (Item, error) {
	if err := checkKey(key); err != nil {
		return Item{}, err
	}
	o := c.readOpts(opts)
	k := []byte(key)
	var out Item
	err := c.run(ctx, &request{
		op: wire.OpGet, kind: opRead, stale: o.stale, keys: [][]byte{k},
		build: func([]int) (any, any) {
			return &wire.GetRequest{Key: k, Stale: o.stale}, &wire.GetResponse{}
		},
		done: func(_ []int, resp any) error {
			r := resp.(*wire.GetResponse)
			out = Item{Value: r.Value, Version: r.Version, Found: true}
			return nil
		},
	})
	return out, err
}

// MGet returns the items of keys, in order; an absent key's item has Found
// false. Keys are grouped into one request per node, sent in parallel.
func (c *Client) MGet(ctx context.Context, keys []string, opts ...ReadOption) ([]Item, error) {
	bkeys := make([][]byte, len(keys))
	for i, k := range keys {
		if err := checkKey(k); err != nil {
			return nil, fmt.Errorf("keys[%d]: %w", i, err)
		}
		bkeys[i] = []byte(k)
	}
	out := make([]Item, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	o := c.readOpts(opts)
	err := c.run(ctx, &request{
		op: wire.OpMGet, kind: opRead, stale: o.stale, keys: bkeys,
		build: func(idx []int) (any, any) {
			req := &wire.MGetRequest{Keys: make([][]byte, len(idx)), Stale: o.stale}
			for j, i := range idx {
				req.Keys[j] = bkeys[i]
			}
			return req, &wire.MGetResponse{}
		},
		done: func(idx []int, resp any) error {
			r := resp.(*wire.MGetResponse)
			if len(r.Items) != len(idx) {
				return fmt.Errorf("%d items for %d keys", len(r.Items), len(idx))
			}
			for j, i := range idx {
				it := r.Items[j]
				out[i] = Item{Value: it.Value, Version: it.Version, Found: it.Found}
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Set writes value under key. It returns once the write is durable on a
// quorum of the partition's replicas.
func (c *Client) Set(ctx context.Context, key string, value []byte) error {
	_, err := c.Put(ctx, key, value)
	return err
}

// Put is Set, returning the key's new version.
func (c *Client) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := checkKey(key); err != nil {
		return 0, err
	}
	k := []byte(key)
	var ver uint64
	err := c.run(ctx, &request{
		op: wire.OpSet, kind: opWrite, keys: [][]byte{k},
		build: func([]int) (any, any) {
			return &wire.SetRequest{Key: k, Value: value}, &wire.SetResponse{}
		},
		done: func(_ []int, resp any) error {
			ver = resp.(*wire.SetResponse).Version
			return nil
		},
	})
	return ver, err
}

// Delete removes key. Deleting an absent key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := checkKey(key); err != nil {
		return err
	}
	k := []byte(key)
	return c.run(ctx, &request{
		op: wire.OpDelete, kind: opWrite, keys: [][]byte{k},
		build: func([]int) (any, any) {
			return &wire.DeleteRequest{Key: k}, &wire.DeleteResponse{}
		},
		done: func([]int, any) error { return nil },
	})
}

// CompareAndSet writes value under key if and only if the key's version is
// expect; expect 0 means the key must not exist. It reports whether it
// wrote, and the key's version: the new one if it wrote, else the current
// one (0 if absent).
//
// It is retried only after failures that prove it was not applied; after
// an ambiguous one the error matches ErrUnknownOutcome.
func (c *Client) CompareAndSet(ctx context.Context, key string, expect uint64, value []byte) (ok bool, version uint64, err error) {
	if err := checkKey(key); err != nil {
		return false, 0, err
	}
	k := []byte(key)
	err = c.run(ctx, &request{
		op: wire.OpCompareAndSet, kind: opCAS, keys: [][]byte{k},
		build: func([]int) (any, any) {
			return &wire.CASRequest{Key: k, Value: value, Expect: expect}, &wire.CASResponse{}
		},
		done: func(_ []int, resp any) error {
			r := resp.(*wire.CASResponse)
			ok, version = r.OK, r.Version
			return nil
		},
	})
	return ok, version, err
}

// MSet writes items and returns their new versions, in order. Items are
// grouped into one request per node, sent in parallel; each partition's
// items are written atomically, but the partitions independently: after an
// error, some partitions may have been written and others not. Later items
// win over earlier ones with the same key.
func (c *Client) MSet(ctx context.Context, items []KV) ([]uint64, error) {
	keys := make([][]byte, len(items))
	for i, it := range items {
		if err := checkKey(it.Key); err != nil {
			return nil, fmt.Errorf("items[%d]: %w", i, err)
		}
		keys[i] = []byte(it.Key)
	}
	vers := make([]uint64, len(items))
	if len(items) == 0 {
		return vers, nil
	}
	err := c.run(ctx, &request{
		op: wire.OpMSet, kind: opWrite, keys: keys,
		build: func(idx []int) (any, any) {
			req := &wire.MSetRequest{Items: make([]wire.MSetItem, len(idx))}
			for j, i := range idx {
				req.Items[j] = wire.MSetItem{Key: keys[i], Value: items[i].Value}
			}
			return req, &wire.MSetResponse{}
		},
		done: func(idx []int, resp any) error {
			r := resp.(*wire.MSetResponse)
			if len(r.Versions) != len(idx) {
				return fmt.Errorf("%d versions for %d items", len(r.Versions), len(idx))
			}
			for j, i := range idx {
				vers[i] = r.Versions[j]
			}
			return nil
		},
	})
	if err != nil {
		return nil, err
	}
	return vers, nil
}

// checkKey rejects what every server rejects, without a round trip.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrBadRequest)
	}
	return nil
}
