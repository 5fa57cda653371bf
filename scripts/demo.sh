#!/usr/bin/env bash
# Fallback's whole story, narrated on the terminal (`make demo`).
#
# Two echo upstreams stand in for real services; a mock control plane (CP) serves a Kong
# declarative config routing to them; ONE companion process exports that config to the embedded
# file:// storage and signs URLs of it. Envoy A runs the filter and serves the CP's config. Then
# the CP is stopped: A keeps serving, and a brand-new Envoy B, which never saw the CP, learns the
# routes from storage through a signed URL and serves them.
#
# Everything lives under .demo/ (git-ignored) and runs on free loopback ports; every process
# started here is stopped on exit, whatever the exit.
#
# Needs the binaries of `make build` (target/debug/{mock-cp,fallback-companion,echo-upstream},
# the filter's .wasm), .tools/bin/envoy (`make tools`), curl and python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
ENVOY="$ROOT/.tools/bin/envoy"
WASM="$ROOT/target/wasm32-wasip1/release/fallback_filter.wasm"
TEMPLATE="$ROOT/examples/envoy/bootstrap.yaml"
VERSION=3.4.1.0
STORE="$DEMO/storage/kong"
OBJECT="$STORE/$VERSION/config.json"
CP_FILE="$DEMO/cp/config.json"
CP_LOG="$DEMO/mock-cp.log"
COMPANION_LOG="$DEMO/companion.log"
TOKEN_FILE="$DEMO/signer-token"

# ---------------------------------------------------------------------------------------------
# Output helpers

if [[ -t 1 ]]; then
    B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'
else
    B='' G='' R='' D='' N=''
fi

