"""Issue 12: loud failures, promises checked (the .pyz, old Pythons, macOS paths), rules that tests pin."""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, retry_until


def _clone(tmp_path):
    for name in ("opensessions.py", "build_zipapp.py"):
        shutil.copy(os.path.join(ROOT, name), str(tmp_path / name))
    return str(tmp_path / "dist" / "opensessions.pyz")


def _build(tmp_path, *extra, env=None):
    return subprocess.run([PYTHON, str(tmp_path / "build_zipapp.py")] + list(extra), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True).stdout


def test_pyz_is_identical_whatever_the_hash_seed(tmp_path):
    out = _clone(tmp_path)
    digests = set()
    for seed in ("1", "2", "random"):
        _build(tmp_path, env=dict(os.environ, PYTHONHASHSEED=seed))
        with open(out, "rb") as f:
            digests.add(f.read())
    assert len(digests) == 1


def test_if_stale_rebuilds_for_another_python_and_for_new_source(tmp_path):
    out = _clone(tmp_path)
    assert _build(tmp_path, "--if-stale").strip() == out.encode()  # missing: built
    assert _build(tmp_path, "--if-stale") == b""  # current: left alone
    # a Python upgrade: the bytecode inside carries another interpreter's magic number
    with zipfile.ZipFile(out) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    entries["opensessions.pyc"] = b"\x00\x00\r\n" + entries["opensessions.pyc"][4:]
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in entries.items():
            zf.writestr(n, data)
    assert _build(tmp_path, "--if-stale").strip() == out.encode()
    with zipfile.ZipFile(out) as zf:
        assert zf.read("opensessions.pyc")[:4] == importlib.util.MAGIC_NUMBER
    assert _build(tmp_path, "--if-stale") == b""
    with open(str(tmp_path / "opensessions.py"), "a") as f:
        f.write("\n# an update\n")
    assert _build(tmp_path, "--if-stale").strip() == out.encode()


