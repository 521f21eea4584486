"""Smaller things a user hits (issue 10 §6), and the pure parts of §3-§5."""
import json
import os
import sys

import opensessions as os_
from conftest import PYTHON, ROOT, SCRIPT, retry_until
from test_notify import fake_notify_send, nserver  # noqa: F401 (fixtures)


def test_same_source_is_the_same_version(tmp_path):
    sys.path.insert(0, ROOT)
    import build_zipapp
    pyz = build_zipapp.build(str(tmp_path / "opensessions.pyz"))
    assert os_.program_digest(SCRIPT) == os_.program_digest(pyz) == \
        os_.program_digest(os.path.join(pyz, "opensessions.py"))
    changed = tmp_path / "opensessions.py"
    changed.write_bytes(open(SCRIPT, "rb").read() + b"\n# edited\n")
    assert os_.program_digest(str(changed)) != os_.program_digest(SCRIPT)


def test_an_ambiguous_project_dir_is_not_a_match(server, tmux, env):
    tmux.new_session("other", cwd=env.home)  # main and other both sit in HOME
    retry_until(lambda: [p["cwd"] for w in (server.session("other") or {"windows": []})["windows"]
                         for p in w["panes"]] == [env.home])
    status, body = server.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "T-a",
                                                    "projectDir": env.home + "/sub"})
    assert (status, body) == (202, {"matched": False})
    proj = os.path.join(env.home, "proj")
    os.makedirs(proj)
    tmux.new_session("proj", cwd=proj)
    retry_until(lambda: [p["cwd"] for w in (server.session("proj") or {"windows": []})["windows"]
                         for p in w["panes"]] == [proj])
    assert server.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "T-b",
                                            "projectDir": proj + "/x"})[0] == 204
    assert [t["id"] for t in server.session("proj")["threads"]] == ["T-b"]


def test_a_session_that_does_not_exist_is_kept_and_said(server, tmux, env):
    for path, body in (("/set-status", {"session": "later", "text": "deploying"}),
                       ("/set-progress", {"session": "later", "percent": 40}),
                       ("/log", {"session": "later", "message": "step 1"}),
                       ("/notify", {"session": "later", "message": "hello"})):
        assert server.post(path, body) == (202, {"matched": False}), path
    assert server.post("/set-status", {"session": "main", "text": "ok"})[0] == 204
    assert server.post("/notify", {"message": "no session named"})[0] == 204
    r = server.cli("set-status", "later", "still deploying")
    assert r.returncode == 0 and r.stderr.decode() == \
        "opensessions: no tmux session named later (kept for when it appears)\n"
    r = server.cli("log", "main", "fine")
    assert r.returncode == 0 and r.stderr == b""
    tmux.new_session("later", cwd=env.home)
    meta = retry_until(lambda: (server.session("later") or {}).get("metadata"))
    assert meta["status"]["text"] == "still deploying" and meta["progress"]["percent"] == 40
    assert [l["message"] for l in meta["logs"]] == ["step 1", "hello"]


def test_notify_on_a_muted_session_stays_quiet(nserver):  # noqa: F811
    assert nserver.post("/mute", {"session": "main"})[0] == 204
    assert nserver.cli("notify", "quiet please", "--session", "main").returncode == 0
    assert nserver.cli("notify", "loud").returncode == 0
    calls = retry_until(nserver.calls)  # sent in order: the muted one would have come first
    assert [c[5] for c in calls] == ["loud"]
    assert [l["message"] for l in nserver.session("main")["metadata"]["logs"]] == ["quiet please"]


def test_an_unknown_theme_is_refused_with_the_names(server):
    status, body = server.post("/ui", {"theme": "no-such"})
    assert status == 400 and "nord" in body["error"] and "catppuccin-mocha" in body["error"]
    assert server.post("/ui", {"theme": "nord"})[0] == 204


def test_our_own_api_port_is_never_a_sessions_port(env, tmux):
    """A server run in a pane listens under that pane: its own port is not the session's."""
    log = os.path.join(env.base, "pane-server.log")
    portfile = os.path.join(env.base, "listener.port")
    tmux.run("new-session", "-d", "-s", "srv", "-c", env.home,
             " ".join([PYTHON, SCRIPT, "-S", tmux.socket, "server", "--port", "0", "--log", log]))
    listener = ("import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
                "open(%r,'w').write(str(s.getsockname()[1])); time.sleep(600)" % portfile)
    tmux.run("new-window", "-d", "-t", "=srv:", "%s -c \"%s\"" % (PYTHON, listener))
    runtime = os_.RuntimeFiles(tmux.socket, env.vars)
    info = retry_until(runtime.live_info, timeout=10)
    other = int(retry_until(lambda: os.path.exists(portfile) and open(portfile).read()))
    client = os_.Client(info["port"])

    def srv_ports():
        state = json.loads(client.request("GET", "/state")[1].decode())
        return next(s for s in state["sessions"] if s["name"] == "srv")["ports"]
    assert retry_until(lambda: srv_ports() == [other] and srv_ports(), timeout=10) == [other]
    assert info["port"] not in srv_ports()
    tmux.run("kill-session", "-t", "=srv")
    retry_until(lambda: runtime.live_info() is None or not os_._pid_alive(info["pid"]), timeout=10)


