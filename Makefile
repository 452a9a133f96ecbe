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
# make install: where the binary, the systemd units and the configuration
# files go. DESTDIR is prepended to each (for packaging); BIN is the binary
# that build writes and install copies.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
CONFDIR    ?= /etc/lifeboat
SYSTEMDDIR ?= /etc/systemd/system
DESTDIR    ?=
BIN        ?= bin/lifeboat
UNITS      := lifeboat-agent.service lifeboat-server.service lifeboat-process-server.service
CONFIGS    := agent server process-server

.PHONY: all demo test deps unit fuzz bench lint build install uninstall clean

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
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/lifeboat

## install: build, then install $(BINDIR)/lifeboat, the systemd units of packaging/ in $(SYSTEMDDIR) and, only where none exists yet, $(CONFDIR)/{agent,server,process-server}.yaml from 'lifeboat config example' (PREFIX, DESTDIR, CONFDIR, SYSTEMDDIR)
install: build
	install -d '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(SYSTEMDDIR)' '$(DESTDIR)$(CONFDIR)'
	install -m 0755 '$(BIN)' '$(DESTDIR)$(BINDIR)/lifeboat'
	@for u in $(UNITS); do \
		sed -e 's|/usr/local/bin/lifeboat|$(BINDIR)/lifeboat|g' -e 's|/etc/lifeboat/|$(CONFDIR)/|g' \
			packaging/$$u > '$(DESTDIR)$(SYSTEMDDIR)'/$$u.tmp && \
		chmod 0644 '$(DESTDIR)$(SYSTEMDDIR)'/$$u.tmp && \
		mv '$(DESTDIR)$(SYSTEMDDIR)'/$$u.tmp '$(DESTDIR)$(SYSTEMDDIR)'/$$u && \
		echo "installed $(DESTDIR)$(SYSTEMDDIR)/$$u" || exit 1; \
	done
	@for r in $(CONFIGS); do \
		f='$(DESTDIR)$(CONFDIR)'/$$r.yaml; \
		if [ -e "$$f" ]; then echo "kept $$f (an existing configuration is never overwritten)"; continue; fi; \
		'$(BIN)' config example $$r > "$$f.tmp" && chmod 0640 "$$f.tmp" && mv "$$f.tmp" "$$f" && \
		echo "wrote $$f" || exit 1; \
	done
	@echo
	@echo "Next steps:"
	@echo "  on the recovery site:  lifeboat server init --data-dir /var/lib/lifeboat/server"
	@echo "                         edit $(CONFDIR)/server.yaml, then check it: lifeboat config check server $(CONFDIR)/server.yaml"
	@echo "                         systemctl daemon-reload && systemctl enable --now lifeboat-server"
	@echo "  on a protected server: edit $(CONFDIR)/agent.yaml (volume, server, cert, key, ca),"
	@echo "                         lifeboat config check agent $(CONFDIR)/agent.yaml"
	@echo "                         systemctl daemon-reload && systemctl enable --now lifeboat-agent"
	@echo "  logs:                  journalctl -u lifeboat-agent -f"

## uninstall: remove the binary and the units that install put in place; configuration files and data stay (stop the services first: systemctl disable --now lifeboat-agent lifeboat-server)
uninstall:
	rm -f '$(DESTDIR)$(BINDIR)/lifeboat'
	@for u in $(UNITS); do rm -f '$(DESTDIR)$(SYSTEMDDIR)'/$$u; done
	@echo "removed $(DESTDIR)$(BINDIR)/lifeboat and the lifeboat units of $(DESTDIR)$(SYSTEMDDIR);"
	@echo "kept $(DESTDIR)$(CONFDIR) and the data under /var/lib/lifeboat (remove them yourself if you mean to)."
	@echo "Then: systemctl daemon-reload"

clean:
	rm -rf bin
