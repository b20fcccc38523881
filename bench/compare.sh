#!/usr/bin/env bash
# Side-by-side comparison: Tributary, Mosquitto 2.0 and rumqttd under the
# same scenarios, in alternating rounds, each broker started fresh for each
# run and pinned to one core, the load generator pinned to the other.
#
#   bench/compare.sh                 # full run: 3 rounds x 10 s per scenario
#   QUICK=1 bench/compare.sh         # smoke run: 1 round x 2 s, small counts
#   SCENARIOS="p2p-q0 conns" BROKERS="tributary mosquitto" ROUNDS=5 bench/compare.sh
#
# Installs what it needs: mosquitto (Debian package) if missing, rumqttd
# with `cargo install` into target/bench-peers/, the TCP_NODELAY shim for
# rumqttd (bench/nodelay_shim.c, compiled with gcc into target/bench-peers/),
# and release builds of tributary and tributary-bench.
#
# Results: target/bench-results/<timestamp>.jsonl (one JSON line per run),
# <timestamp>.log (the load generator's tables and progress, broker logs of
# failed runs) and <timestamp>.txt (the summary table: medians of rounds
# with min-max, and Tributary/peer ratios).
#
# Every knob is an environment variable; see the list below. All traffic
# goes to 127.0.0.1 (the load generator refuses anything else).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "${QUICK:-0}" = 1 ]; then
  : "${ROUNDS:=1}" "${DURATION:=2s}" "${WARMUP:=1s}" "${CONNS:=2000}" "${CONN_HOLD:=2s}"
  : "${FANIN_PUBLISHERS:=20}" "${FANOUT_SUBSCRIBERS:=10}" "${PAIRS:=4}"
  : "${EXTRA_ARGS:=--drain-timeout 3s}"
fi
ROUNDS=${ROUNDS:-3}                     # rounds per (scenario, broker)
DURATION=${DURATION:-10s}               # measured window per run
WARMUP=${WARMUP:-2s}                    # publishing before the window
PROTOCOL=${PROTOCOL:-3.1.1}             # 3.1.1 or 5
PAYLOAD=${PAYLOAD:-64}                  # bytes per message
PAIRS=${PAIRS:-10}                      # p2p and fixed-rate pairs
FANIN_PUBLISHERS=${FANIN_PUBLISHERS:-100}
FANIN_SUBSCRIBERS=${FANIN_SUBSCRIBERS:-1}
FANIN_SHARED=${FANIN_SHARED:-0}         # 1: subscribers share $share/g/...
FANOUT_SUBSCRIBERS=${FANOUT_SUBSCRIBERS:-50}
RATES=${RATES:-"20000 60000"}           # fixed aggregate rates (QoS 0 p2p)
CONNS=${CONNS:-100000}                  # idle connections (capped by the fd limit)
CONN_SOURCES=${CONN_SOURCES:-4}         # 127.0.0.1..N source addresses
CONN_HOLD=${CONN_HOLD:-10s}             # idle time before the RSS sample
QUEUE=${QUEUE:-100000}                  # per-client message queue where configurable
INFLIGHT=${INFLIGHT:-100}               # server->client QoS 1/2 window, same for every broker
BROKERS=${BROKERS:-"tributary mosquitto rumqttd"}
SCENARIOS=${SCENARIOS:-"p2p-q0 p2p-q1 fanin-q0 fanin-q1 fanout-q0 fanout-q1 rate-20000 rate-60000 conns"}
BROKER_CPU=${BROKER_CPU:-0}             # core for the broker
BENCH_CPU=${BENCH_CPU:-1}               # core for the load generator
PORT_TRIBUTARY=${PORT_TRIBUTARY:-18831}
PORT_MOSQUITTO=${PORT_MOSQUITTO:-18832}
PORT_RUMQTTD=${PORT_RUMQTTD:-18833}     # v4 listener; v5 listener on +1
EXTRA_ARGS=${EXTRA_ARGS:-}              # appended to every message scenario
SKIP_BUILD=${SKIP_BUILD:-0}             # 1: use the existing release binaries

peers="$root/target/bench-peers"
results_dir="$root/target/bench-results"
stamp=$(date +%Y%m%d-%H%M%S)
jsonl="$results_dir/$stamp.jsonl"
log="$results_dir/$stamp.log"
summary="$results_dir/$stamp.txt"
mkdir -p "$peers" "$results_dir"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tributary-compare.XXXXXX")
broker_pid=""

step() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '%s\n' "$*" | tee -a "$log" >&2; }

cleanup() {
  stop_broker
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- install
step "install and build"
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update
  apt-get install -y mosquitto
fi
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ ! -x "$peers/bin/rumqttd" ]; then
  # Not --locked: rumqttd's published lock file does not build on current
  # toolchains (see shared REFERENCES.md).
  cargo install rumqttd --root "$peers"
fi
gcc -O2 -Wall -shared -fPIC -o "$peers/nodelay_shim.so" bench/nodelay_shim.c -ldl
if [ "${SKIP_BUILD:-0}" = 1 ]; then
  # Reuse the release binaries already built (e.g. while the tree does
  # not compile, or to pin the binaries across several invocations).
  test -x target/release/tributary && test -x target/release/tributary-bench
