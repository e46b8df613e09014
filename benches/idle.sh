#!/usr/bin/env bash
# Idle memory only: resident bytes per idle proxied connection (8,000 by default) for HAProxy
# and Switchyard, measured like the idle column of ../shared/perf/compare.sh (same templates,
# without their TLS listeners), in one run, in a minute instead of ten.
# usage: [IDLE=8000] [TARGETS="haproxy switchyard"] benches/idle.sh [target/release/switchyard]
set -u
SY_BIN=${1:-target/release/switchyard}; IDLE=${IDLE:-8000}
. "$(dirname "$0")/common.sh"
here="$perf"
for t in ${TARGETS:-haproxy switchyard}; do
  bport=$(port); lport=$(port); tport=$(port)
  $LG backend --port $bport >/dev/null & bpid=$!; pids+=($bpid); wait_port $bport
  fill() { sed "s/LISTEN_PORT/$lport/;s/BACKEND_PORT/$bport/;s/TLS_PORT/$tport/;s#CERT_AND_KEY_PEM#/dev/null#g;s#CERT_FILE#x#g;s#KEY_FILE#x#g;s#RUNDIR#$run#g" "$1"; }
  case $t in
    haproxy) fill $here/peers/haproxy.cfg.in | grep -v "ssl crt" > $run/h.cfg; haproxy -f $run/h.cfg -db >/dev/null 2>&1 & ppid=$! ;;
    switchyard) start_peer switchyard $lport $bport ;;
  esac
  pids+=($ppid); wait_port $lport || { echo "$t did not start"; cat $run/sy.log; continue; }
  echo "$t $($LG idle --url ws://127.0.0.1:$lport/ --conns $IDLE --hold 1 --pid $ppid)"
  kill $ppid $bpid; wait $ppid $bpid 2>/dev/null
done