def test_status_line_counts_what_the_sidebar_shows():
    def session(name, hidden, status, unseen=False):
        return {"name": name, "hidden": hidden, "windows": [{"id": "@1", "panes": [{"id": "%1"}]}],
                "threads": [{"agent": "claude", "id": name, "status": status, "unseen": unseen,
                             "pane": None, "alive": False}]}
    state = {"sessions": [session("shown", False, "running"), session("hid", True, "done", unseen=True),
                          session("hid2", True, "running")],
             "threads": [{"agent": "amp", "id": "orphan", "status": "running", "unseen": True}]}
    out = os_.status_summary(state)["global"]
    assert (out["@opensessions-running"], out["@opensessions-unseen"]) == ("1", "0")


def test_ui_from_tmux_options_is_what_the_options_say():
    opts = dict(os_.TMUX_OPTIONS)
    assert os_.ui_from_tmux_options(opts) == {}  # nothing set: no preference of the file's
    opts.update({"@opensessions-width": "40", "@opensessions-theme": "nord", "@opensessions-notify": "none",
                 "@opensessions-notify-on": "done, error", "@opensessions-position": "left"})
    assert os_.ui_from_tmux_options(opts) == {"width": 40, "position": "left", "theme": "nord", "notify": [],
                                              "notifyOn": ["done", "error"]}
    opts.update({"@opensessions-width": "5", "@opensessions-theme": "no-such"})
    assert os_.ui_from_tmux_options(opts) == {"position": "left", "notify": [], "notifyOn": ["done", "error"]}


def test_a_server_stopped_on_purpose_is_not_started_by_a_sidebar(env, tmux, monkeypatch):
    class Args(object):
        socket_name = None
        socket_path = tmux.socket
        port = 0
    monkeypatch.setattr(sys, "argv", [SCRIPT])
    for k in list(os.environ):
        monkeypatch.delenv(k)
    for k, v in env.vars.items():
        monkeypatch.setenv(k, v)
    runtime = os_.RuntimeFiles(tmux.socket)
    runtime.mark_stopped()
    try:
        os_.start_background(Args(), respect_stop=True)
    except os_.ServerStopped:
        pass
    else:
        raise AssertionError("a sidebar started a server stopped on purpose")
    assert runtime.stopped() and runtime.live_info() is None
    port, started = os_.start_background(Args())  # the user's command starts it, and clears the mark
    info = runtime.live_info()
    try:
        assert started and not runtime.stopped()
        assert os_.Client(port).request("GET", "/health")[0] == 200
    finally:
        os.kill(info["pid"], 15)
    retry_until(lambda: runtime.live_info() is None, timeout=10)


def test_a_new_tmux_server_drops_pane_links_not_ages(env, tmux):
    import shutil
    from conftest import AttachedClient, ServerProc, lab_home
    shutil.rmtree(env.home)
    lab_home(env.home)
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"  # fixture records are dated 2026-11-22
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    tmux.kill()  # its pane sat in the HOME just replaced
    tmux.new_session("main", cwd=env.home)
    s = ServerProc(env, tmux)
    try:
        pane = s.session("main")["windows"][0]["panes"][0]["id"]
        for tid in ("unseen-one", "seen-one"):
            for status in ("running", "done"):
                assert s.post("/api/agent-event", {"agent": "amp", "status": status, "threadId": tid,
                                                   "paneId": pane})[0] == 204
        client = AttachedClient(tmux, "main")  # looks at seen-one's window (and so at unseen-one's)
        try:
            retry_until(lambda: not any(t["unseen"] for t in s.session("main")["threads"]))
        finally:
            client.close()
        retry_until(lambda: not s.state()["clients"])  # nobody looks any more
        assert s.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "unseen-one",
                                           "paneId": pane})[0] == 204
        assert s.post("/api/agent-event", {"agent": "amp", "status": "done", "threadId": "unseen-one",
                                           "paneId": pane})[0] == 204
        retry_until(lambda: [t["unseen"] for t in s.session("main")["threads"] if t["id"] == "unseen-one"] == [True])
        st = s.state()
        before = {t["id"]: t for x in st["sessions"] for t in x["threads"]}
        before.update({t["id"]: t for t in st["threads"]})
        assert len(before) > 5 and before["seen-one"]["pane"] == pane
    finally:
        s.stop()
    tmux.kill()
    tmux.new_session("main", cwd=env.home)  # pane ids start again: the same %0 is a new shell now
    s = ServerProc(env, tmux)
    try:
        assert s.session("main")["windows"][0]["panes"][0]["id"] == pane
        st = s.state()
        after = {t["id"]: dict(t, _session=x["name"]) for x in st["sessions"] for t in x["threads"]}
        after.update({t["id"]: dict(t, _session=None) for t in st["threads"]})
        for tid in ("unseen-one", "seen-one"):
            assert after[tid]["session"] == "main" and after[tid]["pane"] is None and not after[tid]["alive"]
        assert after["unseen-one"]["unseen"] is True and after["seen-one"]["unseen"] is False
        assert {k: (t["updatedAt"], t["unseen"]) for k, t in after.items()} == \
            {k: (t["updatedAt"], t["unseen"]) for k, t in before.items()}
        assert not any(t["pane"] == pane for t in after.values())
    finally:
        s.stop()


