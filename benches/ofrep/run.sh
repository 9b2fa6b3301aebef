#!/usr/bin/env bash
# OFREP load test: starts the release server on a scratch data dir, loads the benchmark flags
# (cases A, B, C of benches/src/lib.rs plus 47 more), and drives it with wrk on loopback; then
# does the same, in the same run and with the same wrk settings, to Unleash Edge in offline mode
# with the equivalent features (its frontend API: one feature, and all of them), and prints both
# side by side.
# Usage: benches/ofrep/run.sh [seconds] [connections] [server worker threads]
# (needs `wrk`: apt-get install wrk; with `oha` (cargo install oha) it also measures latency at a
# fixed 40k req/s). Unleash Edge: $EDGE_BIN, default /var/tmp/peers/unleash-edge/bin/unleash-edge,
# built with `cargo install unleash-edge --locked --no-default-features` there when absent (about
# 15 minutes on 2 cores, once); SKIP_EDGE=1 measures only ours.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_TO_RUN="${1:-10}"
CONNECTIONS="${2:-32}"
WORKERS="${3:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/flagd-rs-target}"
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p flagd-server
DATA=$(mktemp -d)
ADMIN="ofrep-bench-admin-token-0123456789"
env FLAGD_ADMIN_TOKEN="$ADMIN" FLAGD_LOG=warn ${WORKERS:+FLAGD_WORKER_THREADS=$WORKERS} \
  "$CARGO_TARGET_DIR/release/flagd-server" --listen 127.0.0.1:0 --data-dir "$DATA" > "$DATA/out" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do grep -q listening "$DATA/out" 2>/dev/null && break; sleep 0.1; done
BASE=$(sed -n 's/^listening on //p' "$DATA/out")
python3 - "$BASE" "$ADMIN" > "$DATA/sdk" <<'PY'
import json, sys, urllib.request
base, admin = sys.argv[1], sys.argv[2]
def call(method, path, body):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + admin, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))
allow = ["user-%d" % i for i in range(100)]
flags = {
  "static": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
  "split": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off",
            "targeting": {"fractional": [["on", 50], ["off", 50]]}},
  "complex": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off",
              "targeting": {"if": [{"and": [{"ends_with": [{"var": "email"}, "@example.com"]},
                                            {"in": [{"var": "targetingKey"}, allow]}]},
                                   "on", {"fractional": [["on", 25], ["off", 75]]}]}},
}
for i in range(47):
    flags["extra-%02d" % i] = {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "off",
                               "targeting": {"fractional": [["on", i * 100], ["off", 10000 - i * 100]]}}
call("PUT", "/api/v1/environments/default/document", {"flags": flags})
print(call("POST", "/api/v1/tokens", {"name": "wrk", "role": "sdk", "environment": "default"})["token"])
PY
export SDK_TOKEN=$(cat "$DATA/sdk")
RESULTS=$(mktemp)
# measure LABEL SCRIPT URL: one wrk run; prints its summary and records "LABEL req/s p99".
measure() {
  echo "== $1: wrk -t1 -c$CONNECTIONS -d${SECONDS_TO_RUN}s --latency -s $2 $3"
  local out
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_TO_RUN}s" --latency -s "$2" "$3")
  echo "$out" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx"
  echo "$1|$(echo "$out" | awk '/Requests\/sec/ {print $2}')|$(echo "$out" | awk '$1 == "99%" {print $2}')|$(echo "$out" | awk '/Non-2xx/ {print $NF}')" >> "$RESULTS"
}
# fixed_rate LABEL URL HEADER BODY: latency at a fixed 40,000 req/s with oha (when installed,
# or at $OHA), corrected for coordinated omission; records "LABEL req/s p99 success".
OHA="${OHA:-$(command -v oha || echo /var/tmp/peers/oha/bin/oha)}"
fixed_rate() {
  [ -x "$OHA" ] || { echo "== $1: skipped (no oha: cargo install oha)"; return 0; }
  echo "== $1: oha -z ${SECONDS_TO_RUN}s -q 40000 -c $CONNECTIONS --latency-correction -m POST $2"
  local out
  out=$("$OHA" --no-tui -z "${SECONDS_TO_RUN}s" -q 40000 -c "$CONNECTIONS" --latency-correction -m POST \
    -H "$3" -T application/json -d "$4" "$2")
  echo "$out" | grep -E "Requests/sec|Success rate| 50.00%| 99.00%| 99.90%"
  echo "$1|$(echo "$out" | awk '/Requests\/sec/ {print $2}')|$(echo "$out" | awk '$1 == "99.00%" {print $3 $4}')|$(echo "$out" | awk '/Success rate/ {print $3}')" >> "$RESULTS"
}
for flag in static complex; do
  measure "flagd-rs OFREP single '$flag'" benches/ofrep/single.lua "$BASE/ofrep/v1/evaluate/flags/$flag"
