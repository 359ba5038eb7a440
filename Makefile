# kvnode — build, test and benchmark targets.
# `make test` is the command CI runs (via .ci/run) on a fresh clone.

GO      ?= go
PKGS    ?= ./...
BIN     := bin/kvnode
BENCHTIME ?= 2s

.PHONY: all build test test-race vet bench fuzz clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/kvnode

vet:
	$(GO) vet $(PKGS)

# The whole suite: unit, crash, fault and multi-process tests. Keep it well
# under 30 minutes on 2 cores; long soak runs live behind their own targets.
test: vet
	$(GO) test -count=1 -timeout 30m $(PKGS)

test-race:
	$(GO) test -race -count=1 -timeout 45m $(PKGS)

# Storage micro-benchmarks on a real disk (b.TempDir()).
bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -count 1 ./wal ./engine

# Short coverage-guided fuzzing of the key encodings; the seed corpora run in `make test`.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzKeyRoundTrip -fuzztime $(FUZZTIME) ./wal
	$(GO) test -run '^$$' -fuzz FuzzKeyRoundTrip -fuzztime $(FUZZTIME) ./engine

clean:
	rm -rf bin data
