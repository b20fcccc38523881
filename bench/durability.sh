#!/usr/bin/env bash
# QoS 1 throughput to persistent sessions for each storage mode: `memory`
# and the fjall store with durability none / batched / fsync (issue #4).
#
#   bench/durability.sh [rounds]        (default 3 rounds; RESULTS=file.jsonl)
#
# Needs `cargo build --release -p tributary -p tributary-bench`. Each round
# starts the gateway on a fresh data directory, pinned to CPU 0 (the load
# generator on CPU 1 when taskset and 2 cores are there), and runs p2p:
# 10 publisher/subscriber pairs, QoS 1, persistent sessions (clean start =
# false), 64-byte payloads, 1 s warm-up then 5 s measured. Prints the
# medians (tributary-bench summarize) at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
results=${RESULTS:-$(mktemp -t tributary-durability-XXXX.jsonl)}
tributary_bin="$root/target/release/tributary"
bench_bin="$root/target/release/tributary-bench"
test -x "$tributary_bin" && test -x "$bench_bin" || {
  echo "build first: cargo build --release -p tributary -p tributary-bench" >&2
  exit 2
}
pin_broker=(); pin_bench=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c 0); pin_bench=(taskset -c 1)
fi
port=${PORT:-18830}
scratch=$(mktemp -d -t tributary-durability-XXXX)
trap 'rm -rf "$scratch"' EXIT

run_mode() { # mode round
  local mode=$1 backend=fjall durability=$1
  if [ "$mode" = memory ]; then backend=memory; durability=fsync; fi
  local data="$scratch/data-$mode-$2"
  TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND="127.0.0.1:$port" \
  TRIBUTARY_LISTENERS__WS__DEFAULT__BIND=127.0.0.1:0 \
  TRIBUTARY_API__BIND=127.0.0.1:0 \
  TRIBUTARY_LOG__LEVEL=warn \
  TRIBUTARY_NODE__SYS_INTERVAL=0s \
  TRIBUTARY_MQTTSN__BIND=127.0.0.1:0 \
  TRIBUTARY_COAP__BIND=127.0.0.1:0 \
  TRIBUTARY_STOMP__BIND=127.0.0.1:0 \
  TRIBUTARY_STOMP__WS_BIND=127.0.0.1:0 \
  TRIBUTARY_STORAGE__BACKEND=$backend \
  TRIBUTARY_STORAGE__DATA_DIR="$data" \
  TRIBUTARY_STORAGE__DURABILITY=$durability \
  NO_COLOR=1 \
    "${pin_broker[@]}" "$tributary_bin" >>"$scratch/broker.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
  done
  "${pin_bench[@]}" "$bench_bin" p2p --port "$port" --pairs 10 --qos 1 --persistent \
    --warmup 1s --duration 5s --broker-pid "$pid" --label "tributary" \
    --name "p2p-q1-persistent-$mode" --quiet >>"$results" 2>>"$scratch/bench.log" \
    || echo "round $2 $mode failed: $(tail -3 "$scratch/bench.log")" >&2
  kill -TERM "$pid"; wait "$pid" || true
  du -sk "$data" 2>/dev/null | awk -v m="$mode" '{print "  " m ": data dir " $1 " KiB after the run"}' >&2 || true
}

for r in $(seq "$rounds"); do
  for mode in memory none batched fsync; do
    echo "round $r: $mode" >&2
    run_mode "$mode" "$r"
  done
done
echo "results: $results" >&2
"$bench_bin" summarize "$results"