def _run(env, argv, extra=None, stdin=None):
    vars_ = dict(env.vars, **(extra or {}))
    vars_.pop("TMUX", None)
    return subprocess.run([PYTHON, SCRIPT] + argv, env=vars_, input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


@pytest.mark.parametrize("argv,extra", [
    (["kitty"], None), (["next"], None), (["layout"], None), (["toggle"], None), (["tmux-setup"], None),
    (["uninstall-tmux"], None), (["focus"], None), (["switch", "1"], None),
    (["--port", "99999", "status"], None), (["status", "--port", "-3"], None),
    (["server"], {"OPENSESSIONS_RECENT_DAYS": "abc"}), (["server"], {"OPENSESSIONS_LIST_HOURS": "-1"}),
    (["status"], {"OPENSESSIONS_PORT": "abc"}), (["start"], {"OPENSESSIONS_PORT": "70000"}),
])
def test_user_failures_are_one_line_and_non_zero(env, argv, extra):
    """Without a tmux server (or with a bad setting): one line, no traceback, no doubled prefix."""
    r = _run(env, ["-S", os.path.join(env.base, "no-tmux.sock")] + argv, extra)
    err = r.stderr.decode()
    assert r.returncode != 0, (argv, err)
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("opensessions: ") and "opensessions: opensessions:" not in err, err
    if extra:
        assert list(extra)[0] in err


def test_port_from_the_environment_is_used_not_ignored(env):
    assert os_.env_port({"OPENSESSIONS_PORT": "8123"}) == 8123
    assert os_.env_port({"OPENSESSIONS_PORT": ""}) is None
    assert os_.find_server("/nonexistent/sock", {"OPENSESSIONS_PORT": "8123", "XDG_RUNTIME_DIR": env.base})[0] == 8123
    for bad in ("abc", "-1", "65536", "1.5"):
        with pytest.raises(os_.OpensessionsError, match="OPENSESSIONS_PORT=" + re_escape(bad)):
            os_.env_port({"OPENSESSIONS_PORT": bad})


def re_escape(s):
    import re
    return re.escape(s)


def test_hook_never_fails_the_agent_and_writes_bugs_to_a_bounded_log(env):
    log_path = os.path.join(env.home, ".local/state/opensessions/hook.log")
    # no server: nothing to tell, nothing wrong, nothing logged
    r = _run(env, ["-S", os.path.join(env.base, "x.sock"), "hook", "claude"],
             stdin=b'{"hook_event_name": "Stop", "session_id": "0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11"}')
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    assert not os.path.exists(log_path)
    # a payload that is not JSON (a bug on one side or the other): exit 0, silent, written down
    r = _run(env, ["-S", os.path.join(env.base, "x.sock"), "hook", "codex"], stdin=b"{not json")
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    with open(log_path) as f:
        text = f.read()
    assert "hook codex failed" in text and "Traceback" in text
    # bounded: many failures never grow it past the limit, and the newest one is kept
    envd = dict(env.vars)
    for i in range(200):
        os_.hook_log("failure %d %s" % (i, "x" * 300), envd, limit=8192)
    assert os.path.getsize(log_path) <= 8192
    with open(log_path) as f:
        lines = f.read().splitlines()
    assert lines[-1].split(" ")[2] == "199" and all(l.count(" ") >= 2 for l in lines)


def test_stop_control_kills_a_client_that_ignores_sigterm(capsys):
    proc = subprocess.Popen([PYTHON, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"

    class Loop(object):
        def remove_reader(self, fd):
            pass

    control = os_.ControlClient(None, Loop(), {}, None, None)
    control.proc = proc
    control.stop(grace=0.2)
    assert control.proc is None and not control.running
    assert proc.poll() == -9  # killed, not left running
    assert "ignored SIGTERM" in capsys.readouterr().err


class FakeLoop(object):
    def __init__(self):
        self.timers = []

    def call_later(self, delay, fn, *args):
        self.timers.append((delay, fn, args))

    def add_reader(self, fd, fn):
        pass


class FakeServer(object):
    def __init__(self):
        self.loop = FakeLoop()
        self.after = 0

    def after_watchers(self):
        self.after += 1


def _watchers(tmp_path):
    server = FakeServer()
    w = os_.AgentWatchers(server, {"HOME": str(tmp_path / "home"), "OPENSESSIONS_WATCH": "poll"})
    return server, w


def _scan(server):
    """Run the one scan that is due, as the event loop would."""
    assert len(server.loop.timers) == 1, server.loop.timers
    _, fn, args = server.loop.timers.pop()
    fn(*args)


def test_poll_mode_survives_a_failing_handler_and_reports_deletions(tmp_path, capsys):
    server, w = _watchers(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    seen = []

    def broken(directory, name, mask):
        raise ValueError("a bug in one handler")

    def record(directory, name, mask):
        seen.append((name, mask & (os_.IN_CREATE | os_.IN_MODIFY | os_.IN_DELETE)))
    w.poll_dir(str(a), broken)
    w.poll_dir(str(b), record)
    (a / "x.json").write_text("{}")
    (b / "y.json").write_text("{}")
    _scan(server)
    assert seen == [("y.json", os_.IN_CREATE)]
    assert "a bug in one handler" in capsys.readouterr().err
    (b / "y.json").write_text("{} ")
    _scan(server)  # still scanning after the failure: rescheduled every time
    assert seen[-1] == ("y.json", os_.IN_MODIFY)
    (b / "y.json").unlink()
    _scan(server)
    assert seen[-1] == ("y.json", os_.IN_DELETE)
    _scan(server)
    assert len(seen) == 3 and server.after == 3  # a scan that finds nothing tells the server nothing


def test_poll_mode_reschedules_even_when_after_watchers_fails(tmp_path, capsys):
    server, w = _watchers(tmp_path)
    w.poll_dir(str(tmp_path), lambda *a: None)

    def boom():
        raise RuntimeError("apply step failed")
    server.after_watchers = boom
    (tmp_path / "one").write_text("")
    _scan(server)
    (tmp_path / "two").write_text("")
    _scan(server)
    assert capsys.readouterr().err.count("RuntimeError: apply step failed") == 2


def test_a_failed_inotify_watch_falls_back_to_polling_that_directory(tmp_path, capsys):
    import errno
    server, w = _watchers(tmp_path)

    class NoWatchesLeft(object):
        fd = -1

        def add_watch(self, path, mask):
            raise OSError(errno.ENOSPC, "No space left on device")
    w.inotify = NoWatchesLeft()
    d = tmp_path / "sessions"
    d.mkdir()
    seen = []
    w.watch_dir(str(d), lambda directory, name, mask: seen.append((name, mask & os_.IN_DELETE)))
    w.watch_dir(str(tmp_path / "missing" / "dir"), lambda *a: seen.append(a))
    assert set(w.polled_dirs) == {str(d), str(tmp_path / "missing" / "dir")} and not w.pending_dirs
    assert "scanning it by stat" in capsys.readouterr().err
    (d / "1.json").write_text("{}")
    _scan(server)
    (d / "1.json").unlink()
    _scan(server)
    assert seen == [("1.json", 0), ("1.json", os_.IN_DELETE)]


# -- four rules the suite did not pin: each test below fails when its rule is removed ---------------

def test_rule_only_the_first_retry_notifies():
    on = list(os_.NOTIFY_STATUSES)

    def retry(attempt, old):
        return os_.should_notify(os_.Thread("opencode", "ses_1", status="retry", attempt=attempt), old,
                                 viewed=False, muted=False, notify_on=on)
    assert retry(1, "running") and retry(None, "running")
    assert not retry(2, "running")  # a later attempt seen first (e.g. after a restart): not news
    assert not retry(3, "waiting")
    assert not retry(2, "retry")


def test_rule_publish_skips_when_nothing_changed():
    store = os_.Store(clock=lambda: 1000.0)
    assert store.publish() is True
    version, doc, body = store.published
    store.touch()  # marked dirty, but the document is the same
    assert store.publish() is False
    assert store.version == version and store.published[1] is doc  # readers are not woken for nothing
    store.ui = dict(store.ui, width=store.ui.get("width", 30) + 1)
    store.touch()
    assert store.publish() is True and store.version == version + 1


def _bare_server(tmp_path, clock=lambda: 1000.0):
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path)}
    return os_.Server(os_.Tmux(str(tmp_path / "no.sock")), 0, False, env, clock=clock)


def test_rule_metadata_is_evicted_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(os_, "MAX_METADATA_SESSIONS", 3)
    s = _bare_server(tmp_path)
    try:
        s.store.sessions = [{"name": "live"}]
        for name in ("live", "gone-a", "gone-b"):
            s.api.api_set_status({"session": name, "text": "x"})
        assert len(s.store.metadata) == 3
        s.api.api_set_status({"session": "new", "text": "y"})
        # full: the metadata of sessions that no longer exist goes; a live session's stays
        assert set(s.store.metadata) == {"live", "new"}
    finally:
        s.loop.close()


def test_rule_an_active_status_clears_unseen(tmp_path):
    s = _bare_server(tmp_path)
    try:
        s.apply_thread_update("claude", "t1", status="running", alive=True)
        s.publish()
        t = s.apply_thread_update("claude", "t1", status="done")
        s.publish()
        assert t.unseen  # finished while nobody looked
        for active in os_.ACTIVE_STATUSES:
            s.apply_thread_update("claude", "t1", status="done")
            s.publish()
            assert t.unseen
            s.apply_thread_update("claude", "t1", status=active)
            s.publish()
            assert not t.unseen, active  # working again: what it finished before is old news
    finally:
        s.loop.close()


class Clock(object):
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


def _notifier(clock, window=2.0):
    class Store(object):
        ui = {"notify": ["terminal"], "notifyOn": list(os_.NOTIFY_STATUSES), "muted": []}
        clients = []

    class Srv(object):
        store = Store()
        loop = FakeLoop()

        def is_viewed(self, thread):
            return False
    srv = Srv()
    return srv, os_.Notifier(srv, clock=clock, window=window)


def test_coalescing_window_with_an_injected_clock_sends_nothing_more():
    clock = Clock()
    srv, n = _notifier(clock, window=30.0)

    def change(tid, status):
        n.thread_changed(os_.Thread("claude", tid, title=tid, status=status, session="main"), "running")
    change("a", "done")
    assert [x[2] for x in n.sent] == ["claude finished"]  # the first goes out at once
    clock.t += 10
    change("b", "error")
    change("c", "done")
    assert len(n.sent) == 1  # held: the window is open
    ((delay, flush, _),) = srv.loop.timers
    assert delay == 30.0  # scheduled for the window's end, not polled
    srv.loop.timers.clear()
    clock.t = 130.0
    flush()
    assert [x[2] for x in n.sent] == ["claude finished", "1 agent failed, 1 agent finished"]
    # the flush opened a quiet window; with nothing held, its end sends nothing more, ever
    ((delay, flush, _),) = srv.loop.timers
    srv.loop.timers.clear()
    clock.t += delay + 3600
    flush()
    assert len(n.sent) == 2 and srv.loop.timers == []


# -- the macOS paths (no /proc: ps and lsof; osascript; polling above), on Linux by injection ----

PS_TABLE = """  100     1 -zsh
  200   100 /usr/local/bin/claude
  201   200 node
  300     1 /bin/zsh
  301   300 vite
"""
LSOF = """p201
n127.0.0.1:5173
n*:9229
p301
n192.168.1.5:8080
n[::1]:3000
"""


def fake_macos(calls):
    def run(argv):
        calls.append(argv)
        if argv[:2] == ["ps", "-axo"]:
            return PS_TABLE
        if argv[:3] == ["ps", "-o", "args="]:
            return {"200": "/usr/local/bin/claude --resume 0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11 'a b'\n"}.get(argv[-1], "")
        if argv[0] == "lsof":
            return LSOF
        raise OSError("no %s here" % argv[0])
    return run


def test_probes_without_proc_use_ps_and_lsof(tmp_path):
    calls = []
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=fake_macos(calls))
    assert not probes.has_proc and probes.listening() is None and probes.open_files(200) == []
    table = probes.processes()
    assert {p: (t.ppid, t.comm) for p, t in table.items()} == {
        100: (1, "-zsh"), 200: (100, "claude"), 201: (200, "node"), 300: (1, "zsh"), 301: (300, "vite")}
    assert probes.args(200) == ["/usr/local/bin/claude", "--resume", "0d3b3f4e-5f4e-4b8e-9a51-5f0c2c1a7e11", "a b"]
    assert probes.ports({"s1": [100, 200, 201], "s2": [300, 301]}) == {"s1": [5173, 9229], "s2": [3000]}
    assert ["lsof", "-nP", "-a", "-iTCP", "-sTCP:LISTEN", "-Fpn", "-p", "100,200,201,300,301"] in calls
    # neither ps nor lsof: empty answers, never an exception
    def missing(argv):
        raise OSError("%s: not found" % argv[0])
    none = os_.SystemProbes(proc_root=str(tmp_path), run=missing)
    assert none.processes() == {} and none.args(1) == [] and none.ports({"s": [1]}) == {}


def test_server_links_agents_and_ports_through_injected_probes(tmp_path):
    calls = []
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=fake_macos(calls))
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path)}
    s = os_.Server(os_.Tmux(str(tmp_path / "no.sock")), 0, False, env, clock=lambda: 1000.0, probes=probes)
    try:
        s.store.sessions = [
            {"id": "$1", "name": "api", "windows": [{"id": "@1", "panes": [{"id": "%1", "pid": 100}]}]},
            {"id": "$2", "name": "web", "windows": [{"id": "@2", "panes": [{"id": "%2", "pid": 300}]}]}]
        s._read_processes()
        assert s.pane_agents["%1"][:2] == ("claude", 200) and "%2" not in s.pane_agents
        assert s.pane_of_pid[201] == "%1" and s.pane_of_pid[301] == "%2"
        assert s._processes_read_at == 1000.0  # the injected clock, not the machine's
        s._update_ports()
        assert s.store.ports == {"$1": [5173, 9229], "$2": [3000]}
        assert not any("/proc" in " ".join(c) for c in calls)
    finally:
        s.loop.close()


