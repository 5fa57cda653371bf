#!/usr/bin/env bash
# The export half of Fallback's story, narrated on the terminal (`make demo`).
#
# A mock control plane (CP) serves a Kong declarative config from a file; the companion polls it
# and exports every new valid document to the embedded file:// storage. Everything lives under
# .demo/ (git-ignored) and runs on free loopback ports; every process started here is stopped
# on exit, whatever the exit.
#
# Needs the binaries of `make build` (target/debug/mock-cp, target/debug/fallback-companion),
# curl and python3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
VERSION=3.4.1.0
STORE="$DEMO/storage/kong"
OBJECT="$STORE/$VERSION/config.json"
META="$OBJECT.meta.json"
CP_FILE="$DEMO/cp/config.json"
CP_LOG="$DEMO/mock-cp.log"
COMPANION_LOG="$DEMO/companion.log"

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

# ---------------------------------------------------------------------------------------------
# Processes: every one started is recorded here and stopped on exit.

PIDS=()
NAMES=()
MAIN_PID=$BASHPID
exec 3>&1 4>&2 # the terminal, for cleanup: a signal may arrive inside a redirection

cleanup() {
    local rc=$? i pid
    # A subshell ($(...)) can inherit these traps for an instant after it forks: only the main
    # shell cleans up.
    [[ $BASHPID == "$MAIN_PID" ]] || return 0
    exec 1>&3 2>&4
    trap - EXIT INT TERM
    set +e
    for i in "${!PIDS[@]}"; do
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
        for log in "$COMPANION_LOG" "$CP_LOG"; do
            if [[ -s $log ]]; then
                printf '\n--- last lines of %s ---\n' "${log#"$ROOT"/}" >&2
                plain "$log" | tail -n 15 >&2
            fi
        done
    fi
    if [[ ${#PIDS[@]} -gt 0 ]]; then
        printf '\n%sStopped every process the demo started. Logs: %s, %s; files: %s/%s\n' \
            "$D" "${COMPANION_LOG#"$ROOT"/}" "${CP_LOG#"$ROOT"/}" "${DEMO#"$ROOT"/}" "$N"
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

# start NAME LOG COMMAND...: runs COMMAND in the background, output to LOG.
start() {
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
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

meta_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$META" "$1"; }
stored_sha() { if [[ -f $META ]]; then meta_field sha256; fi; }
sha_differs_from() { local now; now=$(stored_sha) && [[ -n $now && $now != "$1" ]]; }
companion_alive() { kill -0 "$COMPANION_PID" 2>/dev/null; }

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

# ---------------------------------------------------------------------------------------------

for bin in mock-cp fallback-companion; do
    [[ -x $BIN/$bin ]] || { echo "missing $BIN/$bin: run 'make build' first" >&2; exit 1; }
done
for tool in curl python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "this demo needs $tool" >&2; exit 1; }
done

START_TIME=$SECONDS
rm -rf "$DEMO"
mkdir -p "$DEMO/cp" "$DEMO/storage"

printf '%sFallback demo: exporting a Kong config from a control plane to storage%s\n' "$B" "$N"
say "A control plane (CP) holds the gateway configuration. The companion polls it and keeps" \
    "the last good config in object storage, where data planes started during a CP outage" \
    "can find it. Storage here is the embedded file:// store: no cloud account needed." \
    "Everything happens under .demo/."

# ---------------------------------------------------------------------------------------------
header "1. Start a mock control plane"
say "mock-cp serves a file as a CP's config endpoint, with an ETag so pollers can ask" \
    "\"has it changed?\" (If-None-Match) and get a cheap 304 when it has not."
cp examples/config.json "$CP_FILE"
CP_PORT=$(free_port)
CP_URL="http://127.0.0.1:$CP_PORT/config"
start mock-cp "$CP_LOG" "$BIN/mock-cp" --file "$CP_FILE" --port "$CP_PORT"
wait_for 10 "mock-cp to listen on port $CP_PORT" grep -q "on http://127.0.0.1:$CP_PORT/config" "$CP_LOG"
say "" "mock-cp says:"
plain "$CP_LOG" | sed 's/^/      /'
say "" "What the CP answers (headers, then the start of the body):"
curl -si "$CP_URL" >"$DEMO/cp-response.txt"
shown curl -si "$CP_URL"
tr -d '\r' <"$DEMO/cp-response.txt" | head -n 14 | sed 's/^/      /'
say "      ..."
ETAG=$(tr -d '\r' <"$DEMO/cp-response.txt" | sed -n 's/^etag: //Ip')
say "" "Asked again with If-None-Match: $ETAG, the CP sends no body:"
show curl -s -o /dev/null -w '%{http_code}\n' -H "If-None-Match: $ETAG" "$CP_URL"

# ---------------------------------------------------------------------------------------------
header "2. Start the companion's export role"
say "It polls the CP every second, validates each new document, and writes it to" \
    "$VERSION/config.json in storage, with its sha256, revision, node id and export time." \
    "KONG_CLUSTER_FALLBACK_EXPORT_DELAY=3s: at most one export every 3 seconds."
say "" "KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on" \
    "KONG_CLUSTER_FALLBACK_CONFIG_STORAGE=file://\$PWD/.demo/storage/kong" \
    "FALLBACK_CONTROL_PLANE_URL=$CP_URL" \
    "FALLBACK_POLL_INTERVAL=1s KONG_CLUSTER_FALLBACK_EXPORT_DELAY=3s" \
    "FALLBACK_CONFIG_VERSION=$VERSION FALLBACK_NODE_ID=demo-exporter" \
    "target/debug/fallback-companion run      (log: .demo/companion.log)" \
    "" "The first valid document is exported at once."

start fallback-companion "$COMPANION_LOG" env \
    NO_COLOR=1 \
    KONG_CLUSTER_FALLBACK_CONFIG_EXPORT=on \
    KONG_CLUSTER_FALLBACK_CONFIG_STORAGE="file://$STORE" \
    FALLBACK_CONTROL_PLANE_URL="$CP_URL" \
    FALLBACK_POLL_INTERVAL=1s \
    KONG_CLUSTER_FALLBACK_EXPORT_DELAY=3s \
    FALLBACK_CONFIG_VERSION="$VERSION" \
    FALLBACK_NODE_ID=demo-exporter \
    "$BIN/fallback-companion" run
COMPANION_PID=${PIDS[-1]}
wait_for 20 "the first export ($OBJECT)" test -s "$META"
companion_alive || die "the companion exited"
ok "the first export is in storage"
say "" "What is in storage now:"
printf '%s    $ find .demo/storage -type f%s\n' "$D" "$N"
(cd "$ROOT" && find .demo/storage -type f -printf '%-55p %s bytes\n' | sort | sed 's/^/      /')
say "config.json is the document as canonical JSON (keys sorted, no whitespace), so equal" \
    "configs give equal bytes; its metadata sits beside it:"
show python3 -m json.tool "${META#"$ROOT"/}"
check_digest
REV1=$(meta_field revision)
SHA1=$(meta_field sha256)

# ---------------------------------------------------------------------------------------------
header "3. The CP changes the config"
say "Someone adds an 'orders' service with a route on the CP. The companion sees a new ETag" \
    "at its next poll; since it exported less than 3 s ago, the new document waits for its" \
    "slot (newest wins), then replaces the stored one."
python3 - "$CP_FILE" <<'EOF'
import json, os, sys
path = sys.argv[1]
doc = json.load(open(path))
doc["services"].append({
    "name": "orders",
    "url": "http://orders.internal:8080",
    "routes": [{"name": "orders-api", "paths": ["/orders"], "strip_path": True}],
})
with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=2)
os.replace(path + ".tmp", path)  # atomic: the CP never serves a half-written file
EOF
say "" "(python3 appended services[2] 'orders' with route 'orders-api' to .demo/cp/config.json)"
wait_for 15 "the stored sha256 to change" sha_differs_from "$SHA1"
REV2=$(meta_field revision)
SHA2=$(meta_field sha256)
say "" "before: revision $REV1  sha256 ${SHA1:0:16}…" \
    "after:  revision $REV2  sha256 ${SHA2:0:16}…"
((REV2 > REV1)) || die "the new revision $REV2 is not greater than $REV1"
ok "the newer document has the higher revision"
say "(a revision is the time, in Unix ms, at which the exporter received the document; a" \
    "lower revision never replaces a higher one, so a late or racing writer cannot go back)"
check_digest
say "" "Stored services now:"
python3 -c 'import json, sys; print(", ".join(s["name"] for s in json.load(open(sys.argv[1]))["services"]))' "$OBJECT" | sed 's/^/      /'
say "" "The pacing, from the companion's log (the change waited due_in_ms before its export):"
plain "$COMPANION_LOG" | grep -E 'queued for export|exported' | sed 's/^/      /'
python3 - "$COMPANION_LOG" <<'EOF'
import re, sys
from datetime import datetime
times = []
for line in open(sys.argv[1]):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if re.search(r"\bexported\b", line) and " INFO " in line:
        times.append(datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")))
if len(times) >= 2:
    gap = (times[1] - times[0]).total_seconds()
    print(f"    → the two exports are {gap:.1f} s apart: never closer than the 3 s export delay")
EOF

# ---------------------------------------------------------------------------------------------
header "4. A broken config on the CP is never exported"
say "Now the CP serves a route pointing at a service that does not exist. A data plane" \
    "could not use it, so the companion refuses it and storage keeps the last good config."
python3 - "$CP_FILE" <<'EOF'
import json, os, sys
path = sys.argv[1]
doc = json.load(open(path))
doc["routes"].append({"name": "payments-api", "service": "payments", "paths": ["/pay"]})
with open(path + ".tmp", "w") as f:
    json.dump(doc, f, indent=2)
os.replace(path + ".tmp", path)  # atomic: the CP never serves a half-written file
EOF
say "" "(python3 appended routes[1] 'payments-api' → service 'payments', which is not defined)"
wait_for 10 "the companion to report the invalid document" grep -q 'unknown service' "$COMPANION_LOG"
sleep 3 # more than the export delay: had it been accepted, it would be exported by now
SHA3=$(meta_field sha256)
say "" "stored sha256 before: ${SHA2:0:16}…" "stored sha256 now:    ${SHA3:0:16}…"
[[ $SHA3 == "$SHA2" ]] || die "storage changed: the invalid document was exported"
ok "unchanged: the invalid document was not exported"
say "" "The companion's log names each problem with its path in the document:"
printf '%s    $ grep -B1 "unknown service" .demo/companion.log%s\n' "$D" "$N"
plain "$COMPANION_LOG" | grep -B1 'unknown service' | fold -s -w 110 | sed 's/^/      /'

# ---------------------------------------------------------------------------------------------
header "5. One-shot export, for CI pipelines"
say "'fallback-companion export' validates a file and stores it once: exit 0 when stored," \
    "2 when the file is invalid (so a pipeline stops before a bad config reaches storage)."
run_export() {
    local file=$1 rc=0
    shown target/debug/fallback-companion export --storage "file://$DEMO/storage/ci" \
        --config-file "$file" --config-version "$VERSION"
    "$BIN/fallback-companion" export --storage "file://$DEMO/storage/ci" --config-file "$file" \
        --config-version "$VERSION" >"$DEMO/export.out" 2>&1 || rc=$?
    plain "$DEMO/export.out" | fold -s -w 110 | sed 's/^/      /'
    say "exit code: $rc"
    EXPORT_RC=$rc
}
run_export examples/config.json
[[ $EXPORT_RC -eq 0 ]] || die "expected exit code 0"
ok "stored: .demo/storage/ci/$VERSION/config.json"
say ""
cp "$CP_FILE" "$DEMO/broken.json" # the document of step 4
run_export .demo/broken.json
[[ $EXPORT_RC -eq 2 ]] || die "expected exit code 2 for an invalid file"
ok "refused with exit code 2; nothing written"

# ---------------------------------------------------------------------------------------------
header "6. The control plane goes down"
say "We stop mock-cp. The companion keeps running and keeps polling; storage keeps the last" \
    "good config."
kill -TERM "${PIDS[0]}"
wait "${PIDS[0]}" 2>/dev/null || true
shown curl -s "$CP_URL"
CURL_RC=0
curl -s -o /dev/null "$CP_URL" || CURL_RC=$?
say "  curl: exit code $CURL_RC$( ((CURL_RC == 7)) && echo ', connection refused'): the CP is gone"
wait_for 10 "the companion to notice the CP is down" grep -q 'last exported config stays in storage' "$COMPANION_LOG"
sleep 2
companion_alive || die "the companion exited when the CP went down"
ok "the companion is still running (pid $COMPANION_PID) and says:"
plain "$COMPANION_LOG" | grep 'last exported config stays in storage' | head -n 1 | fold -s -w 110 | sed 's/^/      /'
say "" "Storage still holds revision $(meta_field revision), exported by $(meta_field node-id) at $(meta_field exported-at):"
check_digest
say "This is what a data plane started now would import: the filter's import path (a signed" \
    "URL from the companion's signer role) is the next milestone."

# ---------------------------------------------------------------------------------------------
header "Summary"
say "1. mock-cp served the config with an ETag; unchanged polls cost a 304." \
    "2. The companion exported it to $VERSION/config.json with sha256, revision, node id, time." \
    "3. A change on the CP was exported after the export delay, with a higher revision." \
    "4. An invalid config was refused and logged with its path; storage kept the good one." \
    "5. 'fallback-companion export' does the same once for CI: exit 0 stored, 2 invalid." \
    "6. With the CP down, the companion keeps running and storage keeps the last good config."
ok "demo finished in $((SECONDS - START_TIME))s"
