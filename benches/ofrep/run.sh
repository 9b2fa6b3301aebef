#!/usr/bin/env bash
# OFREP load test: starts the release server on a scratch data dir, loads the benchmark flags
# (cases A, B, C of benches/src/lib.rs plus 47 more), and drives it with wrk on loopback.
# Usage: benches/ofrep/run.sh [seconds] [connections] [server worker threads]
# (needs `wrk`: apt-get install wrk; with `oha` (cargo install oha) it also measures latency at a fixed 40k req/s)
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
trap 'kill $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
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
for flag in static complex; do
  echo "== single flag '$flag': wrk -t1 -c$CONNECTIONS -d${SECONDS_TO_RUN}s --latency -s benches/ofrep/single.lua $BASE/ofrep/v1/evaluate/flags/$flag"
  wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_TO_RUN}s" --latency -s benches/ofrep/single.lua "$BASE/ofrep/v1/evaluate/flags/$flag" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx"
done
if command -v oha >/dev/null; then
  for flag in static complex; do
    echo "== single flag '$flag' at a fixed 40000 req/s: oha -z ${SECONDS_TO_RUN}s -q 40000 -c $CONNECTIONS --latency-correction -m POST ... $BASE/ofrep/v1/evaluate/flags/$flag"
    oha --no-tui -z "${SECONDS_TO_RUN}s" -q 40000 -c "$CONNECTIONS" --latency-correction -m POST \
      -H "Authorization: Bearer $SDK_TOKEN" -T application/json \
      -d '{"context":{"targetingKey":"user-4242","email":"ada@example.com"}}' \
      "$BASE/ofrep/v1/evaluate/flags/$flag" | grep -E "Requests/sec|Success rate| 50.00%| 99.00%| 99.90%"
  done
fi
echo "== bulk (50 flags): wrk -t1 -c$CONNECTIONS -d${SECONDS_TO_RUN}s --latency -s benches/ofrep/bulk.lua $BASE/ofrep/v1/evaluate/flags"
wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_TO_RUN}s" --latency -s benches/ofrep/bulk.lua "$BASE/ofrep/v1/evaluate/flags" | grep -E "Latency|50%|99%|Requests/sec|Non-2xx"