def test_desktop_notification_on_macos_runs_osascript(tmp_path):
    log = tmp_path / "osascript.log"
    exe = tmp_path / "osascript"
    exe.write_text('#!/bin/sh\nprintf "%%s\\n" "$*" >> %s\n' % shlex_quote(str(log)))
    exe.chmod(0o755)
    srv, n = _notifier(Clock())
    n.platform = "darwin"
    n.which = lambda name: str(exe) if name == "osascript" else None
    n._desktop('say "hi"', "done \\ ok", "done", [])
    proc = n.running[0][0]
    proc.wait(10)
    assert log.read_text() == '-e display notification "done \\\\ ok" with title "say \\"hi\\""\n'
    n.which = lambda name: None
    with pytest.raises(OSError, match="osascript"):
        n._desktop("t", "b", "done", [])


def shlex_quote(s):
    import shlex
    return shlex.quote(s)


def test_claude_registry_match_is_pure():
    e = {"pid": 42, "sessionId": "x", "procStart": 777}
    assert os_.claude_registry_matches(e, True, 777)
    assert not os_.claude_registry_matches(e, True, 778)  # the pid was reused by another process
    assert not os_.claude_registry_matches(e, True, -1)  # gone between the two looks
    assert not os_.claude_registry_matches(e, False, 777)
    assert os_.claude_registry_matches(e, True, None)  # no /proc (macOS): the pid is all we know
    assert os_.claude_registry_matches(dict(e, procStart=None), True, 5)
    me = {"pid": os.getpid(), "procStart": os_.process_start(os.getpid())}
    assert os_.claude_registry_alive(me) and not os_.claude_registry_alive(dict(me, procStart=me["procStart"] + 1))