STEP=""
header() { STEP="$1"; printf '\n%s==> %s%s\n' "$B" "$1" "$N"; }
say() { printf '    %s\n' "$@"; }
# Prints a command as one would type it (paths relative to the repository).
shown() {
    local arg out=''
    for arg in "$@"; do
        if [[ $arg == "file://$ROOT/"* ]]; then
            out+=" file://\$PWD/${arg#"file://$ROOT/"}"
            continue
        fi
        arg=${arg//"$ROOT"\//}
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=" $arg"; else out+=" ${arg@Q}"; fi
    done
    printf '%s    $%s%s\n' "$D" "$out" "$N"
}
# Shows a command, then runs it with its output indented.
show() {
    shown "$@"
    "$@" 2>&1 | sed 's/^/      /'
}
ok() { printf '    %s✔ %s%s\n' "$G" "$*" "$N"; }
die() {
    printf '    %s✘ %s%s\n' "$R" "$*" "$N" >&2
    exit 1
}
# Log lines without colour codes, with file paths relative to the repository (URLs kept whole).
plain() { sed -e 's/\x1b\[[0-9;]*m//g' -e "s#file://$ROOT/#file://\x01/#g" -e "s#$ROOT/##g" -e "s#\x01#$ROOT#g" "$@"; }
# Envoy log lines of the filter, shortened to "[time] message".
filter_lines() { plain "$@" | sed -E 's/^\[([0-9-]+ )?([0-9:.]+)\].*wasm log [^:]*: (fallback: )?/[\2] /'; }
indent() { fold -s -w 106 | sed 's/^/      /'; }

# ---------------------------------------------------------------------------------------------
# Processes: every one started is recorded here and stopped on exit (the last started first).

PIDS=()
NAMES=()
LOGS=()
MAIN_PID=$BASHPID
exec 3>&1 4>&2 # the terminal, for cleanup: a signal may arrive inside a redirection

cleanup() {
    local rc=$? i pid log
    # A subshell ($(...)) can inherit these traps for an instant after it forks: only the main
    # shell cleans up.
    [[ $BASHPID == "$MAIN_PID" ]] || return 0
    exec 1>&3 2>&4
    trap - EXIT INT TERM
    set +e
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then
                printf '    %s did not stop on SIGTERM; killing it\n' "${NAMES[$i]}" >&2
                kill -KILL "$pid" 2>/dev/null
            fi
        fi
        wait "$pid" 2>/dev/null
    done
    if [[ $rc -eq 130 || $rc -eq 143 ]]; then
        printf '\n%sDemo interrupted%s during: %s\n' "$R" "$N" "${STEP:-start-up}" >&2
    elif [[ $rc -ne 0 ]]; then
        printf '\n%sDemo FAILED%s (exit %s) during: %s\n' "$R" "$N" "$rc" "${STEP:-start-up}" >&2
        for log in "${LOGS[@]}"; do
            if [[ -s $log ]]; then
                printf '\n--- last lines of %s ---\n' "${log#"$ROOT"/}" >&2
                plain "$log" | tail -n 12 >&2
            fi
        done
    fi
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        printf '\n%sStopped every process the demo started. Logs: %s/*.log; files: %s/%s\n' \
            "$D" "${DEMO#"$ROOT"/}" "${DEMO#"$ROOT"/}" "$N"
    fi
    exit "$rc"
}
# On Ctrl-C or SIGTERM: the main shell exits (and cleans up); a subshell caught in the signal
# dies of it, so that the main shell sees the signal and does not carry on.
on_signal() {
    if [[ $BASHPID != "$MAIN_PID" ]]; then
        trap - "$1" EXIT
        kill -s "$1" "$BASHPID"
    fi
    exit "$2"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

# start NAME LOG COMMAND...: runs COMMAND in the background, output to LOG; its pid is LAST_PID.
start() {
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    NAMES+=("$name")
    LOGS+=("$log")
}

# stop PID: SIGTERM, then SIGKILL after 5 s; reaps it.
stop() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            die "gave up after ${seconds}s waiting for: $what"
        fi
        sleep 0.2
    done
}

alive() { kill -0 "$1" 2>/dev/null; }
# The metadata of the current generation: config.json is a symlink into the generation that
# holds the body and its metadata together (docs/storage.md).
meta_path() {
    local target
    target=$(readlink "$OBJECT") || return 1
    printf '%s\n' "$(dirname "$OBJECT")/$(dirname "$target")/config.json.meta.json"
}
meta_exists() { test -s "$(meta_path)"; }
meta_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$(meta_path)" "$1"; }
millis() { date +%s%3N; }

# Prints the digest of the body and the one in the metadata, and fails unless they match.
check_digest() {
    local body meta
    body=$(sha256sum "$OBJECT" | cut -d' ' -f1)
    meta=$(meta_field sha256)
    say "sha256sum config.json:               $body" \
        "\"sha256\" in config.json.meta.json:  $meta"
    [[ $body == "$meta" ]] || die "the stored body does not match its metadata"
    ok "match: the body is exactly the document the metadata describes"
}

# ---- Envoy ----

# The filter's configuration (docs/filter.md): the three parties it talks to, through the
# bootstrap's clusters, with demo-friendly intervals.
filter_config() {
    python3 - "$VERSION" "$CP_PORT" "$COMPANION_PORT" "$TOKEN_FILE" <<'EOF'
import json, sys
version, cp_port, companion_port, token_file = sys.argv[1:]
print(json.dumps({
    "version": version,
    "control_plane": {"upstream": "fallback_cp", "authority": f"127.0.0.1:{cp_port}",
                      "path": "/config", "timeout_ms": 1000},
    "companion": {"upstream": "fallback_companion", "authority": f"127.0.0.1:{companion_port}",
                  "token": open(token_file).read().strip(), "timeout_ms": 1000},
    "storage": {"upstream": "fallback_storage", "timeout_ms": 2000},
    "poll_interval_ms": 1000,
    "cp_failure_threshold": 2,
    "fallback_refresh_interval_ms": 5000,
    "retry_initial_ms": 200,
    "retry_max_ms": 1000,
    "tick_ms": 200,
    "leader_lease_ms": 1000,
    "allow_debug_header": True,
}, indent=2))
EOF
}

# render_bootstrap OUT ADMIN_PORT LISTENER_PORT: examples/envoy/bootstrap.yaml with every
# placeholder replaced; refuses to leave one behind. For file:// storage the storage endpoint
# is the companion itself (it serves the object behind signed URLs).
render_bootstrap() {
    python3 - "$TEMPLATE" "$1" "$DEMO/filter-config.json" \
        ADMIN_PORT="$2" LISTENER_PORT="$3" WASM_PATH="$WASM" \
        CP_HOST=127.0.0.1 CP_PORT="$CP_PORT" \
        COMPANION_HOST=127.0.0.1 COMPANION_PORT="$COMPANION_PORT" \
        STORAGE_HOST=127.0.0.1 STORAGE_PORT="$COMPANION_PORT" <<'EOF'
import json, re, sys
template, out, config = sys.argv[1:4]
values = dict(arg.split("=", 1) for arg in sys.argv[4:])
# The filter's JSON as ONE JSON string literal, which is also a YAML double-quoted scalar.
values["FILTER_CONFIG"] = json.dumps(json.dumps(json.load(open(config)), separators=(",", ":")))
text = open(template).read()
for name, value in values.items():
    text = text.replace("${" + name + "}", value)
left = re.search(r"\$\{[A-Za-z_]+\}", text)
if left:
    sys.exit(f"unknown placeholder {left.group(0)} in {template}")
open(out, "w").write(text)
EOF
}

BASE_ID=$(($$ % 100000 * 10))
# start_envoy NAME ADMIN_PORT LISTENER_PORT: renders its bootstrap and starts it; pid: LAST_PID.
start_envoy() {
    local name=$1
    render_bootstrap "$DEMO/envoy-$name.yaml" "$2" "$3"
    BASE_ID=$((BASE_ID + 1))
    start "envoy-$name" "$DEMO/envoy-$name.stderr" "$ENVOY" -c "$DEMO/envoy-$name.yaml" \
        --concurrency 2 --base-id "$BASE_ID" --disable-hot-restart --log-level info \
        --file-flush-interval-msec 100 --log-path "$DEMO/envoy-$name.log"
    LOGS+=("$DEMO/envoy-$name.log")
}
envoy_ready() { [[ $(curl -s "http://127.0.0.1:$1/ready") == LIVE ]]; }
# envoy_stat ADMIN_PORT NAME: a value from admin /stats ("" when absent).
envoy_stat() {
    curl -s "http://127.0.0.1:$1/stats?filter=^$2\$" | sed -n "s/^$2: //p"
}
source_is() { [[ $(envoy_stat "$1" wasmcustom.fallback_source) == "$2" ]]; }

# fetch PORT PATH: one request through an Envoy listener with the debug header; sets STATUS,
# HDRS (file) and BODY_FILE.
fetch() {
    HDRS="$DEMO/last-headers.txt" BODY_FILE="$DEMO/last-body.txt"
    STATUS=$(curl -s -o "$BODY_FILE" -D "$HDRS" -w '%{http_code}' -H 'Kong-Debug: 1' \
        "http://127.0.0.1:$1$2" || true)
}
header_of() { tr -d '\r' <"$HDRS" | sed -n "s/^$1: //Ip" | head -n 1; }
served_by() { fetch "$1" "$2" && [[ $STATUS == 200 ]] && [[ $(upstream_name) == "$3" ]]; }
# consistently PORT SOURCE: 6 requests in a row (new connections, so both workers answer) are
# 200s from the config of SOURCE. Each worker applies a newly published config on its next tick.
consistently() {
    local _
    for _ in 1 2 3 4 5 6; do
        fetch "$1" /orders/42
        [[ $STATUS == 200 && $(header_of x-fallback-source) == "$2" ]] || return 1
    done
}
upstream_name() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["upstream"])' "$BODY_FILE" 2>/dev/null; }

