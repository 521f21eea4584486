"""Remote hosts: agents on other machines in the same sidebar, over the user's own ssh.

Pure parts first (frames, the hostile-input rebuild, the fixed bootstrap command, ssh's messages,
backoff and sleep, the relay's fixed requests, the sidebar's host groups). Then real OpenSSH
(tests/sshlab.py): sshds on 127.0.0.N for users made here, one local server following them, and
the faults: a host without python3, a changed host key, a host that never answers, sshd killed
and stopped (SIGSTOP) mid-stream, the remote server killed; and hostile data from a host."""
import base64
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest

import opensessions as o
from conftest import PYTHON, SCRIPT, Env, ServerProc, SSEReader, TmuxServer, end_process, retry_until
import sshlab

HERE = os.path.dirname(os.path.abspath(__file__))


# -- pure ----------------------------------------------------------------------------------------

def test_frames_are_capped_and_junk_is_counted():
    r = o.FrameReader(limit=100)
    assert r.feed(b'{"t": "ping"}\n{"t": "hel') == [{"t": "ping"}]
    assert r.feed(b'lo", "version": "1"}\n') == [{"t": "hello", "version": "1"}]
    # a line longer than the limit is dropped as it comes, never held whole
    assert r.feed(b"x" * 150) == [] and len(r.buf) == 0 and r.too_long == 1
    assert r.feed(b"y" * 80 + b'\n{"t": "ping"}\n') == [{"t": "ping"}]
    # not JSON, not an object, no "t", bad UTF-8: counted, skipped
    junk = b'Welcome to my box\n[1,2]\n{"x": 1}\n\xff\xfe\n'
    assert r.feed(junk) == [] and r.bad == 4 and r.first_bad == "Welcome to my box"
    deep = o.FrameReader(limit=1 << 20)
    assert deep.feed(b'{"t": "state", "state": ' + b"[" * 100000 + b"]" * 100000 + b"}\n") == []
    assert deep.bad == 1


HOSTILE = {
    "sessions": [
        {"id": "$1", "name": "#(touch /tmp/pwned);evil\x1b[31m\nname", "created": 1, "dir": "/x\x07y",
         "windows": [{"id": "@1", "name": "w#[fg=red]", "panes": [
             {"id": "%3", "pid": 10, "cwd": "/p", "command": "claude", "tty": "/dev/pts/0"},
             {"id": "; rm -rf /", "pid": 11}]},
             {"id": "not-a-window", "panes": []}],
         "threads": [{"agent": "claude", "id": "c1", "title": "#(reboot)\x00t", "status": "waiting",
                      "pane": "%3", "pid": 10, "alive": True, "unseen": True, "updatedAt": 5,
                      "usage": {"input": float("nan"), "output": -5, "cost": 1e999, "contextPct": 400}},
                     {"agent": "Bad Agent", "id": "x", "status": "running"},
                     {"agent": "codex", "id": "a\nb", "status": "running"},
                     {"agent": "codex", "id": "ok", "status": "exploding", "pane": "%3;kill", "attempt": True}],
         "metadata": {"status": {"text": "x" * 5000, "tone": "bogus"}, "logs": [{"message": 5}]},
         "ports": [22, 0, 70000, "80", True]},
        {"name": "a:b.c"}, {"name": "a_b_c"}, {"name": ""}, {"name": 7}, "not a dict",
    ] + [{"name": "s%d" % i} for i in range(600)],
    "threads": [{"agent": "claude", "id": "o%d" % i, "status": "done"} for i in range(100)],
    "clients": [{"session": "#(x)", "window": "@1"}, {"session": "a", "window": "@@"}],
}


def test_hostile_state_is_rebuilt_from_checked_fields():
    doc = o.clean_remote_state(HOSTILE, "devbox")
    s = doc["sessions"][0]
    assert s["host"] == "devbox" and s["name"] == "devbox:" + s["remoteName"]
    assert "\x1b" not in s["remoteName"] and "\n" not in s["remoteName"] and ":" not in s["remoteName"]
    assert s["dir"] == "/x y"
    assert [w["id"] for w in s["windows"]] == ["@1"] and [p["id"] for p in s["windows"][0]["panes"]] == ["%3"]
    assert "tty" not in s["windows"][0]["panes"][0]  # a host's tty path means nothing here
    assert [(t["agent"], t["id"]) for t in s["threads"]] == [("claude", "c1"), ("codex", "ok")]
    t = s["threads"][0]
    assert t["title"] == "#(reboot) t" and t["host"] == "devbox" and t["session"] == s["name"]
    assert t["usage"] == {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0, "cost": None, "contextPct": None}
    bad = s["threads"][1]
    assert bad["status"] == "idle" and bad["pane"] is None and bad["attempt"] is None
    assert s["ports"] == [22] and s["state"] == "waiting" and s["unseen"] is True
    assert s["metadata"]["status"] is None and s["metadata"]["logs"] == []  # as a request would be refused
    names = [x["remoteName"] for x in doc["sessions"]]
    assert names[1] == "a_b_c" and names.count("a_b_c") == 1  # ':' and '.' as tmux makes them; no duplicate
    assert len(doc["sessions"]) <= o.REMOTE_MAX_SESSIONS and len(doc["threads"]) == o.MAX_ORPHANS
    assert doc["clients"][0]["window"] == "@1" and doc["clients"][1]["window"] is None
    json.dumps(doc, allow_nan=False)  # strict JSON, whatever came in
    for junk in (None, [], "x", {"sessions": "no"}, {"sessions": [None]}):
        assert o.clean_remote_state(junk, "h")["sessions"] == []


def test_state_with_hosts_is_the_same_json_when_their_sessions_are_encoded_once():
    store = o.Store()

    class Host(object):
        state, note, server, orphans, source = "connected", None, {"pid": 1}, [], "ui.json"

        def __init__(self, name):
            self.name, self.encoded = name, {}
            self.sessions = o.clean_remote_state(HOSTILE, name)["sessions"][:40]

        def to_json(self):
            return {"name": self.name, "state": self.state}

    class Hosts(o.RemoteHosts):
        def __init__(self):
            self.door = o.RemoteDoor(store=store)
            self.order = ["a", "b"]
            self.hosts = {n: Host(n) for n in self.order}
    store.remote = Hosts()
    store.ui["hidden"] = ["a:s3"]
    for _ in range(2):  # the second time from the cache
        store.touch()
        store.ui["width"] = 30 + _  # a local change: published again, the hosts' part from the cache
        assert store.publish()
        _, doc, body = store.published
        assert json.loads(body) == json.loads(o.encode_json(doc))
        assert [s for s in json.loads(body)["sessions"] if s["name"] == "a:s3"][0]["hidden"] is True
    store.remote.hosts["b"].state = "unreachable"  # greyed: the cached JSON is not reused
    store.touch()
    store.publish()
    assert all(s["stale"] for s in json.loads(store.published[2])["sessions"] if s["host"] == "b")


