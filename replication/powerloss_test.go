package replication

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestPowerLoss is P3 for a whole node: node 3 runs on a crashable
// in-memory filesystem. Several times while writes run, it is cut off the
// network, its filesystem is cloned as a power loss would leave it (a
// random share of unsynced data kept), and it restarts from the clone.
// Raft must not panic (it would, on a log that lost fsynced entries), and
// every acknowledged write must be readable from node 3.
func TestPowerLoss(t *testing.T) {
	mem := vfs.NewCrashableMem()
	c := newTestClusterFS(t, 3, 8, nil, func(id uint64) vfs.FS {
		if id == 3 {
			return mem
		}
		return nil
	})
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	ctx, cancel := context.WithCancel(context.Background())
	var acks []ack
	done := make(chan struct{})
	go func() { acks = writeLoad(ctx, c, 8, "pl"); close(done) }()

	n3 := c.node(3)
	for crash := range 4 {
		time.Sleep(time.Duration(200+rng.IntN(400)) * time.Millisecond)
		c.isolate(3)
		pct := rng.IntN(101)
		clone := n3.fs.(*vfs.MemFS).CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rng})
		c.stop(n3)
		n3.fs = clone
		c.start(n3)
		c.heal(3)
		t.Logf("crash %d: restarted node 3 from a clone keeping %d%% of unsynced data", crash, pct)
	}
	time.Sleep(300 * time.Millisecond)
	cancel()
	<-done
	if len(acks) == 0 {
		t.Fatal("no write acknowledged")
	}
	checkReadable(t, c, n3, acks)
	for _, g := range c.groups {
		var last uint64
		for _, a := range acks {
			if a.group == g && a.version > last {
				last = a.version
			}
		}
		c.waitApplied(g, last, 10*time.Second)
	}
	t.Logf("%d acknowledged writes readable on the node that lost power 4 times", len(acks))
}