# through NAME PORT PATH: shows a request through an Envoy and what came back.
through() {
    local name=$1 port=$2 path=$3
    printf "%s    \$ curl -H 'Kong-Debug: 1' http://127.0.0.1:%s%s%s   %s# Envoy %s%s\n" \
        "$D" "$port" "$path" "$N" "$D" "$name" "$N"
    fetch "$port" "$path"
    local line="HTTP $STATUS" h v
    for h in x-fallback-source x-fallback-revision kong-route-name; do
        v=$(header_of "$h")
        # The revision of a config straight from the CP is 0: it was never exported.
        [[ -n $v && ! ($h == x-fallback-revision && $v == 0) ]] && line+="   $h: $v"
    done
    say "  $line"
    python3 - "$BODY_FILE" <<'EOF' | sed 's/^/      /'
import json, sys
text = open(sys.argv[1]).read()
try:
    body = json.loads(text)
except ValueError:
    print(text.strip()[:200])
    sys.exit()
if "upstream" in body:
    print(f'upstream "{body["upstream"]}" received: {body["method"]} {body["path"]}'
          f'   (Host: {body["headers"].get("host", "?")})')
else:
    print(json.dumps(body))
EOF
}

# ---------------------------------------------------------------------------------------------

for bin in mock-cp fallback-companion echo-upstream; do
    [[ -x $BIN/$bin ]] || { echo "missing $BIN/$bin: run 'make build' first" >&2; exit 1; }