def test_the_bootstrap_command_is_fixed_and_quotes_its_arguments():
    digest = hashlib.sha256(b"program").hexdigest()
    cmd = o.remote_command(digest, 5)
    words = shlex.split(cmd)
    assert words[:2] == ["python3", "-c"] and words[3:] == [digest, "5"]
    code = words[2]
    assert code.startswith("import base64;exec(base64.b64decode(\"") and "'" not in code and "$" not in code
    b64 = code.split('"')[1]
    assert base64.b64decode(b64).decode() == o.BOOTSTRAP
    # the same for every host: nothing in it comes from a host or a user
    assert o.remote_command(digest, 5) == cmd and "!" not in cmd and "\n" not in cmd
    # an odd digest is quoted, never spliced
    assert shlex.split(o.remote_command("x; rm -rf ~", 1))[3] == "x; rm -rf ~"


def test_the_bootstrap_says_when_python_is_too_old(tmp_path):
    code = "import sys; sys.version_info = (3, 8, 10)\n" + o.BOOTSTRAP
    p = subprocess.run([PYTHON, "-c", code, "0" * 64, "5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, env=dict(os.environ, HOME=str(tmp_path)), timeout=30)
    assert json.loads(p.stdout) == {"t": "fatal", "reason": "python3 on the host is 3.8; opensessions needs Python "
                                                              "3.9 or newer there"}
    assert not os.path.exists(str(tmp_path / ".cache"))


def test_the_bootstrap_takes_only_the_program_of_its_digest(tmp_path):
    data = b"#!/usr/bin/env python3\nprint('hi')\n"
    digest = hashlib.sha256(data).hexdigest()
    env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = lambda stdin: subprocess.run([PYTHON, "-c", o.BOOTSTRAP, digest, "5"], input=stdin, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    bad = run(b"%d\n" % len(data) + data.replace(b"hi", b"HI"))  # the wrong bytes: refused, nothing written
    assert [json.loads(l)["t"] for l in bad.stdout.splitlines()] == ["need", "fatal"]
    assert "sha256" in bad.stdout.decode() and not os.path.exists(str(tmp_path / "cache" / "opensessions"))
    good = run(b"%d\n" % len(data) + data)  # the right ones: installed (0600 in a 0700 dir), then run
    lines = good.stdout.splitlines()
    assert [json.loads(l)["t"] for l in lines[:2]] == ["need", "installed"]
    path = tmp_path / "cache" / "opensessions" / ("opensessions-%s.pyz" % digest[:16])
    assert path.read_bytes() == data and oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "cache" / "opensessions").stat().st_mode & 0o777) == "0o700"
    again = run(b"")  # cached and whole: not asked for again
    assert b"need" not in again.stdout


def test_the_relay_says_when_tmux_is_missing_or_too_old():
    for version, want in ((None, "tmux is not installed on the host"), ("2.9a", "tmux on the host is 2.9a")):
        r, w = os.pipe()
        relay = o.Relay(lambda: None, lambda: None, None, lambda: False, tmux_version=version, out_fd=w)
        assert relay.run() == 0
        os.close(w)
        frames = o.FrameReader().feed(os.read(r, 65536))
        os.close(r)
        assert [f["t"] for f in frames] == ["hello", "fatal"] and frames[1]["reason"].startswith(want)


def test_ssh_options_never_prompt_and_open_no_forwards():
    opts = o.ssh_options("/run/x/ssh/a%b.sock", 5)
    pairs = [opts[i + 1] for i in range(0, len(opts), 2)]
    assert all(opts[i] == "-o" for i in range(0, len(opts), 2))
    for want in ("BatchMode=yes", "StrictHostKeyChecking=yes", "ClearAllForwardings=yes", "ControlMaster=auto",
                 "ControlPersist=no", "ServerAliveInterval=5", "ServerAliveCountMax=3", "ConnectTimeout=10",
                 "ControlPath=/run/x/ssh/a%%b.sock", "LogLevel=INFO"):
        assert want in pairs
    reuse = o.ssh_options("/p.sock", master=False)
    assert "ControlMaster=no" in reuse and "ControlPath=/p.sock" in reuse
    assert len(o.ssh_control_path("/tmp/" + "x" * 200, "devbox")) < 108


def test_ssh_failures_say_why():
    changed = (b"@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n"
               b"Host key for [127.0.0.5]:2222 has changed and you have requested strict checking.\r\n"
               b"Host key verification failed.\r\n")
    assert "CHANGED" in o.ssh_failure(255, changed, False)
    assert "not known" in o.ssh_failure(255, b"Host key verification failed.\r\n", False)
    assert "python3 is not on PATH" in o.ssh_failure(127, b"sh: 1: python3: not found\n", False)
    assert "python3 is not on PATH" in o.ssh_failure(127, b"fish: Unknown command: python3\n", False)
    assert o.ssh_failure(255, b"Connection timed out during banner exchange\r\n", False) == "connection timed out"
    assert o.ssh_failure(255, b"ssh: connect to host x port 22: Connection refused\r\n", False) == "connection refused"
    assert "login refused" in o.ssh_failure(255, b"u@h: Permission denied (publickey).\r\n", False)
    assert "stopped answering" in o.ssh_failure(255, b"Timeout, server 127.0.0.2 not responding.\r\n", True)
    assert o.ssh_failure(255, b"", True) == "connection closed"
    assert o.ssh_failure(255, b"\x1b[31mweird\x07 thing\n", False) == "[31mweird  thing"


def test_backoff_doubles_to_thirty_seconds_and_sleep_is_noticed():
    delays, d = [], 0.0
    for _ in range(8):
        d = o.next_backoff(d)
        delays.append(d)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert not o.slept(5.0, 5.2) and o.slept(5.0, 300.0)


class _FakeHost(object):
    def __init__(self):
        self.retried = self.checked = 0

    def retry_now(self):
        self.retried += 1

    def check(self, now):
        self.checked += 1


def test_a_machine_that_slept_tries_every_host_again_at_once():
    door = o.RemoteDoor(loop=o.EventLoop())
    hosts = o.RemoteHosts(door, environ={})
    a, b = _FakeHost(), _FakeHost()
    hosts.hosts = {"a": a, "b": b}
    assert hosts.check(100.0, 1000.0) is False  # first look: nothing to compare
    assert hosts.check(105.0, 1005.1) is False and a.checked == 2
    assert hosts.check(110.0, 1900.0) is True  # 5 s of monotonic time, 895 s of wall time: it slept
    assert (a.retried, b.retried) == (1, 1)
    door.loop.close()


def test_the_relay_takes_only_its_fixed_requests():
    assert o.relay_request({"t": "req", "id": 1, "op": "reply", "body": {"thread": "claude:x", "action": "approve",
                                                                          "evil": 1}}) == \
        (1, "POST", "/api/reply", {"thread": "claude:x", "action": "approve"})
    rid, method, path, body = o.relay_request({"t": "req", "id": 2, "op": "preview",
                                              "body": {"thread": "a&host=x#y z", "lines": 999}})
    assert (method, body) == ("GET", None) and path == "/api/preview?thread=a%26host%3Dx%23y%20z&lines=20"
    assert o.relay_request({"t": "req", "id": 3, "op": "ui", "body": {"order": ["a"]}})[1:3] == ("POST", "/ui")
    for bad in ({"t": "req", "id": 4, "op": "set-status", "body": {}}, {"t": "req", "id": 5, "op": "reply", "body": []},
                {"t": "req", "id": "x", "op": "reply", "body": {}}, {"t": "nope", "id": 6, "op": "ui", "body": {}},
                {"t": "req", "id": 7, "op": "preview", "body": {"thread": 3}}):
        with pytest.raises(ValueError):
            o.relay_request(bad)


def test_attach_commands_quote_the_hosts_names():
    cmd = o.remote_attach_command("x'; touch /tmp/pwned; '", "@3", "%7")
    assert shlex.split(cmd) == ["tmux", "attach-session", "-t", "=x'; touch /tmp/pwned; '", ";",
                                "select-window", "-t", "@3", ";", "select-pane", "-t", "%7"]
    assert shlex.split(o.remote_attach_command("s", "@3;x", "%%7")) == ["tmux", "attach-session", "-t", "=s"]
    assert o.remote_select_command(None, None) is None
    assert shlex.split(o.remote_attach_command("s", utf8=True))[:3] == ["tmux", "-u", "attach-session"]


def test_the_api_sends_a_hosts_requests_through_its_api_host():
    """Api routes a request naming a host (reply, preview, ui) through ApiHost.to_host, checked on
    the loop; with no remote hosts it is refused (never applied to this machine's threads or ui)."""
    store = o.Store(lambda: 1000.0)
    asked = []

    def to_host(op, body):
        asked.append((op, dict(body)))
        return lambda: (200, {"lines": []}) if op == "preview" else None
    api = o.Api(store, lambda: 1000.0, None, o.ApiHost(publish=lambda: None, to_host=to_host,
                                                      change_ui=lambda change: asked.append(("local", change))))
    send = api.apply_and_publish("api_reply", {"host": "b", "thread": "claude:x", "action": "approve"})
    assert callable(send) and send() is None
    assert api.apply_and_publish("api_ui", {"host": "b", "order": ["s"]})() is None
    assert api.api_host_preview("b", "claude:x", 30)() == (200, {"lines": []})
    assert asked == [("reply", {"host": "b", "thread": "claude:x", "action": "approve"}),
                     ("ui", {"host": "b", "order": ["s"]}), ("preview", {"host": "b", "thread": "claude:x", "lines": 30})]
    alone = o.Api(store, lambda: 1000.0, None, o.ApiHost(publish=lambda: None,
                                                        change_ui=lambda change: asked.append(("local", change))))
    for call in (lambda: alone.api_ui({"host": "b", "order": ["s"]}),
                 lambda: alone.api_reply({"host": "b", "thread": "claude:x", "action": "approve"}),
                 lambda: alone.api_host_preview("b", "claude:x", 30)):
        with pytest.raises(o.ApiError) as e:
            call()
        assert e.value.status == 404
    assert not [a for a in asked if a[0] == "local"]  # the host's order never became this machine's


def test_hosts_in_ui_json_and_tmux_conf_are_checked():
    assert o.parse_hosts("devbox, gpu1  me@vm2 -oProxyCommand=x a:22 devbox") == (
        ["devbox", "gpu1", "me@vm2"], ["-oProxyCommand=x", "a:22"])
    assert o.validate_ui({"hosts": ["devbox", "me@vm2"]}) == {"hosts": ["devbox", "me@vm2"]}
    for bad in (["-oProxyCommand=touch /tmp/x"], ["a b"], ["h;x"], "devbox", ["x"] * 40):
        with pytest.raises(o.ApiError):
            o.validate_ui({"hosts": bad})
    ui, problems = o.load_ui({"hosts": ["ok", "-bad"]})
    assert ui["hosts"] == [] and any("ssh hosts" in p for p in problems)  # a bad list: none, and said


def remote_state(now_ms, stale_b=True):
    """A /state with this machine's session and two hosts, one of them unreachable."""
    def thread(host, session, tid, status, pane="%1"):
        return {"agent": "claude", "id": tid, "title": "t-" + tid, "status": status, "pane": pane, "alive": True,
                "unseen": status == "waiting", "updatedAt": 1, "host": host, "session": session}

    def session(host, name, threads, stale=False):
        return {"name": "%s:%s" % (host, name), "host": host, "remoteName": name, "hidden": False, "stale": stale,
                "windows": [{"id": "@1", "index": 0, "name": "w", "panes": [{"id": "%1", "command": "claude"}]}],
                "threads": threads, "metadata": {}}
    local = {"name": "main", "hidden": False, "windows": [{"id": "@1", "index": 0, "name": "sh",
                                                         "panes": [{"id": "%1"}]}], "threads": [],
             "metadata": {}}
    return {"sessions": [local,
                         session("gpu1", "train", [thread("gpu1", "gpu1:train", "g1", "waiting")]),
                         session("vm2", "api", [thread("vm2", "vm2:api", "v1", "running")], stale=stale_b)],
            "threads": [], "clients": [],
            "hosts": [{"name": "gpu1", "state": "connected"},
                      {"name": "vm2", "state": "unreachable", "reason": "connection refused",
                       "retryAt": now_ms + 12000}],
            "ui": {"collapsed": []}}


def test_the_sidebar_groups_hosts_greys_the_unreachable_and_folds():
    now = 1_000_000
    m = o.SidebarModel(own_session="main")
    m.set_state(remote_state(now))
    assert [i for i in m.items() if i[0] in ("host", "session")] == [
        ("session", "main"), ("host", "gpu1"), ("session", "gpu1:train"), ("host", "vm2"), ("session", "vm2:api")]
    rows = o.render(m, 70, 40, now=now)
    text = ["".join(t for t, _ in r[1]) for r in rows]
    assert any("unreachable: connection refused, retrying in 12 s" in line for line in text), text
    api = [r for r in rows if r[0] == ("session", "vm2:api")][0]
    assert all(style == "muted" for _, style in api[1]) and "api" in "".join(t for t, _ in api[1])
    train = [r for r in rows if r[0] == ("session", "gpu1:train")][0]
    assert "train" in "".join(t for t, _ in train[1]) and "gpu1:train" not in "".join(t for t, _ in train[1])
    assert m.number("main") == 1 and m.number("gpu1:train") is None  # prefix o N: this machine's sessions
    m.selected = ("host", "vm2")
    assert m.activate() == [("ui", {"collapsed": ["vm2"]})]
    st = remote_state(now)
    st["ui"]["collapsed"] = ["vm2"]
    m.set_state(st)
    assert ("session", "vm2:api") not in m.items() and ("host", "vm2") in m.items()
    assert any(line.strip().endswith("vm2 (1)") for line in
               ("".join(t for t, _ in r[1]) for r in o.render(m, 40, 40, now=now)))
    # Enter on a host's thread: a local window attached to it over ssh, its window and pane selected
    m.set_state(remote_state(now))
    m.selected = ("thread", "gpu1:train", "claude", "g1")
    assert m.activate() == [("remote", "gpu1", "train", "@1", "%1")]
    assert m.key("y") == [("reply", "claude:g1", "approve", None, "gpu1")]
    m.selected = ("session", "gpu1:train")
    assert m.key("x") == [] and "kill it there" in m.message
    assert m.key("J") == []  # gpu1 has one session: nothing to move
    assert m.key("\n") == [("remote", "gpu1", "train", None, None)]


def test_counts_and_the_tour_take_hosts_but_not_their_window_ids_nor_stale_hosts():
    st = remote_state(0)
    summary = o.status_summary(st)
    assert summary["global"]["@opensessions-waiting"] == "1"  # gpu1's wait counts
    assert summary["global"]["@opensessions-running"] == "0"  # vm2 is unreachable: its "running" is stale
    assert summary["windows"] == {}  # @1 here is not gpu1's @1
    queue = o.attention_queue(st)
    assert [(name, t["id"]) for name, t in queue] == [("gpu1:train", "g1")]
    dest, session, t = o.next_attention(queue, "%9", "main")
    assert dest == "gpu1:train\t%1" and t["host"] == "gpu1"
    assert o.next_attention(queue, "%9", "main", here_remote="gpu1:train") is None  # already there
    groups = o.popup_groups(st)
    assert groups == [("waiting", [("gpu1:train", st["sessions"][1]["threads"][0])])]
    # a restore's save links threads to this machine's panes by pid: a host's pids are not ours
    st["sessions"][0]["threads"] = [{"agent": "claude", "id": "m1", "pid": 7, "status": "idle"}]
    st["threads"] = [{"agent": "codex", "id": "h2", "pid": 7, "host": "gpu1"}, {"agent": "codex", "id": "m2"}]
    assert sorted(t["id"] for t in o.local_threads(st)) == ["m1", "m2"]


# -- real OpenSSH ----------------------------------------------------------------------------------

needs_ssh = pytest.mark.skipif(sshlab.missing() is not None, reason="real ssh: %s" % sshlab.missing())

ALIVE = "1"  # heartbeat seconds here (5 by default): a hung host is dropped within ~3 s


class World(object):
    """Hosts A and B (fake Claude agents), C (no python3 on PATH), D (its host key changed), E
    (accepts TCP, never answers), and one local server following all of them."""

    def __init__(self, tmp):
        self.lab = sshlab.SshLab()
        self.tmux = self.server = None
        try:
            self._build(tmp)
        except BaseException:  # a half-made world leaves no user, sshd or server behind
            self.close()
            raise

    def _build(self, tmp):
        self.env = Env(tmp)
        self.notify_log = os.path.join(self.env.base, "notify.log")
        bin_dir = os.path.join(self.env.base, "bin")
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, "notify-send"), "w") as f:
            f.write('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\n' % self.notify_log)
        os.chmod(os.path.join(bin_dir, "notify-send"), 0o755)
        self.env.vars = self.lab.env(self.env.vars)
        self.env.vars["PATH"] = bin_dir + os.pathsep + self.env.vars["PATH"]
        self.env.vars["OPENSESSIONS_REMOTE_ALIVE"] = ALIVE
        self.a = self.lab.add("hostA", "127.0.0.2")
        self.b = self.lab.add("hostB", "127.0.0.3")
        self.c = self.lab.add("hostC", "127.0.0.4", nopython=True)
        self.d = self.lab.add("hostD", "127.0.0.5", wrong_key=True)
        self.e = self.lab.add("hostE", "127.0.0.6", silent=True)
        self.sid_a, self.sid_b = str(uuid.uuid4()), str(uuid.uuid4())
        for h, sid in ((self.a, self.sid_a), (self.b, self.sid_b)):
            h.tmux("new-session", "-d", "-s", "work", "-x", "200", "-y", "50", "-c", h.path("proj"))
            self.agent(h, sid, "run")
        self.tmux = TmuxServer(self.env)
        self.tmux.new_session("main", cwd=self.env.home)
        self.tmux.run("set-option", "-g", "@opensessions-hosts", "hostA hostB hostC hostD hostE")
        self.server = ServerProc(self.env, self.tmux)

    def agent(self, h, sid, mode, name="agent"):
        """A fake Claude in a new window of the host's session `work` (exec: it is the pane's process)."""
        h.tmux("new-window", "-d", "-t", "=work:", "-n", name, "-c", h.path("proj"),
               "exec %s %s %s" % (h.path("bin", "claude"), sid, mode))

    def state(self):
        return self.server.state()

    def host(self, name, state=None):
        return next((h for h in (state or self.state())["hosts"] if h["name"] == name), {"name": name})

    def thread(self, host, tid, state=None):
        state = state or self.state()
        for t in [t for s in state["sessions"] for t in s["threads"]] + state["threads"]:
            if t.get("host") == host and t["id"] == tid:
                return t
        return None

    def ssh_children(self, alias):
        table = sshlab.proc_table()
        out = []
        for pid in sshlab.descendants(self.server.proc.pid, table):
            try:
                argv = open("/proc/%d/cmdline" % pid, "rb").read().split(b"\0")
            except OSError:
                continue
            if table[pid][1] == "ssh" and alias.encode() in argv:
                out.append(pid)
        return out

    def close(self):
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            try:
                if self.tmux is not None:
                    self.tmux.kill()
            finally:
                self.lab.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if sshlab.missing():
        pytest.skip("real ssh: %s" % sshlab.missing())
    w = World(str(tmp_path_factory.mktemp("remote")))
    try:
        retry_until(lambda: all(w.host(n).get("state") == "connected" and w.host(n)["lastEvent"]
                                for n in ("hostA", "hostB")), timeout=30)
        yield w
    finally:
        w.close()


