// Package e2e holds the multi-process tests: they build the real kvnode
// binary and run clusters of it on loopback.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"kvnode/internal/localcluster"
)

// binary is the kvnode executable built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvnode-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "kvnode")
	build := exec.Command("go", "build", "-o", binary, "kvnode/cmd/kvnode")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building kvnode:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// startCluster starts n kvnode processes with a fast raft clock, and
// stops them when the test ends. On failure the node logs stay in the
// test's artifact directory.
func startCluster(t testing.TB, n int, env ...string) *localcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := localcluster.Options{
		Binary: binary,
		Nodes:  n,
		Dir:    t.TempDir(),
		Env:    append([]string{"TICK_INTERVAL=20ms", "LOG_LEVEL=info"}, env...),
	}
	if testing.Verbose() && os.Getenv("KVNODE_TEST_LOG") != "" {
		opts.Output = os.Stderr
	}
	c, err := localcluster.Start(ctx, opts)
	if err != nil {
		t.Fatalf("starting the cluster: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			// Stacks of the nodes still running, in their logs.
			for _, n := range c.Nodes() {
				n.DumpStacks()
			}
		}
		c.Close()
		if t.Failed() {
			saveLogs(t, c)
		}
	})
	return c
}

// saveLogs copies the node logs of a failed test to its artifact
// directory (kept with go test -artifacts, as make test runs it).
func saveLogs(t testing.TB, c *localcluster.Cluster) {
	dst := t.ArtifactDir()
	for _, n := range c.Nodes() {
		b, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		os.WriteFile(filepath.Join(dst, filepath.Base(n.LogPath)), b, 0o644)
	}
	t.Logf("node logs saved in %s", dst)
}
