# fleetprof — see README.md. `make run` and `make test` are the two
# commands a newcomer needs; CI runs `make test` through .ci/run.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/fleetprof/fleetprof/internal/version.Version=$(VERSION)
DATA_DIR ?= $(CURDIR)/.cache/run
HTTP_ADDRESS ?= 127.0.0.1:8080
TEST_TIMEOUT ?= 28m
FUZZTIME ?= 10s

.PHONY: all build run test setup vet lint unit fuzz bench generate clean image

all: build

build:
	@mkdir -p dist
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/fleetprof ./fleet/cmd/fleetprof
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/fleetprof-agent ./agent/cmd/fleetprof-agent

# Fleet server with its embedded store, plus a local agent enrolled into it.
run: build
	@bash test/run-local.sh "$(DATA_DIR)" "$(HTTP_ADDRESS)"

setup:
	@bash test/setup.sh

vet:
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

unit:
	FLEETPROF_REQUIRE_PRIVILEGED=$${FLEETPROF_REQUIRE_PRIVILEGED:-1} FLEETPROF_ROOT=$(CURDIR) \
	  $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

# Each fuzz target runs briefly with its committed corpus (testdata/fuzz).
fuzz:
	@bash test/fuzz.sh $(FUZZTIME)

test: setup build vet unit fuzz

bench: build
	@bash test/bench.sh

generate:
	@bash test/generate.sh

# Container images (deploy/images); without a Docker engine it prints the
# docker build commands and fails. VERSION, REGISTRY, PLATFORMS, PUSH=1.
image:
	@VERSION=$(VERSION) bash deploy/images/build.sh

clean:
	rm -rf dist .cache
