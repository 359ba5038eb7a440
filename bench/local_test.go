package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLocalCommand builds the real kvnode binary and runs
// `kvnode bench --local` with it for a couple of seconds: the command
// starts its own 3-node cluster of itself, preloads, runs a write and a
// read workload, prints JSON lines, draws the plot, and leaves no
// directory behind.
func TestLocalCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts three processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "kvnode")
	build := exec.Command("go", "build", "-o", bin, "kvnode/cmd/kvnode")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building kvnode: %v\n%s", err, out)
	}
	// The local cluster's data goes under TMPDIR; a private one shows
	// whether it was removed.
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	plot := filepath.Join(dir, "run.png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--local", "--workload", "write,read", "--clients", "4",
		"--duration", "1500ms", "--warmup", "300ms", "--keys", "2000", "--json", "--plot", plot)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kvnode bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("stdout has %d lines, want 2 JSON objects:\n%s\nstderr:\n%s", len(lines), stdout.String(), stderr.String())
	}
	for i, w := range []string{"write", "read"} {
		m := checkSchema(t, lines[i])
		if m["workload"] != w || m["clients"] != float64(4) || m["ops"].(float64) < 10 || m["errors"] != float64(0) {
			t.Errorf("line %d: %s, want workload %s, 4 clients, some ops and no errors", i, lines[i], w)
		}
	}
	for _, want := range []string{"local cluster ready", "preload: 2000 keys", "ops/s"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr does not mention %q:\n%s", want, stderr.String())
		}
	}
	if fi, err := os.Stat(plot); err != nil || fi.Size() == 0 {
		t.Errorf("plot: %v", err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("the local cluster left %d entries in TMPDIR (%s)", len(left), left[0].Name())
	}
}

// TestCommandNoCluster points the command at a
// cluster that is not there: it must exit non-zero and say why.
func TestCommandNoCluster(t *testing.T) {
	var stderr bytes.Buffer
	// Port 1 on loopback: nothing listens there.
	_, err := Execute(context.Background(), Options{Endpoints: []string{"127.0.0.1:1"}, Timeout: time.Second, ProgressInterval: -1}, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(err.Error(), "fetching the topology") {
		t.Errorf("err = %v, want a topology failure", err)
	}
}
