#!/usr/bin/env bash
# `make footprint`: what one request's decision (route + plugins, natively) costs in
# instructions and in distinct cache lines and pages of code and data, counted under valgrind
# (exact and repeatable, unlike times on a shared machine). See core/examples/footprint.rs.
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
bin=${CARGO_TARGET_DIR:-target}/release/examples/footprint
out=$(mktemp)
trap 'rm -f "$out"' EXIT

printf '%-6s %14s %12s %12s\n' config instructions "code lines" "data lines"
for config in "F10 10 0" "F1k 1000 1" "F10k 10000 1"; do
  read -r name routes plugins <<<"$config"
  # Caches of 1 MiB, 16-way: no line one request touches is evicted by another, so every
  # miss is a line touched for the first time since instrumentation started (empty caches).
  valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes \
    --I1=1048576,16,64 --D1=1048576,16,64 --LL=4194304,16,64 \
    --callgrind-out-file="$out" "$bin" "$routes" "$plugins" >/dev/null 2>&1
  # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw
  read -r ir _ _ i1 d1r d1w _ < <(awk '/^totals:/ {$1=""; print; exit}' "$out")
  printf '%-6s %14s %12s %12s\n' "$name" "$ir" "$i1" "$((d1r + d1w))"
done
echo "one request's decision (route + plugins), natively, after a warm-up: instructions, and"
echo "distinct 64-byte cache lines of code and of data it touches (callgrind, simulated caches)"