@needs_ssh
def test_each_host_is_followed_over_one_ssh_with_the_program_shipped(world):
    state = world.state()
    a = world.host("hostA", state)
    assert a["state"] == "connected" and a["source"] == "tmux.conf" and a["python"] and a["tmux"]
    assert a["remoteVersion"] == o.__version__ and a["lastEvent"] and a["serverPid"]
    # one ssh process per host on this side, and nothing listening anywhere new (no -L)
    assert len(world.ssh_children("hostA")) == 1 and len(world.ssh_children("hostB")) == 1
    # zero-install: our own .pyz, into the host user's cache dir, checked by digest
    cache = world.a.path(".cache", "opensessions")
    pyz = [n for n in os.listdir(cache) if n.endswith(".pyz")]
    assert len(pyz) == 1 and os.stat(os.path.join(cache, pyz[0])).st_uid == world.a.uid
    with open(os.path.join(cache, pyz[0]), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest()[:16] == pyz[0][len("opensessions-"):-4]
    assert "sending it" in world.server.log() and "after sending the program" in world.server.log()
    # the host's server runs under the host user's default tmux server
    info = world.a.server_info()
    assert info and info["pid"] == a["serverPid"] and info["socket"] == "/tmp/tmux-%d/default" % world.a.uid
    # its sessions are this sidebar's, under the host; its threads keep everything
    names = [s["name"] for s in state["sessions"]]
    assert "main" in names and "hostA:work" in names and "hostB:work" in names
    t = retry_until(lambda: world.thread("hostB", world.sid_b), timeout=15)
    assert t["agent"] == "claude" and t["host"] == "hostB" and t["session"] == "hostB:work"
    assert t["link"] == "pid" and t["title"]


@needs_ssh
def test_a_damaged_copy_on_the_host_is_sent_again(world):
    cache = world.a.path(".cache", "opensessions")
    name = [n for n in os.listdir(cache) if n.endswith(".pyz")][0]
    with open(os.path.join(cache, name), "r+b") as f:
        f.seek(100)
        f.write(b"XXXX")
    sent = world.server.log().count("sending it")
    for pid in world.ssh_children("hostA"):  # the connection drops; the next one finds the copy damaged
        os.kill(pid, signal.SIGKILL)
    retry_until(lambda: world.server.log().count("sending it") > sent and world.host("hostA")["state"] == "connected",
                timeout=30)
    with open(os.path.join(cache, name), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest()[:16] == name[len("opensessions-"):-4]


@needs_ssh
def test_hosts_that_cannot_be_reached_say_why_and_when_they_retry(world):
    def reasons():
        st = world.state()
        hs = {n: world.host(n, st) for n in ("hostC", "hostD", "hostE")}
        return hs if all(h["state"] == "unreachable" for h in hs.values()) else None
    hs = retry_until(reasons, timeout=20)
    assert "python3 is not on PATH" in hs["hostC"]["reason"]
    assert "host key CHANGED; refused" in hs["hostD"]["reason"]
    assert hs["hostE"]["reason"] == "connection timed out"
    now = o.now_ms()
    for h in hs.values():
        assert h["retryAt"] and 0 <= h["retryAt"] - now <= 31000
    # the changed key was never accepted: no login happened, known_hosts kept its (other) key
    assert "Accepted publickey" not in world.d.sshd_log()
    with open(world.lab.known_hosts) as f:
        assert f.read().count("127.0.0.5") == 1
    out = world.server.cli("status").stdout.decode()
    assert "hostD" in out and "CHANGED" in out and "retrying in" in out
    # backoff: the next wait for a host that keeps failing is longer than the last
    first = world.host("hostC")["retryAt"]
    later = retry_until(lambda: (lambda h: h if h["retryAt"] != first and h["state"] == "unreachable" else None)(
        world.host("hostC")), timeout=20)
    assert later["retryAt"] - o.now_ms() > 1500  # 1 s, then 2 s, ...


def claude_record(sid, cwd, done=False):
    """A transcript record of the captured shapes (tests/fixtures/remote/claude-turn.jsonl)."""
    with open(os.path.join(HERE, "fixtures", "remote", "claude-turn.jsonl")) as f:
        recs = [json.loads(l) for l in f]
    rec = json.loads(json.dumps(recs[3] if done else recs[0]))
    rec["sessionId"] = sid
    if "cwd" in rec:
        rec["cwd"] = cwd
    t = time.time()
    rec["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)
    return json.dumps(rec) + "\n"


@needs_ssh
def test_a_host_transcript_append_reaches_local_events(world, sse):
    sid, cwd = str(uuid.uuid4()), world.a.path("proj")
    path = world.a.path(".claude", "projects", o.claude_project_dir_name(cwd), sid + ".jsonl")
    reader = sse(world.server.port)
    reader.next()
    with open(path, "a") as f:
        f.write(claude_record(sid, cwd))
    reader.wait_for(lambda st: (world.thread("hostA", sid, st) or {}).get("status") == "running", timeout=15)
    t0 = time.monotonic()
    with open(path, "a") as f:
        f.write(claude_record(sid, cwd, done=True))
    ev = reader.wait_for(lambda st: (world.thread("hostA", sid, st) or {}).get("status") == "done", timeout=15)
    assert ev["received"] > t0 and world.host("hostA", ev["data"])["lastEvent"]


@needs_ssh
def test_the_walk_wait_notify_approve_proceed(world):
    """Host B's agent waits -> a local notification -> the popup lists it under B -> approve over the
    same connection -> B's agent proceeds. (Enter: the next test.)"""
    sid = str(uuid.uuid4())
    world.agent(world.b, sid, "wait", name="walk")
    t = retry_until(lambda: (lambda t: t if t and t["status"] == "waiting" else None)(
        world.thread("hostB", sid)), timeout=20)
    assert t["detail"] == "permission prompt" and t["link"] == "pid"
    # a local notification, named with its host
    retry_until(lambda: os.path.exists(world.notify_log) and "needs you" in open(world.notify_log).read(),
                timeout=10)
    with open(world.notify_log) as f:
        line = [l for l in f if "needs you" in l][-1]
    assert "hostB:work" in line
    # the popup lists it (under its host's name)
    assert any(name == "hostB:work" and x["id"] == sid for _, rows in o.popup_groups(world.state())
               for name, x in rows)
    # `next` (prefix o n) goes there: a local window attached to host B
    out = world.server.cli("next")
    assert out.returncode == 0 and "hostB:work: claude waiting" in out.stdout.decode(), out.stderr
    wid = retry_until(lambda: [l.split()[0] for l in world.tmux.run(
        "list-windows", "-a", "-F", "#{window_id} #{@opensessions-remote}").splitlines() if l.endswith(" hostB:work")])
    world.tmux.run("kill-window", "-t", wid[0])
    # the preview is read by host B's server
    code, body = world.server.get("/api/preview?thread=claude:%s&host=hostB&lines=30" % sid)
    doc = json.loads(body)
    assert code == 200 and doc["host"] == "hostB" and any("Yes" in line for line in doc["lines"]), doc
    assert doc["prompt"] == "permission"  # what the screen asks, read by the host's agent spec
    # approve: sent to host B's server over the same ssh, which checks pane, process and screen
    code, body = world.server.post("/api/reply", {"host": "hostB", "thread": "claude:" + sid, "action": "approve"})
    assert code == 200 and body["host"] == "hostB" and body["answer"] == "“1. Yes”", body  # the host's own words
    assert body["sent"].startswith("approved once in Claude Code, pane ") and body["sent"].endswith("(on hostB)")
    keys_log = world.b.path("keys.log")
    retry_until(lambda: '"proceeded"' in open(keys_log).read(), timeout=10)
    assert [json.loads(l)["data"] for l in open(keys_log) if '"key"' in l] == ["1"]
    retry_until(lambda: world.thread("hostB", sid)["status"] == "done", timeout=15)
    # a refused reply says why, in the host's words, prefixed with the host
    code, body = world.server.post("/api/reply", {"host": "hostB", "thread": "claude:" + sid, "action": "approve"})
    assert code == 409 and body["error"].startswith("hostB: ") and "there is no permission to answer" in body["error"]
    code, body = world.server.post("/api/reply", {"host": "nohost", "thread": "x", "action": "approve"})
    assert code == 404
    world.b.tmux("kill-window", "-t", "=work:walk")


@needs_ssh
def test_a_wait_seen_through_an_attach_window_notifies_nothing(world):
    """Someone looks at host B's window here (a local client on our attach window, whose ssh client
    on B shows that window): B's agent waiting there is seen, not notified. A wait on host A, which
    nobody looks at, is (the sentinel: notifications go out in order)."""
    from conftest import AttachedClient
    wid = o.open_remote(world.tmux.tmux, [PYTHON, "-S", SCRIPT], "hostB", "work", here="main")
    client = AttachedClient(world.tmux, wid)
    try:
        retry_until(lambda: any(c["window"] == wid for c in world.state()["clients"]), timeout=15)
        retry_until(lambda: "0" in world.b.tmux_here("list-clients", "-F", "#{client_control_mode}").split(),
                    timeout=15)
        before = open(world.notify_log).read() if os.path.exists(world.notify_log) else ""
        seen, other = str(uuid.uuid4()), str(uuid.uuid4())
        world.b.tmux("new-window", "-t", "=work:", "-n", "seen", "-c", world.b.path("proj"),
                     "exec %s %s wait" % (world.b.path("bin", "claude"), seen))  # current: B's client shows it
        t = retry_until(lambda: (lambda t: t if t and t["status"] == "waiting" else None)(
            world.thread("hostB", seen)), timeout=20)
        assert t["unseen"] is False  # B's server saw its client there
        world.agent(world.a, other, "wait", name="other")
        retry_until(lambda: os.path.exists(world.notify_log) and "hostA:work" in open(world.notify_log).read()[len(before):],
                    timeout=15)
        waits = 0  # waits notified since: one line each, or counted in a coalesced "N agents need you"
        for line in open(world.notify_log).read()[len(before):].splitlines():
            m = re.search(r"(\d+) agents? needs? you", line)
            if m:
                waits += int(m.group(1))
            elif "needs you" in line:
                waits += 1
                assert "hostB:work" not in line, line
        assert waits == 1  # host A's only
    finally:
        client.close()
        world.tmux.run("kill-window", "-t", wid)
        world.b.tmux("kill-window", "-t", "=work:seen")
        world.a.tmux("kill-window", "-t", "=work:other")


@needs_ssh
def test_enter_opens_a_local_window_attached_to_the_hosts_pane(world):
    t = retry_until(lambda: world.thread("hostB", world.sid_b), timeout=15)
    state = world.state()
    s = next(x for x in state["sessions"] if x["name"] == "hostB:work")
    window = o.remote_thread_window(s, t["pane"])
    accepted = world.b.sshd_log().count("Accepted publickey")
    wid = o.open_remote(world.tmux.tmux, [PYTHON, "-S", SCRIPT], "hostB", "work", window, t["pane"], here="main")
    assert world.tmux.run("show-options", "-wqv", "-t", wid, "@opensessions-remote").strip() == "hostB:work"
    assert world.tmux.run("display-message", "-p", "-t", wid, "#{window_name}").strip() == "hostB:work"
    # host B has a tmux client now, on the thread's window and pane
    want = ["work", window, t["pane"]]
    retry_until(lambda: world.b.tmux_here("list-clients", "-F", "#{client_session} #{window_id} #{pane_id}").split()[:3]
                == want, timeout=15)
    # the attach reused the server's connection (ControlMaster): no new login on host B
    assert world.b.sshd_log().count("Accepted publickey") == accepted
    # a second Enter finds that window instead of opening another
    assert o.open_remote(world.tmux.tmux, [PYTHON, "-S", SCRIPT], "hostB", "work", here="main") == wid
    world.tmux.run("kill-window", "-t", wid)
    retry_until(lambda: "0" not in world.b.tmux_here("list-clients", "-F", "#{client_control_mode}").split(),
                timeout=10)  # only the host server's own control client is left


@needs_ssh
def test_the_hosts_server_killed_is_restarted_and_resynced(world):
    before = world.host("hostA")["serverPid"]
    os.kill(before, signal.SIGKILL)
    h = retry_until(lambda: (lambda h: h if h["serverPid"] not in (None, before) and not h["note"] else None)(
        world.host("hostA")), timeout=20)
    assert h["state"] == "connected"
    assert "restarted (pid %d -> %d)" % (before, h["serverPid"]) in world.server.log()
    retry_until(lambda: world.thread("hostA", world.sid_a), timeout=15)


@needs_ssh
def test_sshd_hung_mid_stream_slows_nothing_else_and_is_caught_up_after(world, sse):
    world.a.stop()
    try:
        t0 = time.monotonic()
        code, body = world.server.get("/health")
        assert code == 200 and time.monotonic() - t0 < 2.0
        assert json.loads(body)["hosts"]["followed"] == 5
        # the other host still streams: an append on B reaches /events
        reader = sse(world.server.port)
        reader.next()
        sid, cwd = str(uuid.uuid4()), world.b.path("proj")
        with open(world.b.path(".claude", "projects", o.claude_project_dir_name(cwd), sid + ".jsonl"), "a") as f:
            f.write(claude_record(sid, cwd))
        reader.wait_for(lambda st: world.thread("hostB", sid, st), timeout=15)
        h = retry_until(lambda: (lambda h: h if h["state"] != "connected" else None)(world.host("hostA")), timeout=20)
        assert h["state"] == "connecting" or any(w in h["reason"] for w in ("stopped answering", "timed out")), h["reason"]
        st = world.state()
        a_sessions = [s for s in st["sessions"] if s.get("host") == "hostA"]
        assert a_sessions and all(s["stale"] for s in a_sessions)  # greyed and kept
        assert world.host("hostB", st)["state"] == "connected"
    finally:
        world.a.cont()
    h = retry_until(lambda: (lambda h: h if h["state"] == "connected" and not h["note"] and h["lastEvent"] else None)(
        world.host("hostA")), timeout=40)
    assert not any(s.get("stale") for s in world.state()["sessions"] if s.get("host") == "hostA")


@needs_ssh
def test_sshd_killed_then_back_reconnects_and_resyncs(world):
    world.a.kill()
    h = retry_until(lambda: (lambda h: h if h["state"] == "unreachable" else None)(world.host("hostA")), timeout=20)
    assert h["reason"]
    assert [s for s in world.state()["sessions"] if s.get("host") == "hostA"]  # kept, greyed
    world.a.start()
    back = time.monotonic()
    h = retry_until(lambda: (lambda h: h if h["state"] == "connected" and h["lastEvent"] else None)(
        world.host("hostA")), timeout=40)
    assert time.monotonic() - back < 35
    assert len(world.ssh_children("hostA")) == 1


@needs_ssh
def test_hosts_command_adds_lists_and_removes(world):
    out = world.server.cli("hosts", "add", "-oProxyCommand=touch /tmp/x")
    assert out.returncode != 0 and b"not a host" in out.stderr
    out = world.server.cli("hosts", "remove", "hostA")
    assert out.returncode != 0 and b"@opensessions-hosts" in out.stderr
    assert world.server.cli("hosts", "add", "newhost").returncode == 0
    h = retry_until(lambda: (lambda h: h if h["state"] == "unreachable" else None)(world.host("newhost")), timeout=20)
    assert h["source"] == "ui.json" and h["reason"] == "unknown host name"
    listed = world.server.cli("hosts").stdout.decode()
    assert "newhost" in listed and "hostA" in listed and "connected" in listed
    with open(os.path.join(world.env.home, ".config", "opensessions", "ui.json")) as f:
        assert json.load(f)["hosts"] == ["newhost"]
    assert world.server.cli("hosts", "remove", "newhost").returncode == 0
    retry_until(lambda: all(h["name"] != "newhost" for h in world.state()["hosts"]))
    assert world.ssh_children("newhost") == []


@needs_ssh
def test_hostile_names_from_a_host_stay_text(world):
    evil = "#(touch /tmp/pwned-%s);x'y" % world.lab.tag
    world.b.tmux("new-session", "-d", "-s", o.tmux_literal(evil))  # (new-session -s expands formats)
    name = o.remote_session_name(evil)
    s = retry_until(lambda: next((x for x in world.state()["sessions"] if x.get("remoteName") == name), None),
                    timeout=15)
    assert s["host"] == "hostB"
    wid = o.open_remote(world.tmux.tmux, [PYTHON, "-S", SCRIPT], "hostB", name, here="main")
    assert world.tmux.run("display-message", "-p", "-t", wid, "#{window_name}").strip() == "hostB:" + name
    retry_until(lambda: name in world.b.tmux_here("list-clients", "-F", "#{client_session}").splitlines(), timeout=15)
    world.tmux.run("kill-window", "-t", wid)
    assert not os.path.exists("/tmp/pwned-%s" % world.lab.tag)
    world.b.tmux("kill-session", "-t", "=" + evil)


FAKE_SSH = r'''#!%(python)s
"""A host that sends hostile frames (this stands in for ssh: the server runs `ssh ... HOST CMD`)."""
import json, sys, time
w = sys.stdout.buffer.write
w(b"Welcome! (a chatty .bashrc)\n")
w(json.dumps({"t": "hello", "proto": 1, "version": "9" * 100, "digest": "\x1b[2J", "python": 3,
              "tmux": "3.3a"}).encode() + b"\n")
w(b"{" * 50000 + b"\n")
w(b'{"t": "state", "state": {"sessions": [' + b"1," * 4500000 + b"1]}}\n")  # 9 MB: over the cap, dropped
w(b'{"t": "state", "server": {"pid": "x"}, "state": {"sessions": [{"name": "ok\\u0007", "threads": '
  b'[{"agent": "claude", "id": "t1", "status": "waiting", "title": "#(id)", "updatedAt": 1e999}]}]}}\n')
w(b'{"t": "res", "id": 99, "status": 1000}\n{"t": "unknown"}\n{"t": "ping"}\n')
sys.stdout.flush()
sys.stdin.read()
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux")
def test_hostile_frames_from_a_host_are_capped_and_checked(env, tmux, tmp_path):
    bin_dir = str(tmp_path / "fakebin")
    os.makedirs(bin_dir)
    with open(os.path.join(bin_dir, "ssh"), "w") as f:
        f.write(FAKE_SSH % {"python": PYTHON})
    os.chmod(os.path.join(bin_dir, "ssh"), 0o755)
    env.vars["PATH"] = bin_dir + os.pathsep + env.vars["PATH"]
    tmux.run("set-option", "-g", "@opensessions-hosts", "evil")
    server = ServerProc(env, tmux)
    try:
        s = retry_until(lambda: next((x for x in server.state()["sessions"] if x.get("host") == "evil"), None),
                        timeout=15)
        assert s["name"] == "evil:ok " and s["threads"][0]["title"] == "#(id)" and s["threads"][0]["updatedAt"] == 0
        h = server.state()["hosts"][0]
        assert h["state"] == "connected" and h["remoteVersion"] == "9" * 40 and h["python"] is None
        assert h["badFrames"] >= 3 and h["serverPid"] is None  # the banner, the "{{{...", the 9 MB line
        code, _ = server.get("/health")
        assert code == 200
    finally:
        server.stop()


def test_the_relay_streams_state_and_answers_only_its_requests(server, tmux):
    """`opensessions relay` as ssh would run it (here without ssh): hello, then the host server's
    snapshots as frames; its fixed requests are answered through that server's API, others refused."""
    relay = subprocess.Popen([PYTHON, SCRIPT, "-S", tmux.socket, "relay", "--alive", "0.5"], env=server.vars,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        reader = o.FrameReader()
        frames = []

        def until(pred):
            def look():
                os.set_blocking(relay.stdout.fileno(), False)
                try:
                    data = relay.stdout.read()
                except (BlockingIOError, TypeError):
                    data = None
                frames.extend(reader.feed(data or b""))
                return next((f for f in frames if pred(f)), None)
            return retry_until(look, timeout=15)
        hello = until(lambda f: f["t"] == "hello")
        assert hello["version"] == o.__version__ and hello["proto"] == o.RELAY_PROTOCOL and hello["tmux"]
        st = until(lambda f: f["t"] == "state")
        assert st["server"]["pid"] == server.proc.pid and [s["name"] for s in st["state"]["sessions"]] == ["main"]
        for req in ({"t": "req", "id": 1, "op": "set-status", "body": {"session": "main", "text": "x"}},
                    {"t": "req", "id": 2, "op": "ui", "body": {"theme": "nord"}},
                    {"t": "req", "id": 3, "op": "reply", "body": {"thread": "nope", "action": "approve"}},
                    {"t": "req", "id": 4, "op": "ui", "body": {"width": 5}}):
            relay.stdin.write(json.dumps(req).encode() + b"\n")
        relay.stdin.write(b"x" * (o.REMOTE_MAX_REQUEST + 10) + b"\n")  # too long: skipped, no answer
        relay.stdin.flush()
        answers = {f["id"]: f for f in (until(lambda f, i=i: f["t"] == "res" and f["id"] == i) for i in (1, 2, 3, 4))}
        assert answers[1]["status"] == 400 and "only reply, preview, ui" in answers[1]["body"]["error"]
        assert answers[2]["status"] == 204 and server.state()["ui"]["theme"] == "nord"
        assert answers[3]["status"] == 404
        assert answers[4]["status"] == 400 and "width" in answers[4]["body"]["error"]
        assert server.session("main")["metadata"]["status"] is None  # set-status never reached the server
        until(lambda f: f["t"] == "ping")  # the heartbeat, while nothing changes
        relay.stdin.close()  # the connection closed: the relay ends
        assert relay.wait(10) == 0
    finally:
        end_process(relay)


def test_resurrect_brings_back_ssh_attach_windows(env, tmux, tmp_path):
    rdir = str(tmp_path / "resurrect")
    tmux.run("set-option", "-g", "@resurrect-dir", rdir)
    tmux.run("new-window", "-t", "=main:", "-n", "gpu1:train")
    wid = tmux.run("display-message", "-p", "-t", "=main:1", "#{window_id}").strip()
    tmux.run("set-option", "-w", "-t", wid, "@opensessions-remote", "gpu1:train")
    cli = lambda *a: subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket] + list(a), env=env.vars,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert cli("save").returncode == 0
    pointer = os.path.realpath(os.path.join(rdir, "opensessions_last"))
    with open(pointer) as f:
        doc = json.load(f)
    assert doc["remote"] == [{"session": "main", "window": 1, "paneIndex": 0, "host": "gpu1",
                              "remoteSession": "train"}]
    tmux.run("kill-window", "-t", wid)
    tmux.run("new-window", "-d", "-t", "=main:1", "-n", "gpu1:train")  # as resurrect rebuilds it: a shell
    dry = cli("restore", "--dry-run").stdout.decode()
    assert "=main:1.0\t" in dry and dry.rstrip().endswith("ssh-attach gpu1 train")
    assert cli("restore").returncode == 0
    pane = tmux.run("display-message", "-p", "-t", "=main:1.0", "#{pane_id}").strip()
    assert tmux.run("show-options", "-wqv", "-t", pane, "@opensessions-remote").strip() == "gpu1:train"
    # typed (the log says what), and run: the screen shows the line, or once ssh to gpu1 (not a real
    # host) failed, the reset screen and what ssh-attach says then (a look for the line alone raced)
    log_path = os.path.join(env.home, ".local", "state", "opensessions", "opensessions.log")
    command = dry.rstrip().split("\t", 1)[1]
    assert "restore: =main:1.0: %s" % command in open(log_path).read()
    retry_until(lambda: (lambda screen: "ssh-attach gpu1 train" in screen or "ssh gpu1 exited with status" in screen)(
        tmux.run("capture-pane", "-p", "-t", pane)), timeout=10)
    # a second restore types nothing more
    assert cli("restore").returncode == 0
    log = open(log_path).read()
    assert "already attached to gpu1:train" in log
    # a record that does not check out (an ssh option for a host) is skipped, with its reason
    doc["remote"].append({"session": "main", "window": 1, "paneIndex": 0, "host": "-oProxyCommand=x",
                          "remoteSession": "a"})
    with open(pointer, "w") as f:
        json.dump(doc, f)
    assert cli("restore").returncode == 0
    assert "does not check out" in open(os.path.join(env.home, ".local", "state", "opensessions",
                                                     "opensessions.log")).read()
