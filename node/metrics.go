package node

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// metrics is the node's Prometheus registry. Each node has its own, so that
// several nodes in one process (tests) do not collide.
type metrics struct {
	reg *prometheus.Registry

	writes, reads, forwards prometheus.Counter
	badPreambles            prometheus.Counter
	clientRequests          *prometheus.CounterVec
	httpRequests            *prometheus.CounterVec
	httpLatency             *prometheus.HistogramVec
}

func newMetrics(n *Node) *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		writes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvnode_writes_total", Help: "Writes (keys) acknowledged by this node as a partition leader."}),
		reads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvnode_reads_total", Help: "Reads served by this node."}),
		forwards: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvnode_http_forwarded_total", Help: "HTTP requests forwarded to a partition's leader."}),
		badPreambles: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kvnode_kv_bad_preamble_total", Help: "Connections to the KV port refused for an unknown preamble."}),
		clientRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvnode_kv_requests_total", Help: "Binary-protocol requests by op and status."}, []string{"op", "status"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kvnode_http_requests_total", Help: "HTTP requests by method and status code."}, []string{"method", "code"}),
		httpLatency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kvnode_http_request_seconds", Help: "HTTP request latency.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18)}, []string{"method"}),
	}
	reg.MustRegister(m.writes, m.reads, m.forwards, m.badPreambles, m.clientRequests, m.httpRequests, m.httpLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(&hostCollector{n: n})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush keeps server-sent events working through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (m *metrics) instrument(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		start := time.Now()
		h.ServeHTTP(rec, r)
		m.httpRequests.WithLabelValues(r.Method, strconv.Itoa(rec.code)).Inc()
		m.httpLatency.WithLabelValues(r.Method).Observe(time.Since(start).Seconds())
	})
}

func counterValue(c prometheus.Counter) uint64 {
	var d dto.Metric
	if c.Write(&d) != nil {
		return 0
	}
	return uint64(d.GetCounter().GetValue())
}

func (m *metrics) writesTotal() uint64   { return counterValue(m.writes) }
func (m *metrics) readsTotal() uint64    { return counterValue(m.reads) }
func (m *metrics) forwardsTotal() uint64 { return counterValue(m.forwards) }

// hostCollector exports the replication host's and the transport's
// counters at scrape time.
type hostCollector struct{ n *Node }

var (
	descCycles       = prometheus.NewDesc("kvnode_raft_cycles_total", "Raft loop cycles that handled work.", nil, nil)
	descWALSyncs     = prometheus.NewDesc("kvnode_wal_syncs_total", "WAL batches written with an fsync.", nil, nil)
	descWALSeconds   = prometheus.NewDesc("kvnode_wal_write_seconds_total", "Time spent writing the WAL (fsync included).", nil, nil)
	descApplied      = prometheus.NewDesc("kvnode_entries_applied_total", "Raft entries applied to the state machine.", nil, nil)
	descProposals    = prometheus.NewDesc("kvnode_proposals_total", "Commands proposed as a leader.", nil, nil)
	descReadIndex    = prometheus.NewDesc("kvnode_read_index_batches_total", "ReadIndex requests (each serves a batch of reads).", nil, nil)
	descSnapsSent    = prometheus.NewDesc("kvnode_snapshots_sent_total", "Partition snapshots streamed to peers.", nil, nil)
	descSnapsInst    = prometheus.NewDesc("kvnode_snapshots_installed_total", "Partition snapshots installed.", nil, nil)
	descReplicas     = prometheus.NewDesc("kvnode_replicas", "Raft groups held by this node.", nil, nil)
	descLeaders      = prometheus.NewDesc("kvnode_leaders", "Raft groups led by this node.", nil, nil)
	descPeerSent     = prometheus.NewDesc("kvnode_transport_messages_sent_total", "Raft messages sent to peers.", nil, nil)
	descPeerDropped  = prometheus.NewDesc("kvnode_transport_messages_dropped_total", "Raft messages dropped (peer down or queue full).", nil, nil)
	descPeerReceived = prometheus.NewDesc("kvnode_transport_messages_received_total", "Raft messages received from peers.", nil, nil)
)

func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCycles, descWALSyncs, descWALSeconds, descApplied, descProposals, descReadIndex,
		descSnapsSent, descSnapsInst, descReplicas, descLeaders, descPeerSent, descPeerDropped, descPeerReceived} {
		ch <- d
	}
}

func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.host == nil {
		return
	}
	hm := n.host.Metrics()
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	counter(descCycles, float64(hm.Cycles))
	counter(descWALSyncs, float64(hm.WALAppends))
	counter(descWALSeconds, float64(hm.WALNanos)/1e9)
	counter(descApplied, float64(hm.EntriesApplied))
	counter(descProposals, float64(hm.Proposals))
	counter(descReadIndex, float64(hm.ReadBatches))
	counter(descSnapsSent, float64(hm.SnapshotsSent))
	counter(descSnapsInst, float64(hm.SnapshotsInstalled))
	groups := n.host.Groups()
	leaders := 0
	for _, g := range groups {
		if st, err := n.host.Status(g); err == nil && st.IsLeader {
			leaders++
		}
	}
	ch <- prometheus.MustNewConstMetric(descReplicas, prometheus.GaugeValue, float64(len(groups)))
	ch <- prometheus.MustNewConstMetric(descLeaders, prometheus.GaugeValue, float64(leaders))
	if n.tr != nil {
		tm := n.tr.Metrics().Total
		counter(descPeerSent, float64(tm.MessagesSent))
		counter(descPeerDropped, float64(tm.MessagesDropped))
		counter(descPeerReceived, float64(tm.MessagesReceived))
	}
}