def test_bench_row_not_measured_is_skipped_not_failed():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(ROOT, "bench", "run.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.Results()
    res.add("measured", "w", [10.0, 12.0], "ms", 60, "<=")
    res.add("not measured in quick mode", "w", [], "ms", 60, "<=")
    res.add("missed", "w", [100.0], "ms", 60, "<=")
    assert [r["pass"] for r in res.rows] == [True, None, False]
    lines = res.table().splitlines()
    assert "skip" in lines[3] and "MISS" not in lines[3] and "MISS" in lines[4]


def test_hook_finds_its_agent_without_proc(tmp_path):
    """macOS: the hook's shell (pid 202, under node 201) finds the agent above it with one ps table."""
    calls = []
    table = PS_TABLE + "  202   201 sh\n"

    def run(argv):
        calls.append(argv)
        return table if argv[:2] == ["ps", "-axo"] else fake_macos([])(argv)
    probes = os_.SystemProbes(proc_root=str(tmp_path), run=run)
    assert os_._agent_ancestor("claude", 202, probes) == 200
    assert os_._agent_ancestor("codex", 202, probes) is None
    assert [c[:2] for c in calls].count(["ps", "-axo"]) == 2  # one table per hook call
    assert all(c[-1] in ("200", "201") for c in calls if c[:3] == ["ps", "-o", "args="])  # args of agent-named only


def test_hook_finds_its_agent_with_proc(tmp_path):
    from conftest import fake_agents
    bin_dir = fake_agents(str(tmp_path / "bin"), names=("codex",))
    agent = subprocess.Popen([os.path.join(bin_dir, "codex")], stdin=subprocess.PIPE)
    try:
        assert os_._agent_ancestor("codex", agent.pid) == agent.pid
        assert os_._agent_ancestor("claude", agent.pid) is None
        assert os_._agent_ancestor("codex", os.getpid()) is None  # pytest is no agent, nor its parents
    finally:
        agent.stdin.close()
        agent.wait(10)
