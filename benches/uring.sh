#!/usr/bin/env bash
# The io_uring question of issue 14, measured: Switchyard (one worker) against the one-thread
# io_uring TCP relay prototype in benches/uring-relay (a byte relay: no frame parsing, no
# handshake parsing; what batching every submission and completion of a loop turn into one
# system call saves) and NGINX when installed (../shared/perf's config, one worker), in
# alternating rounds against one echo backend: 1 KiB echo over 64 connections (messages/s,
# the proxy's CPU seconds per million messages, the whole machine's from /proc/stat) and
# upgrades/s over 32 connections.
# usage: [ROUNDS=3] [DUR=6] [TARGETS="switchyard uring nginx"] benches/uring.sh [target/release/switchyard]
set -u
SY_BIN=${1:-target/release/switchyard}; DUR=${DUR:-6}
. "$(dirname "$0")/common.sh"
UR=$(prototype uring-relay) || { echo "cannot build the prototype"; exit 1; }
targets=${TARGETS:-"switchyard uring$(command -v nginx >/dev/null && echo ' nginx')"}
bport=$(port)
$LG backend --port $bport >/dev/null & pids+=($!); wait_port $bport
echo "| round | target | 1 KiB msg/s | proxy CPU s/1M | machine CPU s/1M | handshakes/s | machine CPU s/1M handshakes |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq ${ROUNDS:-3}); do
  for t in $targets; do
    lport=$(port)
    case $t in
      uring) $UR 127.0.0.1:$lport 127.0.0.1:$bport 2>/dev/null & ppid=$! ;;
      *) start_peer $t $lport $bport ;;
    esac
    pids+=($ppid); wait_port $lport || { echo "$t did not start"; continue; }
    b0=$(busy); a=$($LG echo --url ws://127.0.0.1:$lport/ --conns 64 --size 1024 --duration $DUR --pid $ppid); b1=$(busy)
    h=$($LG handshake --url ws://127.0.0.1:$lport/ --conns 32 --duration $DUR); b2=$(busy)
    msgs=$(echo "$a" | field msgs); hs=$(echo "$h" | field handshakes_per_s)
    echo "| $r | $t | $(echo "$a" | field msgs_per_s) | $(echo "$a" | field proxy_cpu_s_per_million) | $(python3 -c "print('%.1f' % (($b1-$b0)/100*1e6/$msgs))") | $hs | $(python3 -c "print('%.0f' % (($b2-$b1)/100*1e6/($hs*$DUR)))") |"
    kill $ppid; wait $ppid 2>/dev/null
  done
done
