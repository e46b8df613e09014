# Shared by the load-run scripts in benches/ (sourced, not run): the load generator of
# ../shared/perf (built on first use), free loopback ports, waiting for a listener, a field
# of loadgen's JSON line, and a run folder whose processes (add their pids to `pids`) are
# killed and which is removed on exit.
perf="${PERF:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/../shared/perf}"
LG="$perf/loadgen/target/release/loadgen"
[ -x "$LG" ] || (cd "$perf/loadgen" && cargo build --release -q)
ulimit -n "$(ulimit -Hn)"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; return 1; }
field() { python3 -c "import json,sys;print(json.loads(sys.stdin.readline())['$1'])"; }
run="$(mktemp -d)"; pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$run"' EXIT
# The peers' templates of ../shared/perf without their TLS listeners, listening on port $1 in
# front of a backend on port $2: Switchyard's config, NGINX's (whose run folder is $3).
sy_plain_yaml() { sed "s/LISTEN_PORT/$1/;s/BACKEND_PORT/$2/" "$perf/switchyard.yaml.in" | python3 -c "
import sys; t=sys.stdin.read(); i=t.index('  - name: bench-tls'); j=t.index('pools:'); print(t[:i]+t[j:])"; }
nginx_plain_conf() { python3 - "$perf/peers/nginx.conf.in" "$1" "$2" "$3" <<'PY'
import sys; t=open(sys.argv[1]).read(); i=t.index('    server {\n        listen 127.0.0.1:TLS_PORT')
print((t[:i]+'}').replace('LISTEN_PORT',sys.argv[2]).replace('BACKEND_PORT',sys.argv[3]).replace('RUNDIR',sys.argv[4]))
PY
}
# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq), from /proc/stat.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# Builds the standalone prototype crate benches/$1 and prints its binary's path.
prototype() {
  local dir; dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$1"
  (cd "$dir" && cargo build --release -q) && echo "$dir/target/release/$1"
}
# Starts `switchyard` ($SY_BIN) or `nginx` on port $2 in front of a backend on port $3, with
# the templates above; `ppid` is its pid.
start_peer() {
  case $1 in
    switchyard) sy_plain_yaml "$2" "$3" > $run/sy.yaml
                RUST_LOG=warn $SY_BIN run -c $run/sy.yaml > $run/sy.log 2>&1 & ppid=$! ;;
    nginx) mkdir -p $run/ng; nginx_plain_conf "$2" "$3" $run/ng > $run/ng.conf
           nginx -c $run/ng.conf -p $run/ng >/dev/null 2>&1 & ppid=$! ;;
    *) echo "unknown target: $1" >&2; ppid="" ;;
  esac
}
