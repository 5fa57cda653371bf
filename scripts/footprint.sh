#!/usr/bin/env bash
# `make footprint`: what one request costs natively in instructions and in distinct cache lines
# of code and data, counted under valgrind (exact and repeatable, unlike times on a shared
# machine): the decision alone (route + plugins, core/examples/footprint.rs) and the whole
# filter with the proxy-wasm SDK, Envoy's side of the ABI played by the program and left out
# of the counts, with the request's host calls (filter/examples/footprint.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
  echo "footprint: installing valgrind (apt-get)"
  apt=(apt-get)
  [[ $(id -u) -eq 0 ]] || apt=(sudo apt-get)
  "${apt[@]}" install -y -q valgrind >/dev/null ||
    { "${apt[@]}" update -q >/dev/null && "${apt[@]}" install -y -q valgrind >/dev/null; }
fi

cargo build -q --release -p fallback-core --example footprint
cargo build -q --release -p fallback-filter --example footprint-filter
core=${CARGO_TARGET_DIR:-target}/release/examples/footprint
filter=${CARGO_TARGET_DIR:-target}/release/examples/footprint-filter
out=$(mktemp)
calls=$(mktemp)
trap 'rm -f "$out" "$calls"' EXIT

# Caches of 1 MiB, 16-way: no line one request touches is evicted by another, so every miss is
# a line touched for the first time since instrumentation started (empty caches).
count() {
  local name=$1
  shift
  valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes \
    --I1=1048576,16,64 --D1=1048576,16,64 --LL=4194304,16,64 \
    --callgrind-out-file="$out" "$@" >"$calls" 2>/dev/null
  # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
  read -r ir _ _ i1 d1r d1w _ < <(awk '/^totals:/ {$1=""; print; exit}' "$out")
  printf '%-13s %14s %12s %12s   %s\n' "$name" "$ir" "$i1" "$((d1r + d1w))" "$(cat "$calls")"
}

printf '%-13s %14s %12s %12s\n' "" instructions "code lines" "data lines"
for config in "F10 10 0" "F1k 1000 1" "F10k 10000 1"; do
  read -r name routes plugins <<<"$config"
  count "$name decision" "$core" "$routes" "$plugins"
  count "$name filter" "$filter" "$routes" "$plugins"
done
echo "one request natively, after a warm-up: instructions, and distinct 64-byte cache lines of"
echo "code and of data it touches (callgrind, simulated caches). decision: route + plugins"
echo "(core/examples/footprint.rs); filter: everything the proxy's calls into the module run for"
echo "the request, the SDK's dispatch included, the host's own work left out, with the heap"
echo "allocations and host calls it makes (filter/examples/footprint.rs)"
