# Fallback — every command a developer or CI needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO ?= cargo
WASM_TARGET := wasm32-wasip1
WASM := target/$(WASM_TARGET)/release/fallback_filter.wasm
# The browser inspector: fallback-web for the browser, bound by wasm-bindgen, embedded by the
# companion's build.rs (which only reads these files).
WEB_TARGET := wasm32-unknown-unknown
WEB_PKG := $(CURDIR)/target/web-pkg

.PHONY: help tools build web wasm fmt-check lint unit e2e faults test fuzz bench bench-proxy footprint demo clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

tools: ## Install pinned Envoy, SeaweedFS, fake-gcs-server, Azurite, wasm-bindgen, wrk, the wasm targets, Chromium
	@bash scripts/tools.sh

build: tools web ## Build the companion (with the inspector embedded) and the filter (.wasm)
	FALLBACK_WEB_REQUIRED=1 $(CARGO) build --workspace --bins
	$(CARGO) build -p fallback-filter -p bench-passthrough-filter --target $(WASM_TARGET) --release
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes)"

web: tools ## Build the browser inspector (fallback-web + wasm-bindgen) into target/web-pkg
	$(CARGO) build -p fallback-web --target $(WEB_TARGET) --release
	.tools/bin/wasm-bindgen --target web --no-typescript --out-dir $(WEB_PKG) target/$(WEB_TARGET)/release/fallback_web.wasm
	@echo "inspector: $(WEB_PKG)/fallback_web_bg.wasm ($$(stat -c %s $(WEB_PKG)/fallback_web_bg.wasm) bytes)"

wasm: tools ## Build only the filter (.wasm) and the benchmark's minimal filter
	$(CARGO) build -p fallback-filter -p bench-passthrough-filter --target $(WASM_TARGET) --release

fmt-check:
	$(CARGO) fmt --all --check

lint: tools fmt-check ## rustfmt check and clippy (native and wasm32), warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p fallback-core -p fallback-filter --target $(WASM_TARGET) -- -D warnings
	$(CARGO) clippy -p fallback-web --target $(WEB_TARGET) -- -D warnings

unit: ## Unit tests of core, filter and companion (native)
	$(CARGO) test -p fallback-core -p fallback-companion -p fallback-filter -p fallback-web

e2e: build ## End-to-end tests with real SeaweedFS, the companion binary and a mock control plane
	$(CARGO) test -p wasm-tests -- --test-threads 2

faults: build ## The fault matrix alone (part of e2e): table in target/fault-matrix.md
	$(CARGO) test -p wasm-tests --test fault_matrix -- --nocapture
	@cat target/fault-matrix.md

test: lint unit wasm e2e ## Everything CI runs: lint, unit tests, wasm build, end-to-end tests

fuzz: ## The property tests of every parser of outside bytes, 20,000 cases each (make test runs 64)
	PROPTEST_CASES=$${PROPTEST_CASES:-20000} $(CARGO) test -p fallback-core -p fallback-companion --lib properties

bench: wasm ## Router compile time and match p50/p99 for 100/1,000/10,000 routes, and the .wasm size
	$(CARGO) bench -p fallback-core --bench router

footprint: ## One request natively under valgrind, the decision alone and the whole filter: instructions, code and data cache lines, host calls (exact, unlike times)
	bash scripts/footprint.sh

bench-proxy: wasm ## Envoy CPU per request: no wasm, a minimal filter, the filter with 10/1k/10k routes (BENCH_ARGS=--help)
	$(CARGO) run -q -p wasm-tests --bin bench-proxy -- $(BENCH_ARGS)

demo: build ## The story end to end on the embedded file:// storage, narrated
	@bash scripts/demo.sh

clean: ## Remove build output (keeps .tools/)
	$(CARGO) clean