else
  cargo build --release --locked -p tributary -p tributary-bench
fi
bench_bin="$root/target/release/tributary-bench"
tributary_bin="$root/target/release/tributary"

# ---------------------------------------------------------------- limits
# Raise the soft open-files limit to the hard one; idle connections need
# one descriptor each in the broker and in the load generator.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ $((CONNS + 1000)) -gt "$nofile" ]; then
  capped=$((nofile - 1000))
  note "note: open-files limit is $nofile: idle connections capped at $capped (asked $CONNS)"
  CONNS=$capped
fi
pin_broker=(); pin_bench=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  pin_broker=(taskset -c "$BROKER_CPU")
  pin_bench=(taskset -c "$BENCH_CPU")
else
  note "note: fewer than 2 cores or no taskset: running unpinned"
fi

# ---------------------------------------------------------------- brokers
broker_port() {
  case "$1" in
    tributary) echo "$PORT_TRIBUTARY" ;;
    mosquitto) echo "$PORT_MOSQUITTO" ;;
    rumqttd)
      if [ "$PROTOCOL" = 5 ]; then echo $((PORT_RUMQTTD + 1)); else echo "$PORT_RUMQTTD"; fi ;;
    *) echo "unknown broker $1" >&2; return 1 ;;
  esac
}

write_configs() {
  # Mosquitto: queue limits raised so flat-out runs measure routing rather
  # than the default 1000-message queue; TCP_NODELAY on like the others.
  cat >"$tmp/mosquitto.conf" <<EOF
listener $PORT_MOSQUITTO 127.0.0.1
allow_anonymous true
max_queued_messages $QUEUE
max_inflight_messages $INFLIGHT
max_queued_bytes 0
max_connections -1
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
log_type warning
EOF
  # rumqttd: v4 and v5 servers on loopback, no delay between accepts
  # (default 1 ms caps connects at 1000/s), room for every connection.
  local max_conns=$((CONNS + 1000))
  [ "$max_conns" -lt 10010 ] && max_conns=10010
  cat >"$tmp/rumqttd.toml" <<EOF
id = 0

[router]
max_connections = $max_conns
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$PORT_RUMQTTD"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $INFLIGHT
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:$((PORT_RUMQTTD + 1))"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $INFLIGHT
EOF
}

port_listening() {
  ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN
}

start_broker() {
  local name=$1 port
  port=$(broker_port "$name")
  if port_listening "$port"; then
    note "error: port $port is already in use; set PORT_${name^^}"
    return 1
  fi
  : >"$tmp/broker.log"
  case "$name" in
    tributary)
      TRIBUTARY_LISTENERS__TCP__DEFAULT__BIND="127.0.0.1:$port" \
      TRIBUTARY_LOG__LEVEL=warn \
      TRIBUTARY_NODE__SYS_INTERVAL=0s \
      TRIBUTARY_MQTT__MAX_MQUEUE_LEN="$QUEUE" \
      TRIBUTARY_MQTT__MAX_INFLIGHT="$INFLIGHT" \
      TRIBUTARY_MQTTSN__BIND=127.0.0.1:0 \
      TRIBUTARY_COAP__BIND=127.0.0.1:0 \
      TRIBUTARY_LWM2M__BIND=127.0.0.1:0 \
      TRIBUTARY_STOMP__BIND=127.0.0.1:0 \
      TRIBUTARY_STOMP__WS_BIND=127.0.0.1:0 \
      TRIBUTARY_STORAGE__BACKEND="${STORAGE:-memory}" \
      NO_COLOR=1 \
        "${pin_broker[@]}" "$tributary_bin" >>"$tmp/broker.log" 2>&1 &
      ;;
    mosquitto)
      "${pin_broker[@]}" "$mosquitto_bin" -c "$tmp/mosquitto.conf" >>"$tmp/broker.log" 2>&1 &
      ;;
    rumqttd)
      LD_PRELOAD="$peers/nodelay_shim.so" \
        "${pin_broker[@]}" "$peers/bin/rumqttd" -q -c "$tmp/rumqttd.toml" >>"$tmp/broker.log" 2>&1 &
      ;;
  esac
  broker_pid=$!
  local i
  for i in $(seq 100); do
    if ! kill -0 "$broker_pid" 2>/dev/null; then
      note "error: $name exited at start:"; tee -a "$log" <"$tmp/broker.log" >&2
      broker_pid=""; return 1
    fi
    port_listening "$port" && return 0
    sleep 0.1
  done
  note "error: $name did not listen on $port within 10 s"
  stop_broker; return 1
}

stop_broker() {
  [ -n "$broker_pid" ] || return 0
  kill -TERM "$broker_pid" 2>/dev/null || true
  local i
  for i in $(seq 50); do
    kill -0 "$broker_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$broker_pid" 2>/dev/null || true
  wait "$broker_pid" 2>/dev/null || true
  broker_pid=""
}

