package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testCluster is a cluster of in-process nodes on loopback, each with its
// own data dir on the real disk.
type testCluster struct {
	t     testing.TB
	dir   string
	nodes []*Node
	cfgs  []Config
}

func testConfig(t testing.TB, dir, name string) Config {
	logger := slog.New(slog.DiscardHandler)
	if os.Getenv("KVNODE_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("n", name)
	}
	return Config{
		NodeID:          name,
		DataDir:         filepath.Join(dir, name),
		BindHost:        "127.0.0.1",
		Partitions:      16,
		TickInterval:    10 * time.Millisecond,
		RequestTimeout:  2 * time.Second,
		DeadNodeTimeout: 5 * time.Second,
		Logger:          logger,
	}
}

// newTestCluster starts n nodes: the first bootstraps, the others join it.
func newTestCluster(t testing.TB, n int, adjust func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, dir: t.TempDir()}
	for i := range n {
		cfg := testConfig(t, c.dir, fmt.Sprintf("node-%d", i+1))
		if i > 0 {
			cfg.JoinAddr = c.nodes[0].HTTPAddr()
		}
		if adjust != nil {
			adjust(&cfg)
		}
		c.cfgs = append(c.cfgs, cfg)
		c.nodes = append(c.nodes, c.open(cfg))
	}
	t.Cleanup(c.closeAll)
	c.waitReady(30 * time.Second)
	return c
}

func (c *testCluster) open(cfg Config) *Node {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := Open(ctx, cfg)
	if err != nil {
		c.t.Fatalf("open %s: %v", cfg.NodeID, err)
	}
	return n
}

// restart reopens node i with the same data dir and ports.
func (c *testCluster) restart(i int) {
	c.t.Helper()
	cfg := c.cfgs[i]
	if old := c.nodes[i]; old != nil {
		cfg.HTTPPort, cfg.KVPort = portOf(old.HTTPAddr()), portOf(old.KVAddr())
	}
	c.nodes[i] = c.open(cfg)
}

func portOf(addr string) int {
	var p int
	fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &p)
	return p
}

func (c *testCluster) stop(i int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.nodes[i].Close(ctx); err != nil {
		c.t.Errorf("close %s: %v", c.cfgs[i].NodeID, err)
	}
}

func (c *testCluster) closeAll() {
	for i, n := range c.nodes {
		if n != nil && !n.closed {
			c.stop(i)
		}
	}
}

func (c *testCluster) waitReady(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var notReady []string
		for _, n := range c.nodes {
			if n.closed {
				continue
			}
			if err := n.Ready(); err != nil {
				notReady = append(notReady, fmt.Sprintf("%s: %v", n.cfg.NodeID, err))
			}
		}
		if len(notReady) == 0 {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("not ready after %v: %v", timeout, notReady)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends an HTTP request to node i and returns the status, headers and
// body.
func (c *testCluster) do(i int, method, path string, body string) (int, http.Header, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, "http://"+c.nodes[i].HTTPAddr()+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func (c *testCluster) clusterJSON(i int) map[string]any {
	c.t.Helper()
	code, _, body := c.do(i, "GET", "/cluster", "")
	if code != 200 {
		c.t.Fatalf("/cluster: %d %s", code, body)
	}
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		c.t.Fatal(err)
	}
	return v
}
