// Package localcluster runs a cluster of real kvnode processes on this
// machine, on loopback: for the multi-process tests, the fault suite and
// `kvnode bench --local`. Each node is started exactly as a person would
// start it (NODE_ID, HTTP_PORT, KV_PORT, JOIN_ADDR, DATA_DIR in the
// environment), and can be stopped, killed, paused and restarted.
package localcluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Options configure a cluster.
type Options struct {
	// Binary is the kvnode executable. Required.
	Binary string
	// Nodes is how many nodes Start starts. Default: 3.
	Nodes int
	// Dir holds the nodes' data dirs and logs. Default: a new temporary
	// directory, removed by Close.
	Dir string
	// Env is added to every node's environment (TICK_INTERVAL=10ms, say).
	Env []string
	// NodeEnv, if set, adds node i's own variables (0-based), after Env.
	NodeEnv func(i int) []string
	// Output, if set, also receives every node's log lines, each prefixed
	// with "[node-N] ".
	Output io.Writer
	// ReadyTimeout bounds Start's wait for every node to be ready.
	// Default: 60s.
	ReadyTimeout time.Duration
	// BeforeStart, if set, is called by AddNode with node i (0-based) once
	// its addresses are chosen, before its process first starts: the fault
	// suite points its proxies at the node's KV address there.
	BeforeStart func(i int, n *Node)
}

// Node is one kvnode process of the cluster.
type Node struct {
	Name     string
	HTTPAddr string
	KVAddr   string
	DataDir  string
	LogPath  string

	c      *Cluster
	env    []string
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // the process's exit error, once exited
}

// Cluster is a set of kvnode processes.
type Cluster struct {
	opts    Options
	dir     string
	ownsDir bool

	mu    sync.Mutex
	nodes []*Node
	logWG sync.WaitGroup
}