class StubTmux(object):
    instance_id = "100:1795000000"

    def __init__(self, base):
        self.socket_path = os.path.join(base, "stub.sock")

    def alive(self):
        return True

    def instance(self):
        return self.instance_id

    def run(self, *args, **kw):
        return ""


def test_a_cold_start_passing_through_a_transient_status_changes_nothing(env):
    srv = os_.Server(StubTmux(env.base), environ=env.vars)
    seen = srv.apply_thread_update("claude", "seen", status="interrupted", updated_at=1795000000000)
    srv.publish()
    assert seen.unseen is True  # nobody looked
    seen.unseen = False  # now someone has
    # a restart: the registry is read before the transcript (idle for a moment, with no time of its own)
    srv.cold_starting = True
    srv._known_before_cold = frozenset(srv.store.threads)
    srv._status_before_cold = {k: t.status for k, t in srv.store.threads.items()}
    srv.apply_thread_update("claude", "seen", status="idle")
    srv.apply_thread_update("claude", "seen", status="interrupted", updated_at=1795000000000)
    srv.cold_starting = False
    srv.publish()
    assert (seen.status, seen.unseen, seen.updated_at) == ("interrupted", False, 1795000000000)
    # live, a whole quick turn read at once still counts: done -> running -> done is a finished turn
    live = srv.apply_thread_update("codex", "live", status="done", updated_at=1795000000000)
    srv.publish()
    srv.apply_thread_update("codex", "live", status="running", updated_at=1795000001000)
    srv.apply_thread_update("codex", "live", status="done", updated_at=1795000002000)
    srv.publish()
    assert live.unseen is True and live.updated_at == 1795000002000


def test_a_tmux_server_replaced_under_a_running_server_unlinks_panes(env):
    srv = os_.Server(StubTmux(env.base), environ=env.vars)
    srv.tmux_instance = srv.tmux.instance()
    t = srv.apply_thread_update("claude", "t1", status="done", pane="%3", session="main", pid=4242, alive=True)
    t.unseen, t.updated_at = True, 1795000000000
    srv._on_control_exit()  # same tmux server: nothing changes
    assert (t.pane, t.pid, t.alive) == ("%3", 4242, True)
    srv.tmux.instance_id = "200:1795000999"  # kill-server, and a new server on the same socket
    srv._on_control_exit()
    assert (t.pane, t.pid, t.alive, t.session, t.unseen, t.updated_at) == (None, None, False, "main", True, 1795000000000)
    assert srv.tmux_instance == "200:1795000999"
    srv.state_file.save_now()  # the state file says whose pane ids its threads hold
    with open(srv.state_file.path) as f:
        assert json.load(f)["tmux"] == "200:1795000999"


def test_the_plugins_first_run_shows_the_sidebars(tmp_path):
    """A new user (no ui.json): the sidebars are there from the first session the plugin sees, and
    the choice is kept; a user who hid them (visible false) keeps them hidden."""
    from test_week import Week
    w = Week(str(tmp_path))
    try:
        os.unlink(os.path.join(w.env.home, ".config", "opensessions", "ui.json"))
        w.boot("main")
        first = retry_until(w.sidebars, timeout=15, message="no sidebar on the plugin's first run")
        assert [p[3] for p in first] == ["40"]
        assert retry_until(lambda: w.state()["ui"]["visible"]) is True
        retry_until(lambda: not os_._first_run(w.env.vars), message="the choice was not kept in ui.json")
    finally:
        w.close()


def test_first_run_is_only_when_the_user_never_chose(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert os_._first_run(env) is True
    d = tmp_path / "cfg" / "opensessions"
    d.mkdir(parents=True)
    (d / "ui.json").write_text('{"width": 40}')
    assert os_._first_run(env) is True
    (d / "ui.json").write_text('{"visible": false}')
    assert os_._first_run(env) is False
    (d / "ui.json").write_text('{"visible": tru')  # broken: the user's to mend, not a first run
    assert os_._first_run(env) is False
