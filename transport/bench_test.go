package transport

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
)

// BenchmarkTransport sends MsgApp-sized messages (one 256-byte entry each)
// from one transport to another over loopback TCP, in Send batches of the
// given size, and reports messages and bytes per second end to end (from
// the first Send to the last message reaching the receiver's Handler).
//
//	go test -run '^$' -bench BenchmarkTransport -benchtime 2s ./transport/
func BenchmarkTransport(b *testing.B) {
	random := func(i int) []byte { return randomBytes(uint64(i), 256) }
	text := func(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("k%07d=v;", i)), 256/10+1)[:256] }
	for _, bc := range []struct {
		name  string
		batch int
		data  func(i int) []byte
	}{
		{"batch=1/entry=256B-random", 1, random},
		{"batch=64/entry=256B-random", 64, random},
		{"batch=64/entry=256B-text", 64, text},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newCluster(b, nil, 1, 2)
			n1, n2 := c.node(1), c.node(2)
			n2.rec.countOnly.Store(true)
			const pool = 4096
			msgs := make([]Message, pool)
			var wire int
			for i := range msgs {
				msgs[i] = appMsg(uint64(i%64), 1, 2, uint64(1000+i), bc.data(i))
				wire += proto.Size(msgs[i].Msg) + 3 // + group and length varints
			}
			b.SetBytes(int64(wire / pool))
			// Warm up: connect.
			n1.tr.Send(2, msgs[:1])
			waitFor(b, 5*time.Second, "connection", func() bool { return n2.rec.received.Load() == 1 })
			n2.rec.received.Store(0)
			base := n1.tr.Metrics().Peers[2]

			// Keep at most half a queue in flight so nothing is dropped:
			// this measures throughput, not the drop path.
			window := int64(n1.tr.cfg.QueueSize / 2)
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; {
				n := min(bc.batch, b.N-sent)
				off := sent % (pool - bc.batch)
				n1.tr.Send(2, msgs[off:off+n])
				sent += n
				for int64(sent)-n2.rec.received.Load() > window {
					runtime.Gosched()
				}
			}
			for n2.rec.received.Load() < int64(b.N) {
				runtime.Gosched()
				if time.Since(start) > time.Minute {
					b.Fatalf("received %d of %d", n2.rec.received.Load(), b.N)
				}
			}
			el := time.Since(start)
			b.StopTimer()
			p := n1.tr.Metrics().Peers[2]
			if d := p.MessagesDropped - base.MessagesDropped; d != 0 {
				b.Fatalf("%d messages dropped", d)
			}
			b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(p.BytesSent-base.BytesSent)/el.Seconds()/1e6, "wireMB/s")
			b.ReportMetric(float64(b.N)/float64(max(1, p.Writes-base.Writes)), "msgs/write")
		})
	}
}