done
for flag in static complex; do
  fixed_rate "flagd-rs OFREP single '$flag' at 40k req/s" "$BASE/ofrep/v1/evaluate/flags/$flag" \
    "Authorization: Bearer $SDK_TOKEN" '{"context":{"targetingKey":"user-4242","email":"ada@example.com"}}'
done
measure "flagd-rs OFREP bulk (50 flags)" benches/ofrep/bulk.lua "$BASE/ofrep/v1/evaluate/flags"
kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true

# Unleash Edge, offline, with the same 50 features as Unleash toggles (benches::unleash_features
# for static/split/complex; the 47 extra fractional flags as flexibleRollout at the same share).
if [ "${SKIP_EDGE:-0}" != 1 ]; then
  EDGE_BIN="${EDGE_BIN:-/var/tmp/peers/unleash-edge/bin/unleash-edge}"
  if [ ! -x "$EDGE_BIN" ]; then
    echo "building Unleash Edge into $(dirname "$(dirname "$EDGE_BIN")") (once; about 15 minutes on 2 cores)"
    cargo install unleash-edge --locked --no-default-features --root "$(dirname "$(dirname "$EDGE_BIN")")"
  fi
  python3 - > "$DATA/edge.json" <<'PY'
import json
allow = ["user-%d" % i for i in range(100)]
features = [
  {"name": "static", "enabled": True, "strategies": [{"name": "default", "parameters": {}}]},
  {"name": "split", "enabled": True, "strategies": [{"name": "flexibleRollout",
      "parameters": {"rollout": "50", "stickiness": "userId", "groupId": "split"}}]},
  {"name": "complex", "enabled": True, "strategies": [
      {"name": "default", "parameters": {}, "constraints": [
          {"contextName": "email", "operator": "STR_ENDS_WITH", "values": ["@example.com"], "inverted": False, "caseInsensitive": False},
          {"contextName": "userId", "operator": "IN", "values": allow, "inverted": False, "caseInsensitive": False}]},
      {"name": "flexibleRollout", "parameters": {"rollout": "25", "stickiness": "userId", "groupId": "complex"}}]},
]
for i in range(47):
    features.append({"name": "extra-%02d" % i, "enabled": True, "strategies": [{"name": "flexibleRollout",
        "parameters": {"rollout": str(i), "stickiness": "userId", "groupId": "extra-%02d" % i}}]})
print(json.dumps({"version": 2, "features": features}))
PY
  EDGE_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  export EDGE_TOKEN="*:development.0123456789abcdef0123456789abcdef"
  "$EDGE_BIN" --port "$EDGE_PORT" --interface 127.0.0.1 offline --bootstrap-file "$DATA/edge.json" \
    --frontend-tokens "$EDGE_TOKEN" --client-tokens "$EDGE_TOKEN" > "$DATA/edge.log" 2>&1 &
  EDGE=$!
  trap 'kill $SERVER $EDGE 2>/dev/null || true; rm -rf "$DATA" "$RESULTS"' EXIT
  EDGE_BASE="http://127.0.0.1:$EDGE_PORT"
  for _ in $(seq 100); do curl -sf "$EDGE_BASE/internal-backstage/health" >/dev/null 2>&1 && break; sleep 0.1; done
  check=$(curl -s -X POST -H "Authorization: $EDGE_TOKEN" -H 'Content-Type: application/json' \
    -d '{"userId":"user-4242","properties":{"email":"ada@example.com"}}' "$EDGE_BASE/api/frontend/features/static")
  EDGE_VERSION=$(cargo install --list --root "$(dirname "$(dirname "$EDGE_BIN")")" 2>/dev/null | awk '/^unleash-edge / {print $2}' | tr -d ':')
  echo "Unleash Edge ${EDGE_VERSION:-(version unknown)} answers: $check"
  for flag in static complex; do
    measure "Unleash Edge frontend single '$flag'" benches/ofrep/edge.lua "$EDGE_BASE/api/frontend/features/$flag"
  done
  measure "Unleash Edge frontend all (50 features)" benches/ofrep/edge.lua "$EDGE_BASE/api/frontend/all"
  for flag in static complex; do
    fixed_rate "Unleash Edge frontend single '$flag' at 40k req/s" "$EDGE_BASE/api/frontend/features/$flag" \
      "Authorization: $EDGE_TOKEN" '{"userId":"user-4242","properties":{"email":"ada@example.com"}}'
  done
fi

echo
echo "== side by side (same wrk settings, one run; both servers and wrk share this machine's $(nproc) cores)"
printf '%-56s %12s %10s %8s\n' "what" "req/s" "p99" "non-2xx / success"
while IFS='|' read -r label rps p99 errors; do
  printf '%-56s %12s %10s %8s\n' "$label" "$rps" "$p99" "${errors:-0}"
done < "$RESULTS"
rm -f "$RESULTS"
