#!/usr/bin/env bash
# Chaos and soak run (issue 13): CONNS long-lived WebSocket connections with mixed traffic
# through the balancer for DURATION seconds while its backends (separate processes) are killed
# with SIGKILL every KILL_EVERY seconds and restarted RESTART_AFTER seconds later, RELOADS
# config reloads land (SIGHUP and the admin API in turn), a reconnect storm at STORM_X times
# the configured new-connection rate hits between two kills, and SLOWLORIS request heads
# trickle in one byte at a time. Prints what happened, the balancer's RSS and descriptors at
# start, peak and end, and a verdict per criterion; exits 1 if one fails. Not part of
# `cargo test`. The driver is examples/chaos (it starts the backends and the balancer itself,
# so kills, reconnects and closes are timed on one clock).
#
# usage: benches/chaos.sh                        # the full run: 8,000 connections, 10 minutes
#        CONNS=500 DURATION=90 benches/chaos.sh  # a quick check (~2 min)
# env (defaults): CONNS=8000 DURATION=600 SLOWLORIS=2000 KILL_EVERY=30 RESTART_AFTER=5
#   RELOADS=20 BACKENDS=4 RATE=400 (client connections opened per second) LIMIT=1000
#   (max_connections_per_second) STORM_X=10 STORM_SECS=10 STORM_WORKERS=64
#   HANDSHAKE_TIMEOUT=10 SLOW_BYTE_MS=2000 WARMUP=60 (seconds of a first round with the same
#   mix, after which the "start" figures are taken; 0 = none); KEEP=1 keeps the run's files
#   (config, logs, summary) even when it passes (they are always kept when it fails);
#   HOLD_AT_START / HOLD_AFTER_WARMUP / HOLD_AT_END=SECONDS pause there (to attach gdb or
#   heaptrack to the balancer, whose pid is printed).
# Everything runs on 127.0.0.0/8: the balancer and clients on 127.0.0.1, backends on
# 127.0.0.11.., storm clients from 127.0.0.2-9, slowloris from 127.0.0.20-23.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
cargo build --release -q --bin switchyard --example backend --example chaos
tgt="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release"
# 8,000 clients + 2,000 slowloris sockets in the driver; each backend and the balancer
# raise their own limit (the balancer holds two descriptors per proxied connection)
ulimit -n "$(ulimit -Hn)"
run="$(mktemp -d "${TMPDIR:-/tmp}/chaos.XXXXXX")"
set +e
"$tgt/examples/chaos" "$tgt/switchyard" "$tgt/examples/backend" "$run" | tee "$run/summary.md"
status=${PIPESTATUS[0]}
set -e
if [ "$status" = 0 ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$run"; else echo "files kept in $run"; fi
exit "$status"