# ---------------------------------------------------------------- scenarios
scenario_args() {
  local common=(--duration "$DURATION" --warmup "$WARMUP" --payload "$PAYLOAD")
  case "$1" in
    p2p-q0) echo p2p --pairs "$PAIRS" --qos 0 "${common[@]}" ;;
    p2p-q1) echo p2p --pairs "$PAIRS" --qos 1 "${common[@]}" ;;
    p2p-q2) echo p2p --pairs "$PAIRS" --qos 2 "${common[@]}" ;;
    fanin-q0|fanin-q1|fanin-q2)
      local shared=""; [ "$FANIN_SHARED" = 1 ] && shared=--shared
      echo fanin --publishers "$FANIN_PUBLISHERS" --subscribers "$FANIN_SUBSCRIBERS" $shared \
        --qos "${1#fanin-q}" "${common[@]}" ;;
    fanout-q0|fanout-q1|fanout-q2)
      echo fanout --subscribers "$FANOUT_SUBSCRIBERS" --qos "${1#fanout-q}" "${common[@]}" ;;
    rate-*) echo p2p --pairs "$PAIRS" --qos 0 --rate "${1#rate-}" "${common[@]}" ;;
    conns) echo conns --count "$CONNS" --sources "$CONN_SOURCES" --hold "$CONN_HOLD" ;;
    *) echo "unknown scenario $1" >&2; return 1 ;;
  esac
}

# Expand "rate-20000 rate-60000" from RATES when the list says "rates".
expanded=()
for s in $SCENARIOS; do
  if [ "$s" = rates ]; then
    for r in $RATES; do expanded+=("rate-$r"); done
  else
    expanded+=("$s")
  fi
done
read -r -a brokers <<<"$BROKERS"
write_configs

step "run: $ROUNDS round(s) x ${#expanded[@]} scenario(s) x ${#brokers[@]} broker(s); results in $jsonl"
{
  echo "# compare.sh $stamp: ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP PROTOCOL=$PROTOCOL"
  echo "# PAYLOAD=$PAYLOAD PAIRS=$PAIRS FANIN=$FANIN_PUBLISHERS->$FANIN_SUBSCRIBERS shared=$FANIN_SHARED"
  echo "# FANOUT=1->$FANOUT_SUBSCRIBERS CONNS=$CONNS/$CONN_SOURCES sources QUEUE=$QUEUE"
  echo "# mosquitto: $("$mosquitto_bin" -h 2>/dev/null | head -1)"
  echo "# rumqttd: $("$peers/bin/rumqttd" -V 2>/dev/null) (TCP_NODELAY via LD_PRELOAD shim)"
  echo "# tributary: $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty')"
  echo "# machine: $(nproc) cores, $(uname -r)"
} >>"$log"

failures=0
for round in $(seq "$ROUNDS"); do
  # Rotate the broker order every round so no broker always runs first.
  n=${#brokers[@]}
  order=()
  for i in $(seq 0 $((n - 1))); do order+=("${brokers[$(((i + round - 1) % n))]}"); done
  for scenario in "${expanded[@]}"; do
    read -r -a args <<<"$(scenario_args "$scenario")"
    if [ "$scenario" != conns ] && [ -n "$EXTRA_ARGS" ]; then
      read -r -a extra <<<"$EXTRA_ARGS"; args+=("${extra[@]}")
    fi
    for broker in "${order[@]}"; do
      tag="round $round/$ROUNDS $scenario $broker"
      if ! start_broker "$broker"; then
        failures=$((failures + 1)); continue
      fi
      port=$(broker_port "$broker")
      echo "---- $tag" >>"$log"
      set +e
      "${pin_bench[@]}" "$bench_bin" "${args[@]}" \
        --host 127.0.0.1 --port "$port" --protocol "$PROTOCOL" \
        --broker-pid "$broker_pid" --label "$broker" --name "$scenario" \
        >>"$jsonl" 2>"$tmp/bench.err"
      rc=$?
      set -e
      grep -v '^\[' "$tmp/bench.err" >>"$log" || true
      alive=yes; kill -0 "$broker_pid" 2>/dev/null || alive=no
      line=$(grep -E '^  (delivered|connect rate|integrity|errors) ' "$tmp/bench.err" | tr -s ' ' | paste -sd ';' -)
      if [ $rc -ne 0 ] || [ $alive = no ]; then
        failures=$((failures + 1))
        note "$tag: FAILED (bench exit $rc, broker alive: $alive)"
        tail -5 "$tmp/bench.err" | tee -a "$log" >&2
        { echo "-- broker log:"; tail -20 "$tmp/broker.log"; } >>"$log"
      else
        note "$tag:$line"
      fi
      stop_broker
    done
  done
done

step "summary (medians of $ROUNDS round(s), min-max, Tributary/peer ratios)"
"$bench_bin" summarize "$jsonl" --baseline tributary | tee "$summary"
echo >&2
echo "results: $jsonl" >&2
echo "log:     $log" >&2
echo "summary: $summary" >&2
[ "$failures" -eq 0 ] || { echo "$failures run(s) failed; see the log" >&2; exit 1; }
