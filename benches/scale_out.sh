#!/usr/bin/env bash
# Handshakes per second through an L4 spreader: HAProxy (Debian) in `mode tcp`, round robin
# with `send-proxy-v2`, in front of one and then two Switchyard instances (`proxy_protocol:
# true`, one worker each), in front of one echo backend (../shared/perf/loadgen). Also the
# same load straight at one instance, without the spreader, as the baseline of the run.
#
# usage: [D=10] [CONNS=32] benches/scale_out.sh [target/release/switchyard]   (cargo build --release first)
# Everything runs on 127.0.0.1. On a 2-core machine the load generator, HAProxy, the backend
# and the instances share the same two cores: read the figures as "what the spreader and
# PROXY protocol cost", not as how far instances scale on separate hosts.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${1:-$here/target/release/switchyard}"
command -v haproxy >/dev/null || { echo "needs haproxy (apt-get install haproxy)"; exit 1; }
D=${D:-10}; CONNS=${CONNS:-32}
. "$here/benches/common.sh"
bport=$(port)
"$LG" backend --port "$bport" >/dev/null & pids+=($!); wait_port "$bport"

instance() { # NAME PORT PROXY_PROTOCOL
  cat > "$run/$1.yaml" <<YAML
listeners:
  - name: l
    bind: "127.0.0.1:$2"
    proxy_protocol: $3
    routes:
      - pool: echo
pools:
  echo:
    backends:
      - address: "127.0.0.1:$bport"
limits:
  max_connections: 100000
  max_connections_per_second: 1000000
  trusted_proxies: ["127.0.0.1/32"]
process:
  workers: 1
  access_log: false
YAML
  RUST_LOG=warn "$BIN" run -c "$run/$1.yaml" >/dev/null 2>&1 & pids+=($!); wait_port "$2"
}
spreader() { # PORT INSTANCE_PORTS...
  local p=$1; shift
  { printf 'global\n  maxconn 9000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s\n  default_backend be\nbackend be\n  balance roundrobin\n' "$p"
    for ip in "$@"; do printf '  server s%s 127.0.0.1:%s send-proxy-v2\n' "$ip" "$ip"; done; } > "$run/h$p.cfg"
  haproxy -f "$run/h$p.cfg" -db >/dev/null 2>&1 & pids+=($!); wait_port "$p"
}
hs() { "$LG" handshake --url "ws://127.0.0.1:$1/" --conns "$CONNS" --duration "$D" | field handshakes_per_s; }

direct_port=$(port); instance direct "$direct_port" false
i1=$(port); i2=$(port); instance one "$i1" true; instance two "$i2" true
s1=$(port); spreader "$s1" "$i1"
s2=$(port); spreader "$s2" "$i1" "$i2"
a=$(hs "$direct_port"); b=$(hs "$s1"); c=$(hs "$s2")
echo "| setup | handshakes/s | vs one instance without spreader |"
echo "|---|---|---|"
echo "| one instance, no spreader | $a | 1.00 |"
echo "| spreader (PROXY v2) → one instance | $b | $(python3 -c "print(f'{$b/$a:.2f}')") |"
echo "| spreader (PROXY v2) → two instances | $c | $(python3 -c "print(f'{$c/$a:.2f}')") |"
