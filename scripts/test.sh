#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this).
#
#   ./scripts/test.sh
#
# Installs what it needs (Python clients in a virtualenv under target/),
# checks formatting and lints, builds the gateway, runs the Rust tests
# (unit, property, channel and black-box integration tests), then the
# interop tests that drive the real binary with third-party clients.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo bench --workspace --no-run --locked

step "build the gateway"
cargo build --locked -p tributary
export GATEWAY_BIN="$root/target/debug/tributary"

step "CoAP interop client (libcoap)"
if ! command -v coap-client-notls >/dev/null 2>&1; then
  apt-get update && apt-get install -y libcoap3-bin
fi

step "MQTT interop clients (mosquitto_pub / mosquitto_sub)"
if ! command -v mosquitto_pub >/dev/null 2>&1; then
  apt-get update && apt-get install -y mosquitto-clients
fi

step "Python interop clients"
venv="$root/target/interop-venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r interop-tests/python/requirements.txt

step "Node interop clients (@stomp/stompjs, sockjs-client, mqtt)"
(cd interop-tests/node && npm ci --no-audit --no-fund --loglevel=error)

step "Rust tests (unit, property, integration)"
cargo nextest run --workspace --locked --no-fail-fast

step "interop tests (paho-mqtt against the real binary)"
"$venv/bin/python" -m pytest -q interop-tests/python

step "interop tests (stompjs over WebSocket and SockJS, MQTT.js against the real binary)"
(cd interop-tests/node && node --test --test-concurrency=1)
