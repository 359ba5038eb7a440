package engine

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The benchmarks run on a real disk (b.TempDir()) with default options,
// as a node would. Values are random bytes, so compression does not flatter
// the snapshot numbers.

const (
	benchValueSize = 256
	benchBatch     = 64
	benchParts     = 64
)

func benchEngine(b *testing.B) *Engine {
	b.Helper()
	e, err := Open(b.TempDir(), &Options{FS: vfs.Default})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.Close(); err != nil {
			b.Error(err)
		}
	})
	return e
}

func randomValue(rng *rand.Rand, n int) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = byte(rng.Uint32())
	}
	return v
}

func benchKey(i int) []byte { return fmt.Appendf(nil, "key-%08d", i) }

// BenchmarkEngineApply commits batches of 64 entries, each one op with a
// 256-byte value, spread over 64 partitions: one scheduler cycle per batch.
//   - put: blind writes, no reads;
//   - cas: compare-and-set on fresh keys, each reading through to Pebble;
//   - put+sync: a Sync after every batch, the cost of durability in the
//     engine itself (the raft log makes this unnecessary, see doc.go).
func BenchmarkEngineApply(b *testing.B) {
	for _, mode := range []string{"put", "cas", "put+sync"} {
		b.Run(mode, func(b *testing.B) {
			e := benchEngine(b)
			rng := rand.New(rand.NewPCG(1, 1))
			value := randomValue(rng, benchValueSize)
			var index [benchParts]uint64
			ops := make([]Op, 1)
			var res []Result
			key := 0
			b.ReportAllocs()
			b.SetBytes(benchBatch * benchValueSize)
			b.ResetTimer()
			for range b.N {
				batch := e.NewBatch()
				for j := range benchBatch {
					p := j % benchParts
					index[p]++
					key++
					ops[0] = Op{Kind: OpPut, Key: benchKey(key), Value: value}
					if mode == "cas" {
						ops[0].Kind = OpCompareAndSet
					}
					var err error
					if res, err = batch.Apply(uint64(p), index[p], 1, ops, res[:0]); err != nil {
						b.Fatal(err)
					}
				}
				if err := batch.Commit(); err != nil {
					b.Fatal(err)
				}
				batch.Close()
				if mode == "put+sync" {
					if err := e.Sync(); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.N*benchBatch)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}

// loadPartition writes n keys with 256-byte values into partition p and
// flushes, so reads come from sstables.
func loadPartition(b *testing.B, e *Engine, p uint64, n int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(2, 2))
	batch := e.NewBatch()
	idx := e.Applied(p).Index
	for i := range n {
		idx++
		if _, err := batch.Apply(p, idx, 1, []Op{{Kind: OpPut, Key: benchKey(i), Value: randomValue(rng, benchValueSize)}}, nil); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 || i == n-1 {
			if err := batch.Commit(); err != nil {
				b.Fatal(err)
			}
			batch.Close()
			batch = e.NewBatch()
		}
	}
	batch.Close()
	if err := e.db.Flush(); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkEngineGet reads random keys among 100k (25 MiB of values, all in
// the block cache after warm-up), from one goroutine and from GOMAXPROCS.
func BenchmarkEngineGet(b *testing.B) {
	const keys = 100_000
	e := benchEngine(b)
	loadPartition(b, e, 7, keys)
	b.Run("serial", func(b *testing.B) {
		rng := rand.New(rand.NewPCG(3, 3))
		b.ReportAllocs()
		for range b.N {
			if _, _, err := e.Get(7, benchKey(rng.IntN(keys))); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewPCG(rand.Uint64(), 3))
			for pb.Next() {
				if _, _, err := e.Get(7, benchKey(rng.IntN(keys))); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	})
}

// BenchmarkSnapshot streams a partition of 100k keys (about 27 MB of keys
// and values): "write" encodes it to io.Discard; "install" receives it
// into a staging sstable and installs it into another engine. Throughput
// (MB/s) counts user keys and values.
func BenchmarkSnapshot(b *testing.B) {
	const keys = 100_000
	const p = 9
	src := benchEngine(b)
	loadPartition(b, src, p, keys)
	_, logical, err := src.PartitionStats(p)
	if err != nil {
		b.Fatal(err)
	}
	var stream bytes.Buffer
	{
		s, err := src.NewSnapshot(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.WriteTo(&stream); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}

	b.Run("write", func(b *testing.B) {
		b.SetBytes(logical)
		b.ReportAllocs()
		for range b.N {
			s, err := src.NewSnapshot(p)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.WriteTo(io.Discard); err != nil {
				b.Fatal(err)
			}
			s.Close()
		}
		b.ReportMetric(float64(stream.Len())/float64(logical), "wire/logical")
	})
	b.Run("install", func(b *testing.B) {
		dst := benchEngine(b)
		b.SetBytes(logical)
		b.ReportAllocs()
		for range b.N {
			if _, err := dst.InstallSnapshot(bytes.NewReader(stream.Bytes())); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := dst.DropPartition(p); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}