done
[[ -x $ENVOY ]] || { echo "missing $ENVOY: run 'make tools' first" >&2; exit 1; }
[[ -f $WASM ]] || { echo "missing $WASM: run 'make build' first" >&2; exit 1; }
for tool in curl python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "this demo needs $tool" >&2; exit 1; }
done

START_TIME=$SECONDS
rm -rf "$DEMO"
mkdir -p "$DEMO/cp" "$DEMO/storage"
# The bearer token Envoys present to the companion: random per run, kept in a file, never shown.
(umask 077 && python3 -c 'import secrets; print("demo-" + secrets.token_hex(16))' >"$TOKEN_FILE")

printf '%sFallback demo: Envoys keep serving when the control plane is gone%s\n' "$B" "$N"
say "A control plane (CP) holds the gateway configuration. The companion exports it to object" \
    "storage; Envoys running the Fallback filter follow the CP, and when it is down they load" \
    "the last good config from storage through short-lived signed URLs. Storage here is the" \
    "embedded file:// store: no cloud account needed. Everything happens under .demo/."

# ---------------------------------------------------------------------------------------------
header "1. Two upstream services and a control plane"
say "Two echo upstreams stand in for real services: each answers with its own name and the" \
    "request it received, so we can see where a proxy sent us."
ORDERS_PORT=$(free_port)
BILLING_PORT=$(free_port)
start echo-orders "$DEMO/echo-orders.log" "$BIN/echo-upstream" --name orders --port "$ORDERS_PORT"
start echo-billing "$DEMO/echo-billing.log" "$BIN/echo-upstream" --name billing --port "$BILLING_PORT"
wait_for 10 "echo upstream orders" grep -q 'answering' "$DEMO/echo-orders.log"
wait_for 10 "echo upstream billing" grep -q 'answering' "$DEMO/echo-billing.log"
cat "$DEMO/echo-orders.log" "$DEMO/echo-billing.log" | sed 's/^/      /'

say "" "The CP's config (a Kong declarative document, as in examples/config.json but pointing" \
    "at these two upstreams): /orders → orders, /billing → billing."
python3 - "$CP_FILE" "$ORDERS_PORT" "$BILLING_PORT" <<'EOF'
import json, sys
path, orders, billing = sys.argv[1:]
doc = {
    "_format_version": "3.0",
    "services": [
        {"name": "orders", "url": f"http://127.0.0.1:{orders}",
         "routes": [{"name": "orders-api", "paths": ["/orders"]}]},
        {"name": "billing", "url": f"http://127.0.0.1:{billing}",
         "routes": [{"name": "billing-api", "paths": ["/billing"]}]},
    ],
}
# One line per service, so that the whole document fits on the screen.
services = ",\n".join("    " + json.dumps(service) for service in doc["services"])
with open(path, "w") as f:
    f.write(f'{{\n  "_format_version": "3.0",\n  "services": [\n{services}\n  ]\n}}\n')
json.load(open(path))  # still valid JSON
EOF
shown cat .demo/cp/config.json
sed 's/^/      /' "$CP_FILE"

CP_PORT=$(free_port)
CP_URL="http://127.0.0.1:$CP_PORT/config"
start mock-cp "$CP_LOG" "$BIN/mock-cp" --file "$CP_FILE" --port "$CP_PORT"
CP_PID=$LAST_PID
wait_for 10 "mock-cp to listen on port $CP_PORT" grep -q "on http://127.0.0.1:$CP_PORT/config" "$CP_LOG"
say "" "mock-cp serves it as a CP's config endpoint (with an ETag, so pollers get a cheap 304):"
shown target/debug/mock-cp --file .demo/cp/config.json --port "$CP_PORT"
plain "$CP_LOG" | sed 's/^/      /'

