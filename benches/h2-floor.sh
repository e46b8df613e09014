#!/usr/bin/env bash
# HTTP/2 at the TLS edge against hyper's floor (issue 27): Switchyard (one worker, TLS listener,
# ALPN h2), the prototype in benches/h2-floor (TLS, hyper's HTTP/2 server, each stream forwarded
# unchanged to an HTTP/1.1 backend over pooled connections, one thread) and HAProxy when
# installed (../shared/perf's config: one thread, `alpn h2,http/1.1`), in alternating rounds
# against one backend: `loadgen h2` with 8 connections x 16 streams of `GET /bench` (requests/s,
# the proxy's CPU seconds per million requests), and for Switchyard and HAProxy `loadgen h2ws`
# (RFC 8441 WebSocket echo of 1 KiB, 8 connections x 8 streams).
# usage: [ROUNDS=3] [DUR=6] [TARGETS="switchyard floor haproxy"] benches/h2-floor.sh [target/release/switchyard]
set -u
SY_BIN=${1:-target/release/switchyard}; DUR=${DUR:-6}
. "$(dirname "$0")/common.sh"
HF=$(prototype h2-floor) || { echo "cannot build the prototype"; exit 1; }
targets=${TARGETS:-"switchyard floor$(command -v haproxy >/dev/null && echo ' haproxy')"}
cert="$run/cert.pem"; key="$run/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$key" -out "$cert" 2>/dev/null
cat "$cert" "$key" > "$run/both.pem"
bport=$(port)
$LG backend --port $bport >/dev/null & pids+=($!); wait_port $bport
echo "| round | target | h2 req/s | CPU s/1M reqs | h2 ws 1KiB msg/s | CPU s/1M msgs |"
echo "|---|---|---|---|---|---|"
for r in $(seq ${ROUNDS:-3}); do
  for t in $targets; do
    tport=$(port); lport=$(port)
    case $t in
      floor) $HF 127.0.0.1:$tport 127.0.0.1:$bport "$cert" "$key" & ppid=$! ;;
      switchyard)
        sed "s/LISTEN_PORT/$lport/;s/BACKEND_PORT/$bport/;s/TLS_PORT/$tport/;s#CERT_FILE#$cert#;s#KEY_FILE#$key#" \
          "$perf/switchyard.yaml.in" > $run/sy.yaml
        RUST_LOG=warn $SY_BIN run -c $run/sy.yaml > $run/sy.log 2>&1 & ppid=$! ;;
      haproxy)
        sed "s/LISTEN_PORT/$lport/;s/BACKEND_PORT/$bport/;s/TLS_PORT/$tport/;s#CERT_AND_KEY_PEM#$run/both.pem#" \
          "$perf/peers/haproxy.cfg.in" > $run/h.cfg
        haproxy -f $run/h.cfg -db >/dev/null 2>&1 & ppid=$! ;;
    esac
    pids+=($ppid); wait_port $tport || { echo "$t did not start"; continue; }
    a=$($LG h2 --url https://127.0.0.1:$tport/bench --conns 8 --streams 16 --duration $DUR --pid $ppid 2>/dev/null)
    w="—"; wc="—"
    if [ $t != floor ]; then
      b=$($LG h2ws --url https://127.0.0.1:$tport/ --conns 8 --streams 8 --size 1024 --duration $DUR --pid $ppid 2>/dev/null)
      w=$(echo "$b" | field msgs_per_s); wc=$(echo "$b" | field proxy_cpu_s_per_million)
    fi
    echo "| $r | $t | $(echo "$a" | field requests_per_s) | $(echo "$a" | field proxy_cpu_s_per_million) | $w | $wc |"
    kill $ppid; wait $ppid 2>/dev/null
  done
done
