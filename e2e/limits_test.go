package e2e

import (
	"bufio"
	"bytes"
	"context"
	be "encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"kvnode/client"
	"kvnode/internal/localcluster"
	"kvnode/wire"
)

// Bad input and limits, against a real node (P4): fuzzing of the HTTP
// handlers and of the binary protocol, memory under huge declared
// lengths, slowloris clients, and thousands of idle connections.

// nodeRSS returns the resident memory of the node's process, in bytes.
func nodeRSS(t testing.TB, n *localcluster.Node) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", n.PID()))
	if err != nil {
		t.Fatalf("reading the node's status: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", n.PID())
	return 0
}

// nodeFDLimit returns the node's soft limit on open files.
func nodeFDLimit(n *localcluster.Node) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", n.PID()))
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "Max open files") {
			return strings.Join(strings.Fields(l)[3:5], "/")
		}
	}
	return "unknown"
}

// stillServes fails the test unless the node is running and a write and
// a read through the Go client succeed within a few seconds each.
func stillServes(t testing.TB, c *localcluster.Cluster, cl *client.Client, tag string) {
	t.Helper()
	for i, n := range c.Nodes() {
		if !n.Running() {
			t.Fatalf("%s: node %d (%s) is not running; log: %s", tag, i, n.Name, n.LogPath)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := fmt.Sprintf("alive-%s-%d", tag, time.Now().UnixNano())
	start := time.Now()
	if err := cl.Set(ctx, key, []byte("ok")); err != nil {
		t.Fatalf("%s: a normal write failed: %v", tag, err)
	}
	if v, err := cl.Get(ctx, key); err != nil || string(v) != "ok" {
		t.Fatalf("%s: a normal read failed: %q %v", tag, v, err)
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("%s: a normal write and read took %v", tag, el)
	}
}

// raiseFDLimit lifts this process's soft RLIMIT_NOFILE to its hard limit
// and returns it.
func raiseFDLimit(t testing.TB) uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			t.Logf("raising RLIMIT_NOFILE: %v", err)
		}
	}
	return rl.Cur
}