# ---------------------------------------------------------------------------------------------
header "2. The companion exports the config to storage and signs URLs of it"
say "One companion process runs both roles: export (poll the CP, validate, write to storage)" \
    "and signer (hand Envoys short-lived signed URLs of the stored object, behind a token)."
COMPANION_PORT=$(free_port)
say "" "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on" \
    "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE=file://\$PWD/.demo/storage/kong" \
    "FALLBACK_CONTROL_PLANE_URL=$CP_URL" \
    "FALLBACK_POLL_INTERVAL=1s KONG_CLUSTER_FALLBACK_EXPORT_DELAY=1s" \
    "FALLBACK_CONFIG_VERSION=$VERSION FALLBACK_NODE_ID=demo-companion" \
    "FALLBACK_LISTEN=127.0.0.1:$COMPANION_PORT FALLBACK_SIGNER_TOKENS=\"\$(cat .demo/signer-token)\"" \
    "target/debug/fallback-companion run      (log: .demo/companion.log)"
start fallback-companion "$COMPANION_LOG" env \
    NO_COLOR=1 \
    KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on \
    KONG_CLUSTER_FALLBACK_CONFIG_IMPORT=on \
    KONG_CLUSTER_FALLBACK_CONFIG_STORAGE="file://$STORE" \
    FALLBACK_CONTROL_PLANE_URL="$CP_URL" \
    FALLBACK_POLL_INTERVAL=1s \
    KONG_CLUSTER_FALLBACK_EXPORT_DELAY=1s \
    FALLBACK_CONFIG_VERSION="$VERSION" \
    FALLBACK_NODE_ID=demo-companion \
    FALLBACK_LISTEN="127.0.0.1:$COMPANION_PORT" \
    FALLBACK_SIGNER_TOKENS="$(cat "$TOKEN_FILE")" \
    "$BIN/fallback-companion" run
COMPANION_PID=$LAST_PID
wait_for 20 "the first export ($OBJECT)" meta_exists
alive "$COMPANION_PID" || die "the companion exited"
ok "exported at once (the first valid document does not wait):"
plain "$COMPANION_LOG" | grep -E 'role started|exported' | indent
say "" "What is in storage now:"
printf '%s    $ find .demo/storage -name "config.json*"%s\n' "$D" "$N"
find .demo/storage -name 'config.json*' \( -type l -printf '%p -> %l\n' -o -type f -printf '%p  %s bytes\n' \) |
    sort | sed 's/^/      /'
say "config.json is the document as canonical JSON. It is a symlink to the current generation," \
    "which holds the body and its metadata together, so that one rename replaces both:"
META=$(meta_path)
show python3 -m json.tool "${META#"$ROOT"/}"
check_digest
REVISION=$(meta_field revision)

say "" "What an Envoy will ask the signer when the CP is down (done by hand here; the URL's" \
    "signature is masked on screen):"
printf '%s    $ curl -H "Authorization: Bearer $(cat .demo/signer-token)" \\\n        %s%s\n' \
    "$D" "'http://127.0.0.1:$COMPANION_PORT/v1/fallback-config?version=$VERSION'" "$N"
SIGNED=$(curl -s -H "Authorization: Bearer $(cat "$TOKEN_FILE")" \
    "http://127.0.0.1:$COMPANION_PORT/v1/fallback-config?version=$VERSION")
python3 - "$SIGNED" <<'EOF' | sed 's/^/      /' || die "the signer did not answer with a signed URL"
import json, re, sys
body = json.loads(sys.argv[1])
assert body["url"], body
body["url"] = re.sub(r"signature=[^&]*", "signature=<masked>", body["url"])
print(json.dumps(body, indent=2))
EOF
say "For file:// storage the companion serves the object itself: the URL is valid for 5 minutes" \
    "for exactly that object, with no token: the HMAC signature is the credential."

# ---------------------------------------------------------------------------------------------
header "3. Envoy A serves the CP's config"
say "Envoy A runs examples/envoy/bootstrap.yaml (placeholders filled in by python3) with the" \
    "Fallback filter. Its clusters point at the CP, the companion, and storage, which for" \
    "file:// is the companion again. The filter configuration (token elided):"
