// Package client is the Go client of kvnode.
//
//	c, err := client.New(client.Config{Endpoints: []string{"localhost:8080"}})
//	if err != nil { ... }
//	defer c.Close()
//	err = c.Set(ctx, "user:123", []byte("John Doe")) // returns once quorum-durable
//	v, err := c.Get(ctx, "user:123")                 // client.ErrNotFound when absent
//
// # Routing
//
// The client learns the cluster's topology from GET /cluster on any node's
// HTTP address (Config.Endpoints, then the nodes it has learned of), hashes
// each key to its partition exactly as the servers do (wire.Partition), and
// sends the operation over the binary protocol (docs/protocol.md) to the
// partition's leader, the "primary_node" of the topology. Stale reads
// (Stale, Config.StaleReads) go to any replica of the partition, round
// robin. MGet and MSet are split into one request per node.
//
// The topology is refreshed every Config.RefreshInterval, and at once when
// a node answers NotLeader (whose leader hint is applied immediately), is
// stopping, or cannot be reached.
//
// # Retries and outcomes
//
// Every operation runs within its context's deadline (Config.RequestTimeout
// when it has none), and is retried, with a short backoff, at most
// Config.MaxRetries times:
//
//   - Reads (Get, MGet) are retried after NotLeader, Unavailable, Stopping
//     and connection failures: they change nothing. A node that does not
//     answer a read within Config.ReadAttemptTimeout (paused, stuck on its
//     disk, a deposed leader) is given up on and the read retried, so one
//     such node cannot hold reads for the whole deadline.
//   - Writes (Set, Put, Delete, MSet, CompareAndSet) are retried only when
//     they certainly were not applied: NotLeader, Stopping, or a request
//     that never left the client. After an ambiguous failure (Unavailable,
//     a connection that broke after the request was sent, a deadline that
//     expired while waiting for the answer) the write may still apply, and
//     retrying it could apply it twice, after other clients' writes to the
//     same key: the operation returns an error matching ErrUnknownOutcome,
//     and the caller decides (read the key, or write again).
//   - An operation that runs out of time after retryable failures returns
//     an error matching ErrUnavailable (and ErrUnknownOutcome if some
//     attempt was ambiguous).
//
// Errors match the package's sentinels with errors.Is; a *ServerError
// carries what the server said.
//
// # Connections
//
// The client keeps Config.ConnsPerNode TCP connections per node, dialed
// lazily and redialed after they break. Each connection is pipelined: any
// number of requests from any goroutines share it, a writer goroutine
// batches whatever is queued into one write, and a reader goroutine hands
// each response to its caller by request id, in whatever order the server
// answers. A caller whose context ends stops waiting; its response, if one
// comes, is discarded.
//
// A Client is safe for concurrent use. Close stops every goroutine it
// started.
package client