// randomKey returns a key that is sometimes odd: empty, long, binary,
// percent-escaped, unicode.
func randomKey(rng *rand.Rand) string {
	switch rng.IntN(8) {
	case 0:
		return ""
	case 1:
		return strings.Repeat("k", rng.IntN(6000))
	case 2:
		b := make([]byte, 1+rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return string(b)
	case 3:
		return "%00%ff%2F..%2f" + strconv.Itoa(rng.IntN(100))
	case 4:
		return "ключ-🔑-" + strconv.Itoa(rng.IntN(100))
	default:
		return "fz-" + strconv.Itoa(rng.IntN(200))
	}
}

func randomBytes(rng *rand.Rand, max int) []byte {
	b := make([]byte, rng.IntN(max+1))
	for i := range b {
		b[i] = byte(rng.IntN(256))
	}
	return b
}

// mutate flips, inserts, deletes or duplicates bytes of b.
func mutate(rng *rand.Rand, b []byte) []byte {
	b = append([]byte(nil), b...)
	for range 1 + rng.IntN(4) {
		if len(b) == 0 {
			b = append(b, byte(rng.IntN(256)))
			continue
		}
		i := rng.IntN(len(b))
		switch rng.IntN(5) {
		case 0:
			b[i] ^= byte(1 << rng.IntN(8))
		case 1:
			b[i] = byte(rng.IntN(256))
		case 2:
			b = append(b[:i], b[min(len(b), i+1+rng.IntN(8)):]...)
		case 3:
			b = append(b[:i], append(randomBytes(rng, 8), b[i:]...)...)
		case 4:
			j := rng.IntN(len(b))
			b = append(b[:i], append(append([]byte(nil), b[min(i, j):max(i, j)]...), b[i:]...)...)
		}
	}
	return b
}

// fuzzSeed is the seed of the bounded fuzz loops (printed; replay with
// $KVNODE_FUZZ_SEED).
func fuzzSeed(t *testing.T) uint64 {
	if s := os.Getenv("KVNODE_FUZZ_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// httpFuzzRequest builds one random request: a structured one (method,
// path, query, body from the API's shapes, mutated), or raw bytes.
func httpFuzzRequest(rng *rand.Rand) (raw []byte, desc string) {
	methods := []string{"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", "get", ""}
	key := randomKey(rng)
	esc := strings.NewReplacer("%", "%25", " ", "%20", "?", "%3F", "#", "%23", "\r", "%0D", "\n", "%0A").Replace
	paths := []string{
		"/kv/" + esc(key), "/kv/set", "/kv/get?key=" + esc(key), "/kv/delete?key=" + esc(key), "/kv/stats",
		"/cluster", "/ready", "/health", "/rebalance", "/internal/groups", "/metrics", "/join",
		"/kv/" + esc(key) + "?if_version=" + []string{"-1", "0", "1", "18446744073709551616", "x", "1e3"}[rng.IntN(6)],
		"/kv/" + esc(key) + "?consistency=" + []string{"stale", "linearizable", "weird", ""}[rng.IntN(4)],
		"/" + string(randomBytes(rng, 20)), "/kv", "/kv/", "//kv//x", "/kv/../cluster", "*",
	}
	var body []byte
	switch rng.IntN(6) {
	case 0:
		body = randomBytes(rng, 2048)
	case 1:
		body = mutate(rng, []byte(`{"key":"fz-1","value":"v"}`))
	case 2:
		body = []byte(fmt.Sprintf(`{"key":%q,"value":%q,"extra":[1,2,{"a":null}]}`, key, key))
	case 3:
		body = mutate(rng, []byte(`{"node_id":"x","http_addr":"127.0.0.1:1","kv_addr":`))
	case 4:
		body = bytes.Repeat([]byte("v"), rng.IntN(1<<17))
	}
	method := methods[rng.IntN(len(methods))]
	path := paths[rng.IntN(len(paths))]
	if path == "/join" && method == "POST" {
		// A valid join would admit a member that does not exist: that
		// is an admin action, not bad input. Keep its body broken.
		body = append([]byte("}"), body...)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: fuzz\r\n", method, path)
	if rng.IntN(4) > 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	} else if rng.IntN(2) == 0 {
		b.WriteString("Transfer-Encoding: chunked\r\n")
		body = []byte(fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(body), body))
	}
	if rng.IntN(5) == 0 {
		fmt.Fprintf(&b, "X-Kvnode-Forwarded: %d\r\n", rng.IntN(4)-1)
	}
	b.WriteString("Connection: close\r\n\r\n")
	b.Write(body)
	raw = b.Bytes()
	desc = fmt.Sprintf("%s %.80q (%d body bytes)", method, path, len(body))
	if rng.IntN(3) == 0 {
		raw = mutate(rng, raw)
		desc = "mutated " + desc
	}
	return raw, desc
}

// sendRawHTTP writes raw to the node's HTTP port and returns the status
// of the answer (0 if none came or it does not parse) and its body.
func sendRawHTTP(addr string, raw []byte, timeout time.Duration, halfClose bool) (int, string, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write(raw); err != nil {
		return 0, "", nil // the server may close early on a bad request
	}
	if halfClose {
		// Tell the server nothing more is coming (an incomplete request
		// is answered or dropped at once).
		conn.(*net.TCPConn).CloseWrite()
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	return resp.StatusCode, string(body), nil
}

// TestFuzzHTTP sends a bounded stream of random and mutated HTTP requests
// to a node: no answer may be a 500, error answers of the KV API are JSON
// {"error": ...}, and the node keeps serving with bounded memory.
func TestFuzzHTTP(t *testing.T) {
	seed := fuzzSeed(t)
	t.Logf("fuzz seed %d (replay: KVNODE_FUZZ_SEED=%d go test ./e2e -run TestFuzzHTTP)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	c := startCluster(t, 1, "MAX_VALUE_SIZE=65536")
	n := c.Node(0)
	cl := newClient(t, c)
	rss0 := nodeRSS(t, n)
	iters := 1500
	if testing.Short() {
		iters = 300
	}
	statuses := map[int]int{}
	knownHalfClose := 0
	for i := range iters {
		raw, desc := httpFuzzRequest(rng)
		mutated := strings.HasPrefix(desc, "mutated")
		code, body, err := sendRawHTTP(n.HTTPAddr, raw, 10*time.Second, mutated)
		if err != nil {
			t.Fatalf("request %d (%s): %v", i, desc, err)
		}
		statuses[code]++
		head := strings.HasPrefix(strings.TrimPrefix(desc, "mutated "), "HEAD ")
		if mutated && code == 500 && (strings.TrimSpace(body) == `{"error":"context canceled"}` || head && body == "") {
			// Known node bug (see TestHTTPHalfClose): the fuzz half-closes
			// its connections after each request.
			knownHalfClose++
			continue
		}
		// 501 and 505: net/http's answers to a transfer encoding or an
		// HTTP version it does not implement.
		if code >= 500 && code != http.StatusServiceUnavailable && code != 501 && code != 505 {
			t.Errorf("request %d (%s): %d %s", i, desc, code, body)
		}
		// Error answers of the API are JSON; net/http's own answers to a
		// malformed request (400 Bad Request, 404 and 405 of the router,
		// 413 of MaxBytesReader before a handler writes) are plain text.
		// (HEAD answers have no body; net/http answers "*" itself.)
		if code >= 400 && code < 500 && code != 404 && code != 405 && code != 413 && !strings.HasPrefix(body, "400 Bad Request") &&
			!strings.HasPrefix(desc, "mutated") && !head && !strings.Contains(desc, `"*"`) && !strings.Contains(body, `"error"`) {
			t.Errorf("request %d (%s): %d without a JSON error: %.200q", i, desc, code, body)
		}
		if i%250 == 0 {
			stillServes(t, c, cl, fmt.Sprintf("http-fuzz-%d", i))
		}
	}
	stillServes(t, c, cl, "after-http-fuzz")
	rss1 := nodeRSS(t, n)
	t.Logf("%d requests; statuses %v (%d of the 500s: the known half-close bug); node RSS %d MiB -> %d MiB", iters, statuses, knownHalfClose, rss0>>20, rss1>>20)
	if rss1-rss0 > 512<<20 {
		t.Errorf("the node's memory grew by %d MiB under the HTTP fuzz", (rss1-rss0)>>20)
	}
}

// kvFuzzFrame builds one random frame for the binary protocol.
func kvFuzzFrame(rng *rand.Rand, id uint64) (frame []byte, valid bool) {
	op := uint8(1 + rng.IntN(7))
	var body []byte
	key := []byte(randomKey(rng))
	switch rng.IntN(6) {
	case 0: // a valid body for the op
		var v any
		switch wire.Op(op) {
		case wire.OpGet:
			v = &wire.GetRequest{Key: key, Stale: rng.IntN(2) == 0}
		case wire.OpSet:
			v = &wire.SetRequest{Key: key, Value: randomBytes(rng, 256)}
		case wire.OpDelete:
			v = &wire.DeleteRequest{Key: key}
		case wire.OpCompareAndSet:
			v = &wire.CASRequest{Key: key, Value: randomBytes(rng, 64), Expect: rng.Uint64N(100)}
		case wire.OpMGet:
			v = &wire.MGetRequest{Keys: [][]byte{key, []byte("fz-1")}}
		case wire.OpMSet:
			v = &wire.MSetRequest{Items: []wire.MSetItem{{Key: key, Value: []byte("x")}}}
		default:
			v = &wire.PingResponse{}
		}
		body, _ = wire.Encode(nil, v)
	case 1: // a valid body, mutated
		b, _ := wire.Encode(nil, &wire.SetRequest{Key: key, Value: []byte("value")})
		body = mutate(rng, b)
	case 2: // random bytes
		body = randomBytes(rng, 300)
	case 3: // msgpack with absurd declared lengths
		body = []byte{0x81, 0xa1, 'k', 0xc6, 0x7f, 0xff, 0xff, 0xff, 'x'} // bin32 of 2 GiB
		if rng.IntN(2) == 0 {
			body = []byte{0x81, 0xa4, 'k', 'e', 'y', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff} // array32 of 2^31
		}
	case 4: // an unknown op
		op = uint8(8 + rng.IntN(248))
		body = randomBytes(rng, 16)
		if rng.IntN(4) == 0 {
			op = 0
		}
	case 5: // deep nesting
		depth := 1 + rng.IntN(5000)
		body = append(bytes.Repeat([]byte{0x91}, depth), 0xc0)
	}
	return wire.AppendFrame(nil, id, op, body), true
}

// readKVResponse reads one response frame and checks it.
func readKVResponse(fr *wire.FrameReader) (wire.Frame, error) {
	f, err := fr.Next()
	if err != nil {
		return f, err
	}
	if st := f.Status(); st > wire.Status(9) {
		return f, fmt.Errorf("unknown status %d", st)
	}
	return f, nil
}

// TestFuzzKVProtocol sends a bounded stream of random, mutated and hostile
// frames to a node's KV port: every frame gets an answer with its request
// id and a known status, never Internal; a frame that breaks the stream
// gets MalformedFrame and a closed connection; the node keeps serving.
func TestFuzzKVProtocol(t *testing.T) {
	seed := fuzzSeed(t)
	t.Logf("fuzz seed %d (replay: KVNODE_FUZZ_SEED=%d go test ./e2e -run TestFuzzKVProtocol)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 2))
	c := startCluster(t, 1)
	n := c.Node(0)
	cl := newClient(t, c)
	rss0 := nodeRSS(t, n)
	iters := 3000
	if testing.Short() {
		iters = 500
	}
	var conn net.Conn
	var fr *wire.FrameReader
	dial := func() {
		var err error
		conn, err = net.DialTimeout("tcp", n.KVAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(wire.ClientPreamble))
		fr = wire.NewFrameReader(bufio.NewReader(conn), 0)
	}
	dial()
	defer func() { conn.Close() }()
	statuses := map[wire.Status]int{}
	broken := 0
	for i := range iters {
		id := uint64(i + 1)
		frame, _ := kvFuzzFrame(rng, id)
		breaks := false
		if rng.IntN(20) == 0 {
			// Break the framing: a bad length, or a truncated frame.
			breaks = true
			switch rng.IntN(3) {
			case 0:
				be.BigEndian.PutUint32(frame, uint32(rng.IntN(wire.MinFrameLength)))
			case 1:
				be.BigEndian.PutUint32(frame, 0xffffffff)
			case 2:
				frame = frame[:rng.IntN(len(frame))]
			}
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Write(frame); err != nil {
			t.Fatalf("frame %d: write: %v", i, err)
		}
		if breaks {
			conn.(*net.TCPConn).CloseWrite()
		}
		f, err := readKVResponse(fr)
		switch {
		case err != nil && breaks && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
			// A truncated frame: the stream ended; the server closed too.
			broken++
		case err != nil:
			t.Fatalf("frame %d (breaks=%v): reading the answer: %v", i, breaks, err)
		case breaks && f.Status() == wire.StatusMalformedFrame:
			if f.ID != 0 {
				t.Errorf("frame %d: MalformedFrame with id %d, want 0", i, f.ID)
			}
			broken++
			if _, err := fr.Next(); err == nil {
				t.Errorf("frame %d: the server kept the connection open after MalformedFrame", i)
			}
		case f.ID != id:
			t.Fatalf("frame %d: answer id %d, want %d (status %v)", i, f.ID, id, f.Status())
		default:
			statuses[f.Status()]++
			if f.Status() == wire.StatusInternal {
				var eb wire.ErrorBody
				wire.Decode(f.Body, &eb)
				t.Errorf("frame %d (op %d): Internal: %s", i, frame[12], eb.Msg)
			}
		}
		if breaks {
			conn.Close()
			dial()
		}
		if i%500 == 0 {
			stillServes(t, c, cl, fmt.Sprintf("kv-fuzz-%d", i))
		}
	}
	stillServes(t, c, cl, "after-kv-fuzz")
	rss1 := nodeRSS(t, n)
	t.Logf("%d frames, %d broke the stream; statuses %v; node RSS %d MiB -> %d MiB", iters, broken, statuses, rss0>>20, rss1>>20)
	if rss1-rss0 > 512<<20 {
		t.Errorf("the node's memory grew by %d MiB under the KV fuzz", (rss1-rss0)>>20)
	}
}

// TestHugeDeclaredLengths opens many connections that each declare a frame
// (or an HTTP body) of the largest size the node accepts, or far beyond,
// and send only a few bytes of it: the node must not allocate what is
// declared, only what arrives.
func TestHugeDeclaredLengths(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Node(0)
	cl := newClient(t, c)
	stillServes(t, c, cl, "before")
	rss0 := nodeRSS(t, n)
	const conns = 200
	limit := wire.DefaultMaxFrameSize + 1<<20 // the node's limit: 16 MiB, or the value limit + 64 KiB
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	// In the limit: the node waits for the rest.
	for i := range conns {
		conn, err := net.DialTimeout("tcp", n.KVAddr, 2*time.Second)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		open = append(open, conn)
		hdr := make([]byte, 4)
		be.BigEndian.PutUint32(hdr, uint32(limit-1-rand.IntN(1<<20)))
		conn.Write([]byte(wire.ClientPreamble))
		conn.Write(hdr)
		conn.Write(make([]byte, 100))
	}
	// Over the limit: MalformedFrame, connection closed, nothing allocated.
	for i := range 20 {
		conn, err := net.DialTimeout("tcp", n.KVAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(wire.ClientPreamble))
		conn.Write([]byte{0xff, 0xff, 0xff, 0xff})
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fr := wire.NewFrameReader(bufio.NewReader(conn), 0)
		f, err := fr.Next()
		if err != nil || f.Status() != wire.StatusMalformedFrame {
			t.Errorf("over-limit frame %d: %v %v, want MalformedFrame", i, f.Status(), err)
		}
		if _, err := fr.Next(); err == nil {
			t.Errorf("over-limit frame %d: connection left open", i)
		}
		conn.Close()
	}
	// HTTP: a PUT declaring 1 TiB, and one declaring just the value limit.
	for i := range conns {
		conn, err := net.DialTimeout("tcp", n.HTTPAddr, 2*time.Second)
		if err != nil {
			t.Fatalf("http conn %d: %v", i, err)
		}
		open = append(open, conn)
		cl := int64(1 << 40)
		if i%2 == 0 {
			cl = 1 << 20
		}
		fmt.Fprintf(conn, "PUT /kv/huge-%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", i, cl)
		conn.Write(make([]byte, 1000))
	}
	time.Sleep(2 * time.Second)
	stillServes(t, c, cl, "with huge declared lengths pending")
	rss1 := nodeRSS(t, n)
	t.Logf("%d KV frames declaring ~%d MiB each and %d HTTP bodies declaring up to 1 TiB, pending: node RSS %d MiB -> %d MiB",
		conns, limit>>20, conns, rss0>>20, rss1>>20)
	// Had the node allocated the declared sizes, it would hold ~3 GiB.
	if rss1-rss0 > 256<<20 {
		t.Errorf("memory grew by %d MiB with %d connections declaring huge lengths: the node allocates what is declared, not what arrives",
			(rss1-rss0)>>20, 2*conns)
	}
	// A declared-huge HTTP body that is then sent in full is refused (413).
	for _, conn := range open {
		conn.Close()
	}
	open = nil
	code, body := httpDo(t, "PUT", "http://"+n.HTTPAddr+"/kv/too-big", bytes.Repeat([]byte("x"), 1<<20+1))
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(body, "error") {
		t.Errorf("PUT over the value limit: %d %s", code, body)
	}
	stillServes(t, c, cl, "after")
}

// TestSlowloris: clients that start requests and never finish them, on
// the HTTP and the KV port, must not stall anybody else; the node closes
// the ones that never send a header in time.
func TestSlowloris(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Node(0)
	cl := newClient(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var closedByServer atomic.Int64
	slow := func(addr string, first []byte, drip bool) {
		defer wg.Done()
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return
		}
		defer conn.Close()
		conn.Write(first)
		go func() {
			// Notice the server hanging up.
			buf := make([]byte, 512)
			for {
				if _, err := conn.Read(buf); err != nil {
					if ctx.Err() == nil {
						closedByServer.Add(1)
					}
					return
				}
			}
		}()
		for drip {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			if _, err := conn.Write([]byte("x")); err != nil {
				return
			}
		}
		<-ctx.Done()
	}
	const each = 100
	for i := range each {
		wg.Add(4)
		// HTTP: a header that never ends, dripping a byte every 500ms.
		go slow(n.HTTPAddr, []byte(fmt.Sprintf("PUT /kv/slow-%d HTTP/1.1\r\nHost: x\r\nX-Slow: ", i)), true)
		// HTTP: headers done, a body that never comes.
		go slow(n.HTTPAddr, []byte(fmt.Sprintf("PUT /kv/slow-body-%d HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab", i)), false)
		// KV: the preamble and half a frame header.
		go slow(n.KVAddr, append([]byte(wire.ClientPreamble), 0, 0), false)
		// KV: nothing at all (not even the preamble).
		go slow(n.KVAddr, nil, false)
	}
	time.Sleep(500 * time.Millisecond)
	// Others are served promptly all along.
	var worst time.Duration
	for i := range 60 {
		start := time.Now()
		stillServes(t, c, cl, fmt.Sprintf("slowloris-%d", i))
		code, _ := httpDo(t, "GET", "http://"+n.HTTPAddr+"/health", nil)
		if code != 200 {
			t.Fatalf("/health during slowloris: %d", code)
		}
		worst = max(worst, time.Since(start))
		time.Sleep(200 * time.Millisecond)
	}
	// By now (~12s) the node has hung up on those that never sent a
	// preamble (5s) or a complete header (ReadHeaderTimeout, 10s).
	closed := closedByServer.Load()
	t.Logf("%d slow connections; worst normal write+read+/health %v; the node closed %d of them within ~12s", 4*each, worst, closed)
	if closed < 2*each {
		t.Errorf("the node closed only %d of the %d connections that never sent a preamble or a full header", closed, 2*each)
	}
}

// TestManyIdleConnections opens 3000 idle connections to the KV port and
// 3000 to the HTTP port: each is accepted or refused with a clear error,
// the node does not crash, and normal requests still succeed.
func TestManyIdleConnections(t *testing.T) {
	have := raiseFDLimit(t)
	// 3000 per port when the file limit allows (it does as root, as CI
	// runs); fewer, never none, where it does not.
	perPort := min(3000, (int(have)-500)/2)
	if perPort < 200 {
		t.Fatalf("RLIMIT_NOFILE is %d and cannot be raised: too low to test idle connections", have)
	}
	c := startCluster(t, 1)
	n := c.Node(0)
	cl := newClient(t, c)
	rss0 := nodeRSS(t, n)
	t.Logf("test process RLIMIT_NOFILE %d; the node's open-files limit (soft/hard) %s", have, nodeFDLimit(n))
	var mu sync.Mutex
	var conns []net.Conn
	errs := map[string]int{}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dialMany := func(addr string, first []byte) {
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for range perPort {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil && first != nil {
					_, err = conn.Write(first)
				}
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs[err.Error()]++
					return
				}
				conns = append(conns, conn)
			}()
		}
		wg.Wait()
	}
	start := time.Now()
	dialMany(n.KVAddr, []byte(wire.ClientPreamble)) // idle clients of the protocol
	dialMany(n.HTTPAddr, nil)                       // idle HTTP connections
	t.Logf("opened %d of %d connections in %v; dial errors: %v", len(conns), 2*perPort, time.Since(start).Round(time.Millisecond), errs)
	for e := range errs {
		if !strings.Contains(e, "refused") && !strings.Contains(e, "reset") && !strings.Contains(e, "timeout") {
			t.Errorf("an unclear error for a refused connection: %s", e)
		}
	}
	for i := range 20 {
		stillServes(t, c, cl, fmt.Sprintf("idle-%d", i))
	}
	// And a brand-new client (new connections) too.
	fresh := newClient(t, c)
	stillServes(t, c, fresh, "fresh-client")
	code, _ := httpDo(t, "GET", "http://"+n.HTTPAddr+"/ready", nil)
	if code != 200 {
		t.Errorf("/ready with %d idle connections: %d", len(conns), code)
	}
	rss1 := nodeRSS(t, n)
	t.Logf("node RSS %d MiB -> %d MiB with %d idle connections (%d KiB each)", rss0>>20, rss1>>20, len(conns), (rss1-rss0)/int64(max(1, len(conns)))>>10)
	if rss1-rss0 > 1<<30 {
		t.Errorf("memory grew by %d MiB for %d idle connections", (rss1-rss0)>>20, len(conns))
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	time.Sleep(time.Second)
	stillServes(t, c, cl, "after-idle")
}

// A lazily started single node for the fuzz targets; each fuzzing process
// starts its own.
var fuzzNode struct {
	once sync.Once
	c    *localcluster.Cluster
	err  error
}

func fuzzTarget(f *testing.F) *localcluster.Node {
	fuzzNode.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		fuzzNode.c, fuzzNode.err = localcluster.Start(ctx, localcluster.Options{
			Binary: binary, Nodes: 1, Dir: f.TempDir(), Env: []string{"TICK_INTERVAL=20ms", "MAX_VALUE_SIZE=65536"},
		})
	})
	if fuzzNode.err != nil {
		f.Fatal(fuzzNode.err)
	}
	f.Cleanup(func() {
		// The next fuzz target of this process starts its own.
		if fuzzNode.c != nil {
			fuzzNode.c.Close()
		}
		fuzzNode.once = sync.Once{}
		fuzzNode.c = nil
	})
	return fuzzNode.c.Node(0)
}

// FuzzKVConn writes arbitrary bytes after the client preamble: whatever
// comes back must be well-formed frames with known statuses (never
// Internal), and the node must survive.
func FuzzKVConn(f *testing.F) {
	n := fuzzTarget(f)
	ping := wire.AppendFrame(nil, 1, uint8(wire.OpPing), nil)
	set, _ := wire.EncodeFrame(nil, 2, uint8(wire.OpSet), &wire.SetRequest{Key: []byte("k"), Value: []byte("v")})
	get, _ := wire.EncodeFrame(nil, 3, uint8(wire.OpGet), &wire.GetRequest{Key: []byte("k")})
	f.Add(ping)
	f.Add(append(append(set, get...), ping...))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 200})
	f.Add(wire.AppendFrame(nil, 4, uint8(wire.OpMGet), []byte{0x81, 0xa4, 'k', 'e', 'y', 's', 0xdd, 0x7f, 0xff, 0xff, 0xff}))
	f.Fuzz(func(t *testing.T, data []byte) {
		conn, err := net.DialTimeout("tcp", n.KVAddr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		conn.Write([]byte(wire.ClientPreamble))
		conn.Write(data)
		conn.(*net.TCPConn).CloseWrite()
		fr := wire.NewFrameReader(bufio.NewReader(conn), 0)
		for {
			fm, err := readKVResponse(fr)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatalf("the node neither answered nor closed within 10s")
				}
				if errors.Is(err, syscall.ECONNRESET) {
					break
				}
				t.Fatalf("reading answers: %v", err)
			}
			if fm.Status() == wire.StatusInternal {
				t.Fatalf("Internal answer to %x", data)
			}
		}
		if !n.Running() {
			t.Fatalf("the node died on %x", data)
		}
	})
}