filter_config >"$DEMO/filter-config.json"
chmod 600 "$DEMO/filter-config.json"
python3 -c 'import json, sys; c = json.load(open(sys.argv[1])); c["companion"]["token"] = "<.demo/signer-token>"; print(json.dumps(c, indent=2))' \
    "$DEMO/filter-config.json" | sed 's/^/      /'
A_ADMIN=$(free_port)
A_PORT=$(free_port)
start_envoy a "$A_ADMIN" "$A_PORT"
A_PID=$LAST_PID
shown .tools/bin/envoy -c .demo/envoy-a.yaml --concurrency 2 --base-id "$BASE_ID" \
    --disable-hot-restart --file-flush-interval-msec 100 --log-path .demo/envoy-a.log
wait_for 20 "Envoy A's admin /ready" envoy_ready "$A_ADMIN"
alive "$A_PID" || die "Envoy A exited"
say "  listener http://127.0.0.1:$A_PORT, admin http://127.0.0.1:$A_ADMIN"
wait_for 20 "Envoy A to route /orders from the CP's config" served_by "$A_PORT" /orders/42 orders
wait_for 5 "Envoy A's log" grep -q 'serving the config from control plane' "$DEMO/envoy-a.log"
ok "Envoy A is up and has the CP's config:"
filter_lines "$DEMO/envoy-a.log" | grep -m1 'serving the config from control plane' | indent
say ""
through A "$A_PORT" /orders/42
through A "$A_PORT" '/billing/invoices?year=2026'
through A "$A_PORT" /inventory
[[ $STATUS == 404 ]] || die "expected 404 for a path no route matches"
say "(each route strips its prefix: the upstream sees /42 and /invoices?year=2026)"
say "" "Where A's config comes from, in its admin /stats (1 = control plane, 2 = fallback):"
printf '%s    $ curl -s http://127.0.0.1:%s/stats | grep wasmcustom.fallback_source%s\n' "$D" "$A_ADMIN" "$N"
say "  wasmcustom.fallback_source: $(envoy_stat "$A_ADMIN" wasmcustom.fallback_source)"
source_is "$A_ADMIN" 1 || die "Envoy A does not report the control plane as its source"

# ---------------------------------------------------------------------------------------------
header "4. The control plane goes down"
stop "$CP_PID"
shown curl -s "$CP_URL"
CURL_RC=0
curl -s -o /dev/null "$CP_URL" || CURL_RC=$?
say "  curl: exit code $CURL_RC$( ((CURL_RC == 7)) && echo ', connection refused'): the CP is gone"
say "" "Envoy A keeps serving the config it has. After 2 failed polls (1 s apart) it switches to" \
    "the fallback config from storage, fetched through a signed URL:"
CP_DOWN_AT=$(millis)
SENT=0 FAILED=0
# Traffic through A all along, until it reports the fallback source (at most 20 s).
until source_is "$A_ADMIN" 2; do
    (($(millis) - CP_DOWN_AT < 20000)) || die "gave up after 20s waiting for Envoy A to switch"
    fetch "$A_PORT" /orders/42
    SENT=$((SENT + 1))
    [[ $STATUS == 200 ]] || FAILED=$((FAILED + 1))
    sleep 0.1
done
say "  wasmcustom.fallback_source: 2   ($(( $(millis) - CP_DOWN_AT )) ms after the CP stopped)" \
    "  meanwhile: $SENT requests to /orders/42 through A, $FAILED not 200"
((FAILED == 0)) || die "Envoy A failed requests while the CP was going down"
wait_for 5 "every worker of Envoy A to serve the fallback config" consistently "$A_PORT" fallback
# A asks the signer again every 5 s; waiting for its import here lets B's request stand alone.
wait_for 10 "Envoy A's import in its log" grep -q 'imported revision' "$DEMO/envoy-a.log"
say "" "A's log (a dead CP cluster answers the filter's call with Envoy's own 503):"
filter_lines "$DEMO/envoy-a.log" | grep -E 'failure [0-9]+ of|switching to the fallback|imported revision' | indent
say ""
through A "$A_PORT" /orders/42
[[ $STATUS == 200 ]] || die "Envoy A stopped serving /orders"
ok "Envoy A never stopped serving"

