"""The binary itself: its default configuration, configuration errors, graceful shutdown."""

import os
import re
import signal
import socket
import subprocess
import time
import tomllib

import pytest

import rawmqtt
from clients import V5
from conftest import BIN, free_port


def run(*args, config_text=None, env=None, tmp_path=None):
    """Run the binary to completion; returns CompletedProcess (text)."""
    argv = [str(BIN), *args]
    if config_text is not None:
        path = tmp_path / "tributary.toml"
        path.write_text(config_text)
        argv += ["--config", str(path)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRIBUTARY_")}
    full_env.update(env or {})
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=20)


@pytest.fixture(scope="module")
def default_config():
    out = run("print-default-config")
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_default_config_is_valid_toml(default_config):
    parsed = tomllib.loads(default_config)
    assert parsed["mqtt"]["max_packet_size"] == 1048576
    assert parsed["mqtt"]["max_inflight"] >= 1
    assert parsed["listeners"]["tcp"]["default"]["bind"] == "0.0.0.0:1883"


def test_check_config_accepts_default_config(default_config, tmp_path):
    out = run("check-config", config_text=default_config, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr


def test_check_config_takes_the_file_as_an_argument(default_config, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(default_config)
    out = run("check-config", str(good))
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nmax_inflight = 0\n")
    out = run("check-config", str(bad))
    assert out.returncode != 0
    assert "mqtt.max_inflight" in out.stderr


@pytest.mark.parametrize("var,needle", [
    ("TRIBUTARY_MQTT__NO_SUCH_KEY", "mqtt.no_such_key"),
    ("TRIBUTARY_NOT_A_KEY", "TRIBUTARY_NOT_A_KEY: not a configuration key"),
    ("TRIBUTARY__MQTT__MAX_INFLIGHT", "one underscore"),
])
def test_unknown_tributary_variable_stops_start_up(var, needle):
    out = run(env={var: "1"})
    assert out.returncode != 0
    assert needle in out.stderr, out.stderr


def test_environment_overrides_the_file(tmp_path):
    out = run("check-config", config_text="[mqtt]\nmax_inflight = 5\n", tmp_path=tmp_path,
              env={"TRIBUTARY_MQTT__MAX_INFLIGHT": "0"})
    # defaults < file < environment: the environment's invalid 0 wins and is named.
    assert out.returncode != 0
    assert "mqtt.max_inflight" in out.stderr and "TRIBUTARY_MQTT__MAX_INFLIGHT" in out.stderr


def test_broker_runs_with_printed_default_config(default_config, tmp_path):
    port = free_port()
    cfg = tmp_path / "d.toml"
    cfg.write_text(default_config.replace('bind = "0.0.0.0:1883"', f'bind = "127.0.0.1:{port}"'))
    proc = subprocess.Popen([str(BIN), "--config", str(cfg)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env={k: v for k, v in os.environ.items() if not k.startswith("TRIBUTARY_")},
                            # The default store is relative: run where it may create it.
                            cwd=tmp_path)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                c = rawmqtt.RawClient(port, rawmqtt.V311)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "broker did not listen"
                time.sleep(0.01)
        assert c.connect(client_id="cfg").rc == 0
        c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


@pytest.mark.parametrize("args", [["check-config"], []], ids=["check-config", "run"])
def test_unknown_key_rejected_with_its_path(tmp_path, args):
    out = run(*args, config_text="[mqtt]\nmax_pakcet_size = 5\n", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "mqtt.max_pakcet_size" in out.stderr


@pytest.mark.parametrize("args", [["check-config"], []], ids=["check-config", "run"])
def test_bad_value_rejected_with_its_path(tmp_path, args):
    out = run(*args, config_text="[mqtt]\nmax_inflight = 0\n", tmp_path=tmp_path)
    assert out.returncode != 0
    assert "mqtt.max_inflight" in out.stderr


def test_every_config_error_reported_at_once(tmp_path):
    text = ('[mqtt]\nmax_pakcet_size = 5\nmax_inflight = 0\nmax_qos_allowed = 3\n'
            '[listeners.tcp.default]\nbind = "not an address"\n')
    out = run("check-config", config_text=text, tmp_path=tmp_path)
    assert out.returncode != 0
    for key in ("mqtt.max_pakcet_size", "mqtt.max_inflight", "mqtt.max_qos_allowed",
                "listeners.tcp.default.bind"):
        assert key in out.stderr, f"{key} not reported:\n{out.stderr}"


@pytest.mark.parametrize("text,key", [
    ('[mqtt]\nconnect_timeout = "soon"\n', "mqtt.connect_timeout"),
    ('[mqtt]\nmqueue_overflow = "drop_everything"\n', "mqtt.mqueue_overflow"),
    ('[mqtt]\nmax_clientid_len = 5\n', "mqtt.max_clientid_len"),
    ('[mqtt]\nkeepalive_multiplier = 0.5\n', "mqtt.keepalive_multiplier"),
    ('[log]\nlevel = 3\n', "log.level"),
    ('[nodee]\nname = "x"\n', "nodee"),
])
def test_invalid_values_named(tmp_path, text, key):
    out = run("check-config", config_text=text, tmp_path=tmp_path)
    assert out.returncode != 0
    assert key in out.stderr, out.stderr


def test_valid_durations_accepted(tmp_path):
    text = '[mqtt]\nconnect_timeout = "1h30m"\nretry_interval = 20\nawait_rel_timeout = "500ms"\n'
    out = run("check-config", config_text=text, tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr


def test_env_override_errors_name_key_and_variable():
    out = run("check-config", env={"TRIBUTARY_MQTT__MAX_INFLIGHT": "0"})
    assert out.returncode != 0
    assert "mqtt.max_inflight" in out.stderr and "TRIBUTARY_MQTT__MAX_INFLIGHT" in out.stderr
    out = run("check-config", env={"TRIBUTARY_MQTT__MAX_PAKCET_SIZE": "5"})
    assert out.returncode != 0
    assert "mqtt.max_pakcet_size" in out.stderr


def test_syntax_error_rejected(tmp_path):
    out = run("check-config", config_text="[mqtt\nmax_inflight = 3\n", tmp_path=tmp_path)
    assert out.returncode != 0 and out.stderr.strip()


def test_missing_config_file_rejected():
    out = run("check-config", "--config", "/nonexistent/tributary.toml")
    assert out.returncode != 0
    assert "/nonexistent/tributary.toml" in out.stderr


@pytest.mark.parametrize("section", ["", "node", "log", "mqtt", "retainer", "authorization", "authentication",
                                     "limits", "listeners.tcp.default"])
def test_every_accepted_key_is_in_the_default_config(default_config, tmp_path, section):
    # default.toml promises "Every key is shown with its default value": compare it with the
    # fields the binary itself lists when it rejects an unknown key.
    header = f"[{section}]\n" if section else ""
    out = run("check-config", config_text=f"{header}zz_not_a_key = 1\n", tmp_path=tmp_path)
    assert out.returncode != 0
    m = re.search(r"expected (?:one of )?(.*)", out.stderr)
    assert m, out.stderr
    fields = re.findall(r"`([^`]+)`", m.group(1))
    assert fields, out.stderr
    documented = set(re.findall(r"^#?\s*([a-z0-9_]+)\s*=", default_config, re.M))
    sections = set(re.findall(r"^#?\s*\[+([a-z0-9_.]+)", default_config, re.M))
    names = documented | {s.split(".")[-1] for s in sections} | {s.split(".")[0] for s in sections}
    missing = [f for f in fields if f not in names]
    assert not missing, f"accepted but undocumented in [{section}]: {missing}"


def test_version_flag():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("tributary ")


# ---------------------------------------------------------------- graceful shutdown

def test_sigterm_disconnects_v5_clients_with_0x8b_and_exits_0(broker, raw, client):
    r = raw(broker.port, rawmqtt.V5)
    assert r.connect(client_id="raw5").rc == 0
    old = raw(broker.port, rawmqtt.V311)
    assert old.connect(client_id="raw311").rc == 0
    paho = client(broker.port, "paho5", V5)
    paho.connect()
    broker.proc.send_signal(signal.SIGTERM)
    # MQTT 5 §4.13 / reason 0x8B Server shutting down; then the connection is closed.
    assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed(3)] == [(rawmqtt.DISCONNECT, 0x8B)]
    assert old.read_until_closed(3) == []
    assert paho.disconnected.wait(3) and paho.disconnect_reason == 139
    r.close()
    old.close()
    assert broker.proc.wait(10) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", broker.port), timeout=1).close()


def test_sigint_exits_0(broker, raw):
    r = raw(broker.port, rawmqtt.V5)
    assert r.connect(client_id="int").rc == 0
    broker.proc.send_signal(signal.SIGINT)
    assert [(p.type, rawmqtt.reason_code(p)) for p in r.read_until_closed(3)] == [(rawmqtt.DISCONNECT, 0x8B)]
    r.close()
    assert broker.proc.wait(10) == 0


def test_sigterm_exits_even_if_clients_keep_their_sockets_open(broker, raw):
    # A client that never closes its end cannot hold the shutdown forever.
    r = raw(broker.port, rawmqtt.V5)
    assert r.connect(client_id="stubborn").rc == 0
    broker.proc.send_signal(signal.SIGTERM)
    assert broker.proc.wait(10) == 0


def test_sigterm_with_many_sessions_exits_promptly(start_broker, raw):
    # Many connections, persistent sessions and wills open: the process still exits 0
    # promptly and closes every connection.
    b = start_broker()
    conns = []
    for i in range(30):
        c = raw(b.port, rawmqtt.V5 if i % 2 else rawmqtt.V311)
        c.connect(client_id=f"c{i}", clean=False,
                  **({"props": [(rawmqtt.SESSION_EXPIRY, 60)]} if i % 2 else {}),
                  will=rawmqtt.Will("w/t", b"x", 1))
        c.subscribe([("s/#", 1)])
        conns.append(c)
    b.proc.send_signal(signal.SIGTERM)
    for c in conns:
        c.read_until_closed(3)
        c.close()
    assert b.proc.wait(10) == 0