// Start starts a cluster: node-1 bootstraps it, the others join through
// node-1, and Start returns once every node reports ready.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Binary == "" {
		return nil, errors.New("localcluster: Binary is required")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	c := &Cluster{opts: opts, dir: opts.Dir}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "kvnode-cluster-")
		if err != nil {
			return nil, err
		}
		c.dir, c.ownsDir = d, true
	}
	for i := range opts.Nodes {
		if _, err := c.AddNode(ctx, i > 0); err != nil {
			c.Close()
			return nil, err
		}
		if i == 0 {
			// node-1 must be up before the others can join it.
			if err := c.waitHealthy(ctx, c.nodes[0]); err != nil {
				c.Close()
				return nil, err
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()
	if err := c.WaitReady(rctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Dir is where the nodes keep their data and logs.
func (c *Cluster) Dir() string { return c.dir }

// Nodes returns the cluster's nodes, in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Node(nil), c.nodes...)
}

// Node returns node i (0-based).
func (c *Cluster) Node(i int) *Node { return c.Nodes()[i] }

// HTTPEndpoints lists the nodes' HTTP addresses.
func (c *Cluster) HTTPEndpoints() []string {
	var out []string
	for _, n := range c.Nodes() {
		out = append(out, n.HTTPAddr)
	}
	return out
}

// AddNode starts one more node, joining through node-1 if join is set.
// It does not wait for it to be ready.
func (c *Cluster) AddNode(ctx context.Context, join bool) (*Node, error) {
	c.mu.Lock()
	i := len(c.nodes)
	c.mu.Unlock()
	name := fmt.Sprintf("node-%d", i+1)
	httpPort, err := freePort()
	if err != nil {
		return nil, err
	}
	kvPort, err := freePort()
	if err != nil {
		return nil, err
	}
	n := &Node{
		Name:     name,
		HTTPAddr: "127.0.0.1:" + strconv.Itoa(httpPort),
		KVAddr:   "127.0.0.1:" + strconv.Itoa(kvPort),
		DataDir:  filepath.Join(c.dir, "data", name),
		LogPath:  filepath.Join(c.dir, name+".log"),
		c:        c,
	}
	n.env = append(os.Environ(),
		"NODE_ID="+name,
		"HTTP_PORT="+strconv.Itoa(httpPort),
		"KV_PORT="+strconv.Itoa(kvPort),
		"DATA_DIR="+n.DataDir,
		"BIND_HOST=127.0.0.1",
		"ADVERTISE_HOST=127.0.0.1",
	)
	if join {
		n.env = append(n.env, "JOIN_ADDR="+c.Node(0).HTTPAddr)
	}
	n.env = append(n.env, c.opts.Env...)
	if c.opts.NodeEnv != nil {
		n.env = append(n.env, c.opts.NodeEnv(i)...)
	}
	if c.opts.BeforeStart != nil {
		c.opts.BeforeStart(i, n)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, n)
	c.mu.Unlock()
	return n, n.start()
}

// freePort finds a port free to listen on, below the kernel's ephemeral
// range. A port the kernel hands out for ":0" comes from that range, which
// is also where every outgoing connection takes its source port: with
// other tests busy on loopback, one of them could take the port between
// this check and the node's bind, and the node would fail to start. Below
// the range only an explicit bind can collide.
func freePort() (int, error) {
	lo, hi := 20000, ephemeralLow()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("localcluster: no free port in [%d, %d)", lo, hi)
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux
// default 32768 when it cannot be read).
func ephemeralLow() int {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var lo, hi int
		if _, err := fmt.Sscan(string(b), &lo, &hi); err == nil && lo > 21000 {
			return lo
		}
	}
	return 32768
}

func (n *Node) start() error {
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(n.c.opts.Binary)
	cmd.Env = n.env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	// Its own process group: a Ctrl-C meant for the test does not reach
	// it first, and pausing it pauses nothing else.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", n.Name, err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	n.c.logWG.Add(1)
	go func() {
		defer n.c.logWG.Done()
		defer logf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			logf.Write(line)
			logf.Write([]byte{'\n'})
			if out := n.c.opts.Output; out != nil {
				fmt.Fprintf(out, "[%s] %s\n", n.Name, line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		n.err = cmd.Wait()
		pw.Close()
		close(n.exited)
	}()
	return nil
}

// PID is the process id of the node's current (or last) process, 0 if it
// never started.
func (n *Node) PID() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Running reports whether the node's process is alive.
func (n *Node) Running() bool {
	if n.exited == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// ExitCode waits for the process to end and returns its exit code (-1 if
// it died of a signal).
func (n *Node) ExitCode(timeout time.Duration) (int, error) {
	select {
	case <-n.exited:
	case <-time.After(timeout):
		return 0, fmt.Errorf("%s did not exit within %v", n.Name, timeout)
	}
	if n.cmd.ProcessState == nil {
		return -1, n.err
	}
	return n.cmd.ProcessState.ExitCode(), nil
}

func (n *Node) signal(sig syscall.Signal) error {
	if !n.Running() {
		return fmt.Errorf("%s is not running", n.Name)
	}
	return n.cmd.Process.Signal(sig)
}

// Kill kills the node with SIGKILL and waits for it to die.
func (n *Node) Kill() error {
	if err := n.signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-n.exited
	return nil
}

// Stop sends SIGTERM and waits up to timeout for a clean exit; it returns
// the exit code.
func (n *Node) Stop(timeout time.Duration) (int, error) {
	if err := n.signal(syscall.SIGTERM); err != nil {
		return 0, err
	}
	return n.ExitCode(timeout)
}

// DumpStacks makes a running node print every goroutine's stack to its
// log and exit (SIGQUIT), and waits for it: what a failed test wants to
// see of a node that seems stuck.
func (n *Node) DumpStacks() {
	if !n.Running() {
		return
	}
	n.signal(syscall.SIGCONT)
	if n.signal(syscall.SIGQUIT) == nil {
		select {
		case <-n.exited:
		case <-time.After(5 * time.Second):
		}
	}
}

// Pause stops the process with SIGSTOP; Resume continues it.
func (n *Node) Pause() error  { return n.signal(syscall.SIGSTOP) }
func (n *Node) Resume() error { return n.signal(syscall.SIGCONT) }

// SetEnv adds variables to the node's environment for its next start.
func (n *Node) SetEnv(vars ...string) { n.env = append(n.env, vars...) }

// Restart starts the node again, with the same name, ports and data dir.
func (n *Node) Restart() error {
	if n.Running() {
		return fmt.Errorf("%s is still running", n.Name)
	}
	return n.start()
}

// Ready reports whether the node answers /ready with 200.
func (n *Node) Ready(ctx context.Context) error {
	code, body, err := n.get(ctx, "/ready")
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s not ready: %s", n.Name, body)
	}
	return nil
}

func (n *Node) get(ctx context.Context, path string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.HTTPAddr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), nil
}

// GetJSON fetches path from the node and decodes it into v.
func (n *Node) GetJSON(ctx context.Context, path string, v any) error {
	code, body, err := n.get(ctx, path)
	if err != nil {
		return err
	}
	if code != http.StatusOK {
		return fmt.Errorf("%s %s: %d %s", n.Name, path, code, body)
	}
	return json.Unmarshal([]byte(body), v)
}

func (c *Cluster) waitHealthy(ctx context.Context, n *Node) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ReadyTimeout)
	defer cancel()
	for {
		if code, _, err := n.get(ctx, "/health"); err == nil && code == http.StatusOK {
			return nil
		}
		if !n.Running() {
			return fmt.Errorf("%s exited while starting: %v (log: %s)", n.Name, n.err, n.LogPath)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy: %w (log: %s)", n.Name, ctx.Err(), n.LogPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// WaitReady waits until every running node is ready.
func (c *Cluster) WaitReady(ctx context.Context) error {
	for {
		var last error
		for _, n := range c.Nodes() {
			if !n.Running() {
				continue
			}
			if err := n.Ready(ctx); err != nil {
				last = err
				break
			}
		}
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Close kills every node, waits for their logs, and removes the directory
// if Start created it.
func (c *Cluster) Close() error {
	for _, n := range c.Nodes() {
		if n.Running() {
			n.Resume()
			n.Kill()
		}
	}
	c.logWG.Wait()
	if c.ownsDir {
		return os.RemoveAll(c.dir)
	}
	return nil
}