# ---------------------------------------------------------------------------------------------
header "5. A brand-new Envoy B starts during the outage"
say "Envoy B has never seen the CP, which is down: the only place it can learn /orders and" \
    "/billing from is storage, through the companion's signed URL."
B_ADMIN=$(free_port)
B_PORT=$(free_port)
COMPANION_LINES=$(wc -l <"$COMPANION_LOG")
B_START=$(millis)
start_envoy b "$B_ADMIN" "$B_PORT"
B_PID=$LAST_PID
shown .tools/bin/envoy -c .demo/envoy-b.yaml --concurrency 2 --base-id "$BASE_ID" \
    --disable-hot-restart --file-flush-interval-msec 100 --log-path .demo/envoy-b.log
B_READY="" B_FIRST=""
for _ in $(seq 600); do
    if [[ -z $B_READY ]] && envoy_ready "$B_ADMIN"; then B_READY=$(millis); fi
    if [[ -n $B_READY ]] && served_by "$B_PORT" /orders/42 orders; then B_FIRST=$(millis); break; fi
    alive "$B_PID" || die "Envoy B exited"
    sleep 0.05
done
[[ -n $B_FIRST ]] || die "Envoy B did not serve /orders/42 within 30 s"
ok "Envoy B proxied its first 200 $((B_FIRST - B_START)) ms after it was started"
wait_for 5 "every worker of Envoy B to serve the fallback config" consistently "$B_PORT" fallback
say "  (Envoy itself was ready after $((B_READY - B_START)) ms; the filter's first CP poll failed" \
    "   and, having no config yet, it imported from storage at once; every worker served it" \
    "   $(($(millis) - B_START)) ms after start)"
say ""
through B "$B_PORT" /orders/42
[[ $(header_of x-fallback-source) == fallback ]] || die "B's answer is not from the fallback config"
[[ $(header_of x-fallback-revision) == "$REVISION" ]] || die "B serves another revision than the stored $REVISION"
through B "$B_PORT" '/billing/invoices?year=2026'
[[ $STATUS == 200 && $(upstream_name) == billing ]] || die "Envoy B did not route /billing to billing"
through B "$B_PORT" /inventory
[[ $STATUS == 404 ]] || die "expected 404 for a path no route matches"
say "" "wasmcustom.fallback_source on B: $(envoy_stat "$B_ADMIN" wasmcustom.fallback_source)" \
    "x-fallback-revision $REVISION is the revision in storage's metadata (step 2)."
say "" "The companion signed B's request (lines since B started; tokens and URL signatures are" \
    "never logged):"
tail -n "+$((COMPANION_LINES + 1))" "$COMPANION_LOG" | plain | grep -E 'signer request|object request' |
    head -n 2 | indent
wait_for 5 "Envoy B's import in its log" grep -q 'imported revision' "$DEMO/envoy-b.log"
say "" "B's log:"
filter_lines "$DEMO/envoy-b.log" | grep -E 'no config yet|imported revision' | head -n 2 | indent

# ---------------------------------------------------------------------------------------------
header "Summary"
SECRET_LEAKS=$(grep -lE "$(cat "$TOKEN_FILE")|signature=[0-9a-f]{16}" "$DEMO"/*.log "$DEMO"/*.stderr 2>/dev/null || true)
[[ -z $SECRET_LEAKS ]] || die "a token or URL signature is in: $SECRET_LEAKS"
say "1. Two upstreams; mock-cp served a config routing /orders and /billing to them." \
    "2. The companion exported it to file:// storage ($VERSION/config.json + metadata) and" \
    "   signed URLs of it for bearers of the token." \
    "3. Envoy A served the CP's config: 200s from the right upstreams, 404 elsewhere." \
    "4. The CP stopped; A kept serving and switched to the stored config." \
    "5. Envoy B, started during the outage, imported revision $REVISION through a signed URL" \
    "   and served the same routes $((B_FIRST - B_START)) ms after start." \
    "No token or URL signature appears in any log under .demo/."
ok "demo finished in $((SECONDS - START_TIME))s"