// FuzzHTTPRaw writes arbitrary bytes to the HTTP port: an answer, if any,
// is never a 500, and the node survives.
func FuzzHTTPRaw(f *testing.F) {
	n := fuzzTarget(f)
	f.Add([]byte("GET /kv/x HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("PUT /kv/x?if_version=0 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"))
	f.Add([]byte("POST /kv/set HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"key\":1}"))
	f.Add([]byte("PUT /kv/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n"))
	f.Add([]byte("GET /kv/get?key=%zz HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		code, body, err := sendRawHTTP(n.HTTPAddr, data, 10*time.Second, true)
		if err != nil {
			t.Fatal(err)
		}
		if code == 500 && (strings.TrimSpace(body) == `{"error":"context canceled"}` || body == "") {
			return // the known half-close bug (TestHTTPHalfClose)
		}
		if code >= 500 && code != http.StatusServiceUnavailable && code != 501 && code != 505 {
			t.Fatalf("%d %s for %q", code, body, data)
		}
		if !n.Running() {
			t.Fatalf("the node died on %q", data)
		}
	})
}

// TestHTTPHalfClose: a complete PUT whose client then half-closes its
// connection (shutdown(SHUT_WR), as `nc -N` does) must get the write's
// answer. net/http cancels the request's context on the read EOF; the
// fault suite caught the node answering 500 "context canceled" for a
// write that may still apply (writes now run to their outcome).
func TestHTTPHalfClose(t *testing.T) {
	c := startCluster(t, 1)
	n := c.Node(0)
	req := []byte("PUT /kv/half HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv")
	code, body, err := sendRawHTTP(n.HTTPAddr, req, 10*time.Second, true)
	if err != nil || code != 200 {
		t.Fatalf("half-closed PUT: %d %s %v, want 200", code, body, err)
	}
}
