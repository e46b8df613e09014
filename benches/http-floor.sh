#!/usr/bin/env bash
# Plain HTTP against hyper's floor (issue 12): Switchyard (one worker), the prototype in
# benches/hyper-floor (hyper server and client forwarding requests unchanged, one thread; `pool`
# = backend connections in their own tasks shared through an idle list, `pinned` = one backend
# connection per client connection driven in the client's task) and NGINX when installed
# (../shared/perf's config: one worker, upstream keep-alive), in alternating rounds against one
# backend: `loadgen http` over 64 keep-alive connections (requests/s, the proxy's CPU seconds
# per million requests, the whole machine's from /proc/stat).
# usage: [ROUNDS=3] [DUR=6] [TARGETS="switchyard pool pinned nginx"] benches/http-floor.sh [target/release/switchyard]
set -u
SY_BIN=${1:-target/release/switchyard}; DUR=${DUR:-6}
. "$(dirname "$0")/common.sh"
HF=$(prototype hyper-floor) || { echo "cannot build the prototype"; exit 1; }
targets=${TARGETS:-"switchyard pool pinned$(command -v nginx >/dev/null && echo ' nginx')"}
bport=$(port)
$LG backend --port $bport >/dev/null & pids+=($!); wait_port $bport
echo "| round | target | req/s | proxy CPU s/1M | machine CPU s/1M |"
echo "|---|---|---|---|---|"
for r in $(seq ${ROUNDS:-3}); do
  for t in $targets; do
    lport=$(port)
    case $t in
      pool|pinned) $HF $t 127.0.0.1:$lport 127.0.0.1:$bport & ppid=$! ;;
      *) start_peer $t $lport $bport ;;
    esac
    pids+=($ppid); wait_port $lport || { echo "$t did not start"; continue; }
    b0=$(busy); a=$($LG http --url http://127.0.0.1:$lport/bench --conns 64 --duration $DUR --pid $ppid); b1=$(busy)
    n=$(echo "$a" | field requests); e=$(echo "$a" | field errors); [ "$e" = 0 ] && e="" || e=" ($e errors)"
    echo "| $r | $t | $(echo "$a" | field requests_per_s)$e | $(echo "$a" | field proxy_cpu_s_per_million) | $(python3 -c "print('%.1f' % (($b1-$b0)/100*1e6/$n))") |"
    kill $ppid; wait $ppid 2>/dev/null
  done
done
