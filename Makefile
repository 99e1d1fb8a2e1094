# infer — build, run and test.
#
#   make dev    build bin/infer and run the whole platform on this machine
#   make test   vet and test everything against real Postgres, NATS, MinIO
#               and the test model (builds MinIO once, ~8 minutes)
#   make bench  benchmarks (not timed tests)
#   make fuzz   every fuzz target for FUZZTIME (5s; part of make test)
#   make build-cuda  the CUDA backend (needs nvcc and CMake) into lib/ollama
#   make gpu-bundle  .gpu-bundle/ for scripts/gpu-check.sh on a GPU machine

GO      ?= go
GOBIN   := $(shell $(GO) env GOPATH)/bin
GOARCH  := $(shell $(GO) env GOARCH)

# llama.cpp's cgo flags name no CPU features, so a plain build runs scalar
# code. x86-64-v3 (AVX2, FMA, F16C) is what release builds target and
# decodes 2–5× faster. Override with CPU_FLAGS= for older CPUs.
ifeq ($(GOARCH),amd64)
CPU_FLAGS ?= -march=x86-64-v3
endif
export CGO_CFLAGS   := -O3 $(CPU_FLAGS)
export CGO_CXXFLAGS := -O3 $(CPU_FLAGS)
export CGO_ENABLED  := 1

# MinIO for the tests: built from source once, cached outside the repo.
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
MINIO         := $(GOBIN)/minio
export INFER_MINIO_BIN ?= $(MINIO)

TEST_TIMEOUT ?= 30m

.PHONY: jssdk all build build-cuda gpu-bundle dev test unit vet minio bench fuzz clean

all: build

# bin/infer-activator is the same CLI without dev, controlplane and runner
# (no Kubernetes client, NATS server or llama.cpp linked in): what an
# activator-only host or container runs, idling in ~26 MiB instead of ~75.
build:
	$(GO) build -o bin/infer ./cmd/infer
	$(GO) build -tags activatoronly -o bin/infer-activator ./cmd/infer

# The CUDA backend of the ggml that the pinned ollama module vendors, for
# this machine's GPU (CUDA_ARCHITECTURES=... to override), built with
# ollama's CMakeLists.txt and installed in lib/ollama, where bin/infer
# (bin/../lib/ollama) loads it at start. make build stays CPU-only; the
# binaries need no rebuild: the backend is loaded at run time.
build-cuda:
	scripts/build-cuda.sh

# What scripts/gpu-check.sh needs on a GPU machine without Go or network:
# the gpubench binary (gzipped) and the ggml sources to build the CUDA
# backend there. .gpu-bundle/ is git-ignored; carry it with the call.
GPU_BUNDLE := .gpu-bundle

gpu-bundle:
	rm -rf $(GPU_BUNDLE) && mkdir -p $(GPU_BUNDLE)
	$(GO) build -ldflags="-s -w" -o $(GPU_BUNDLE)/gpubench ./scripts/gpubench
	gzip -9 $(GPU_BUNDLE)/gpubench
	src=$$($(GO) mod download -json github.com/ollama/ollama | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p') && \
		tar -czf $(GPU_BUNDLE)/ggml-src.tar.gz -C "$$src" CMakeLists.txt ml/backend/ggml/ggml
	{ git describe --always --dirty; date -u +%FT%TZ; $(GO) version; } > $(GPU_BUNDLE)/MANIFEST
	du -cb $(GPU_BUNDLE)/* | tail -1

dev: build
	./bin/infer dev

vet:
	$(GO) vet ./...
	$(GO) vet -tags activatoronly ./cmd/infer

# TestConsoleInBrowser (cmd/infer) needs Debian's chromium: it skips
# without it, and fails instead under INFER_REQUIRE_BROWSER=1 (.ci/run
# installs chromium and sets it).
test: vet minio jssdk
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) fuzz

# Every fuzz target, briefly: go test -fuzz takes one target in one package
# at a time. FUZZTIME=10m for a real session.
FUZZTIME ?= 5s

fuzz:
	@set -e; for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$t in $$(dirname $$f) for $(FUZZTIME)"; \
			$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) $$(dirname $$f); \
		done; \
	done

# Unit tests only: no MinIO build, skips the end-to-end test.
unit:
	$(GO) test -count=1 -short ./...

# The official JS SDK (pinned in scripts/jssdk/package-lock.json) for
# TestSDKCompatTable; without npm that part of the test skips, saying so.
jssdk:
	@if command -v npm >/dev/null; then cd scripts/jssdk && npm ci --no-audit --no-fund --silent; \
	else echo "npm not found: TestSDKCompatTable's JS SDK check will skip"; fi

minio: $(MINIO)

$(MINIO):
	@echo "building MinIO $(MINIO_VERSION) for the tests (once, ~8 minutes)..."
	GOFLAGS=-buildvcs=false CGO_ENABLED=0 $(GO) install github.com/minio/minio@$(MINIO_VERSION)

# The table of docs/performance.md: runner engine, whole path against a
# temporary infer dev (Postgres database infer_bench), the synthetic ~95M
# model, Ollama when on PATH, idle memory. REPEAT=3 rounds; ~10 minutes.
# The activator's own benchmarks: go test -run '^$$' -bench . ./activator/
bench: build
	scripts/bench.sh

clean:
	rm -rf bin lib build $(GPU_BUNDLE)
