# kvnode — build, run, test and benchmark targets.
# `make test` is the command CI runs (via .ci/run) on a fresh clone.

GO        ?= go
PKGS      ?= ./...
BIN       := bin/kvnode
BENCHTIME ?= 2s
# Failed tests keep their artifacts (node logs, porcupine visualizations)
# here.
ARTIFACTS ?= $(CURDIR)/test-artifacts

.PHONY: all build run test test-race vet chaos lin bench bench-e2e bench-micro bench-storage bench-replication bench-rebalance bench-restart fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/kvnode

# The README's quick start: a 3-node cluster on ports 8080-8082/9080-9082,
# data under ./data, until Ctrl-C.
run: build
	./scripts/run-local.sh

vet:
	$(GO) vet $(PKGS)

# The whole suite: unit, crash, fault, in-process cluster and multi-process
# tests. Keep it well under 30 minutes on 2 cores; long soak runs live
# behind their own targets.
test: vet
	mkdir -p $(ARTIFACTS)
	$(GO) test -count=1 -timeout 30m -artifacts -outputdir $(ARTIFACTS) $(PKGS)

# The crash and fault suite, a minute of faults per scenario (make test runs
# it for 6s each); every scenario prints its seed and a CHAOS-TOTALS line.
# Replay one: make chaos CHAOS_RUN='TestChaos/kill-leaders$$' CHAOS_SEED=N
CHAOS_DURATION ?= 60s
CHAOS_RUN      ?= TestChaos
CHAOS_SEED     ?=
chaos:
	mkdir -p $(ARTIFACTS)
	KVNODE_CHAOS_SEED=$(CHAOS_SEED) KVNODE_CHAOS_DURATION=$(CHAOS_DURATION) \
		$(GO) test -count=1 -v -timeout 90m -artifacts -outputdir $(ARTIFACTS) -run '$(CHAOS_RUN)' ./e2e

# The in-process linearizability test (P2) for longer than the 30s make
# test gives it: 8 clients against a nemesis that kills, restarts and
# isolates nodes; porcupine checks the history. A failure leaves
# linearizability.html in $(ARTIFACTS).
LIN_DURATION ?= 5m
LIN_SEED     ?= 0
lin:
	mkdir -p $(ARTIFACTS)
	$(GO) test -count=1 -v -timeout 90m -artifacts -outputdir $(ARTIFACTS) -run '^TestLinearizability$$' ./replication -lin.duration $(LIN_DURATION) -lin.seed $(LIN_SEED)

test-race:
	$(GO) test -race -count=1 -timeout 60m $(PKGS)

# The standard end-to-end sweep (BENCHMARKS.md): a local 3-node cluster of
# bin/kvnode; write, linearizable read and stale read at 1, 16, 64 and 256
# clients. BENCHFLAGS adds flags (--json, --plot FILE.png, --duration 30s).
BENCHFLAGS ?=
bench: build
	./$(BIN) bench --local --workload write,read,stale-read --clients 1,16,64,256 $(BENCHFLAGS)

# The end-to-end go test benchmarks: 3 in-process nodes and the Go client.
bench-e2e:
	$(GO) test -run '^$$' -bench . -benchtime 5s -count 3 ./bench

# Storage, transport and replication micro-benchmarks on the real disk.
bench-micro: bench-storage bench-replication

# A node holding 1,000,000 keys killed and restarted: time until ready.
bench-restart:
	$(GO) test -run '^$$' -bench BenchmarkRestart -benchtime 1x -timeout 30m ./e2e

# Snapshot streaming speed: 1 GiB on 3 nodes is 3 GiB of replicas; a fourth
# node takes a quarter of them, about 0.75 GiB (~807 MB streamed).
bench-rebalance:
	$(GO) test -run '^$$' -bench BenchmarkRebalance -benchtime 1x -timeout 30m ./e2e

bench-storage:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count 1 ./wal ./engine ./transport

# Three in-process nodes share one Go runtime here; -cpu 4 gives it as many
# Ps as three 2-P processes would have between them (see BENCHMARKS.md).
bench-replication:
	$(GO) test -run '^$$' -bench BenchmarkReplicatedPut -benchtime 5s -count 1 -cpu 4 ./replication

# Short coverage-guided fuzzing; the seed corpora run in `make test`.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzKeyRoundTrip -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz FuzzKeyRoundTrip -fuzztime $(FUZZTIME) ./engine
	$(GO) test -run '^$$' -fuzz FuzzReceiveSnapshot -fuzztime $(FUZZTIME) ./engine
	$(GO) test -run '^$$' -fuzz FuzzDecodeFrame -fuzztime $(FUZZTIME) ./transport
	$(GO) test -run '^$$' -fuzz FuzzDecodeMessage -fuzztime $(FUZZTIME) ./transport
	$(GO) test -run '^$$' -fuzz FuzzDecodeCommand -fuzztime $(FUZZTIME) ./replication
	$(GO) test -run '^$$' -fuzz FuzzFrameReader -fuzztime $(FUZZTIME) ./wire
	$(GO) test -run '^$$' -fuzz FuzzDecodeBodies -fuzztime $(FUZZTIME) ./wire
	$(GO) test -run '^$$' -fuzz FuzzKVConn -fuzztime $(FUZZTIME) ./e2e
	$(GO) test -run '^$$' -fuzz FuzzHTTPRaw -fuzztime $(FUZZTIME) ./e2e

clean:
	rm -rf bin data test-artifacts
