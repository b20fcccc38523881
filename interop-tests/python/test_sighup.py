"""SIGHUP reloads and never terminates (issue #16): `systemctl reload` and
`kill -HUP` are the first things an operator tries, with the shipped
defaults as much as with TLS or an ACL file configured.

Attacks and careless operations performed: hang-ups sent to a gateway
running only on its defaults, in a burst; a configuration file edited to a
new log filter, then broken, before a hang-up; a users file changed behind
the gateway's back with its modification time put back, so that only the
hang-up can make the gateway see the new user.
"""

from __future__ import annotations

import os
import signal
import time

from clients import V311, Client
from test_auth import BAD_CREDENTIALS, connect, users_file

WAIT = 10.0


def wait_for(broker, text: str, after: int = 0) -> None:
    deadline = time.monotonic() + WAIT
    while text not in broker.output()[after:]:
        assert broker.proc.poll() is None, f"the gateway exited:\n{broker.output()[-2000:]}"
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{broker.output()[-2000:]}"
        time.sleep(0.05)


def round_trip(port: int) -> None:
    sub = Client(port, "hup-sub", V311)
    sub.connect()
    sub.subscribe("hup/t", 1)
    pub = Client(port, "hup-pub", V311)
    pub.connect()
    pub.publish("hup/t", b"still here", 1)
    assert sub.expect().payload == b"still here"
    pub.close()
    sub.close()


def test_hangups_on_the_shipped_defaults_reload_and_never_terminate(start_broker):
    b = start_broker()
    for _ in range(5):
        b.proc.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    wait_for(b, "SIGHUP: reloading")
    time.sleep(0.5)
    assert b.proc.poll() is None, f"SIGHUP terminated the gateway:\n{b.output()[-2000:]}"
    round_trip(b.port)
    assert b.terminate() == 0


def test_a_hangup_rereads_the_log_filter_and_survives_a_broken_file(start_broker):
    b = start_broker(env={"TRIBUTARY_LOG__LEVEL": None}, config='[log]\nlevel = "info"\n')
    with open(b.config.name, "w") as f:
        f.write('[log]\nlevel = "info,tributary=debug"\n')
    mark = len(b.output())
    b.proc.send_signal(signal.SIGHUP)
    wait_for(b, "log filter changed", mark)
    # A file that no longer loads: logged, the running configuration kept.
    with open(b.config.name, "w") as f:
        f.write("[log\nlevel = \n")
    mark = len(b.output())
    b.proc.send_signal(signal.SIGHUP)
    wait_for(b, "keeping the running configuration", mark)
    round_trip(b.port)
    assert b.proc.poll() is None


def test_a_hangup_rereads_the_users_file(start_broker, tmp_path):
    path = users_file(tmp_path, ("alice", "wonderland"))
    b = start_broker(config=f'[authentication.built_in_database]\nenabled = true\nusers_file = "{path}"\n')
    assert connect(b.port, "c1", V311, "alice", "wonderland") == 0
    assert connect(b.port, "c2", V311, "bob", "builder") == BAD_CREDENTIALS[V311]
    before = os.stat(path)
    users_file(tmp_path, ("bob", "builder"))
    # Same modification time as before: only the hang-up tells the gateway.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    time.sleep(2.5)  # past the file watcher's recheck interval
    assert connect(b.port, "c3", V311, "bob", "builder") == BAD_CREDENTIALS[V311]
    mark = len(b.output())
    b.proc.send_signal(signal.SIGHUP)
    wait_for(b, "users file reloaded", mark)
    assert connect(b.port, "c4", V311, "bob", "builder") == 0
    assert connect(b.port, "c5", V311, "alice", "wonderland") == 0
