# Lifeboat developer targets. Everything needs only Go; `make test` also runs
# the integration tests when their tools are installed (.ci/run installs them
# and sets LIFEBOAT_REQUIRE_INTEGRATION=1, which turns their skips into failures).

GO        ?= go
# Each fuzz target runs for the count of executions in .ci/fuzz-counts
# (about 10 s each on 2 cores; see that file). FUZZTIME, if set, is one
# budget for every target instead: make fuzz FUZZTIME=2000000x.
FUZZTIME  ?=
# Go minimizes each new interesting input for 60 s by default: in a 10 s run
# one minimization is the whole run (8 executions of FuzzDecodeFooter in
# CI). A bounded number of tries keeps the time for fuzzing.
FUZZMINIMIZE ?= 100x
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all demo test deps unit fuzz bench lint build clean

all: lint test build

## demo: replicate a scratch volume to a recovery site on this machine (NBD in, TLS out, file target), prove its latest recovery point is byte-exact, test failover, fail over, reprotect and fail back (~10 s after the build, no root)
demo:
	$(GO) run ./cmd/lifeboat demo

## test: install the integration tools if missing (.ci/deps), go vet, every test with -race, then a short run of every fuzz target
test: deps unit fuzz

## deps: install what the integration tests need, only what is missing (needs root or sudo)
deps:
	@.ci/deps

# The e2e package runs the real binaries for about 8 minutes under -race on
# 2 cores: more than go test's default 10-minute budget per package leaves
# on a loaded machine.
unit:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 25m ./...

## fuzz: run each fuzz target (func FuzzXxx in any *_test.go) for its count of executions in .ci/fuzz-counts (.ci/fuzz)
fuzz:
	@GO='$(GO)' FUZZTIME='$(FUZZTIME)' FUZZMINIMIZE='$(FUZZMINIMIZE)' .ci/fuzz

## bench: every benchmark, with allocations
bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

## lint: gofmt, go vet, staticcheck
lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -l found unformatted files (run gofmt -w on them):"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

## build: bin/lifeboat, versioned from git describe
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/lifeboat ./cmd/lifeboat

clean:
	rm -rf bin
