#!/usr/bin/env bash
# Load run for overload protection (issue 6): how many connections per second the balancer
# sheds, and whether a reconnect storm at 10x the configured rate hurts the latency of
# connections that are already established.
#
# usage: [RATE=500] [STORM_WORKERS=64] benches/storm.sh [target/release/switchyard]   (cargo build --release first)
# Uses ../shared/perf/loadgen (built on first use). Everything runs on 127.0.0.1, bounded in time.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$here/target/release/switchyard}"
. "$here/benches/common.sh"
RATE=${RATE:-500}
bport=$(port); lport=$(port); aport=$(port)
"$LG" backend --port "$bport" >/dev/null & pids+=($!); wait_port "$bport"
cat > "$run/sy.yaml" <<YAML
listeners:
  - name: storm
    bind: "127.0.0.1:$lport"
    routes:
      - pool: echo
pools:
  echo:
    backends:
      - address: "127.0.0.1:$bport"
limits:
  max_connections: 100000
  max_connections_per_second: $RATE
admin:
  bind: "127.0.0.1:$aport"
process:
  access_log: false
YAML
RUST_LOG=warn "$BIN" run -c "$run/sy.yaml" >/dev/null 2>&1 & sy=$!; pids+=($sy); wait_port "$lport"
url="ws://127.0.0.1:$lport/"
echo "rate limit: $RATE new connections/s"
echo "1) established connections alone: 32 connections, 2000 msg/s open loop"
"$LG" echo --url "$url" --conns 32 --size 1024 --duration 8 --rate 2000 --pid "$sy"
echo "2) the same connections, established first, while ${STORM_WORKERS:-64} workers reconnect as fast as they can"
echo "   (the storm starts 1 s after the echo connections are up and lasts past their end)"
"$LG" echo --url "$url" --conns 32 --size 1024 --duration 8 --rate 2000 --pid "$sy" > "$run/echo.json" & echo_pid=$!
sleep 1
"$LG" handshake --url "$url" --conns "${STORM_WORKERS:-64}" --duration 9 > "$run/storm.json" & storm=$!
wait $echo_pid; cat "$run/echo.json"
wait $storm
echo "storm (completed handshakes per second, admitted + shed):"; cat "$run/storm.json"
echo "balancer counters:"
python3 - "$aport" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("switchyard_shed_total", "switchyard_connections_total")):
        print(" ", line)
PY
