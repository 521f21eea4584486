"""Attention: notifications (coalesced, muted, never blocking; the notifier alone on an injected
clock, and live), status-line options, `next`."""
import os
import shlex
import stat

import pytest

import opensessions as os_
from conftest import FakeLoop, ServerProc, retry_until


def th(status, old=None, **kw):
    t = os_.Thread("claude", kw.pop("id", "t1"), title=kw.pop("title", "fix login"), status=status, **kw)
    return t


def test_should_notify_rules():
    on = ["done", "error", "waiting", "retry"]
    assert os_.should_notify(th("done"), "running", viewed=False, muted=False, notify_on=on)
    assert not os_.should_notify(th("done"), "running", viewed=True, muted=False, notify_on=on)
    assert not os_.should_notify(th("done"), "running", viewed=False, muted=True, notify_on=on)
    assert not os_.should_notify(th("done", subagent=True), "running", viewed=False, muted=False, notify_on=on)
    assert not os_.should_notify(th("interrupted"), "running", viewed=False, muted=False, notify_on=on)
    assert os_.should_notify(th("retry", attempt=1), "running", viewed=False, muted=False, notify_on=on)
    assert not os_.should_notify(th("retry", attempt=2), "retry", viewed=False, muted=False, notify_on=on)
    assert not os_.should_notify(th("running"), "idle", viewed=False, muted=False, notify_on=on)


def test_coalescer_with_injected_clock():
    c = os_.Coalescer(window=2.0)
    assert c.add("a", now=100.0) == ["a"]  # the first goes at once
    assert c.add("b", now=100.5) == [] and c.add("c", now=101.9) == []
    assert c.flush(now=101.0) == []  # window still open
    assert c.flush(now=102.0) == ["b", "c"]  # one notification for the rest
    assert c.add("d", now=103.0) == []  # the flush opened a new quiet window
    assert c.flush(now=104.0) == ["d"]
    assert c.flush(now=106.1) == [] and c.next_due() is None
    assert c.add("e", now=200.0) == ["e"]


def test_describe_one_and_many():
    one = [{"agent": "codex", "status": "error", "session": "api", "title": "migrate", "detail": "HTTP 500"}]
    assert os_.notification_text(one) == ("codex failed", "api · migrate · HTTP 500", "error")
    many = [{"agent": "claude", "status": "done", "session": s, "title": ""} for s in ("a", "b", "c")]
    title, body, worst = os_.notification_text(many)
    assert title == "3 agents finished" and body == "a, b, c" and worst == "done"
    mixed = many + [{"agent": "amp", "status": "waiting", "session": "d", "title": ""}]
    assert os_.notification_text(mixed)[0] == "1 agent needs you, 3 agents finished"


def test_osc_sequences_are_clean():
    data = os_.osc_notification("a;b", "line\nbreak\x1b]")
    assert data.startswith(b"\x1b]777;notify;ab;linebreak]\x07") and b"\x1b]9;" in data
    assert b"\xc2\x9b" not in os_.osc_notification("C1\x9bCSI", "b")  # C1's CSI would start a sequence


def test_status_summary_and_attention_queue():
    state = {"sessions": [
        {"name": "api", "hidden": False, "windows": [{"id": "@1", "panes": [{"id": "%1"}]}], "threads": [
            {"agent": "claude", "id": "c1", "status": "running", "pane": "%1", "alive": True, "unseen": False, "updatedAt": 5},
            {"agent": "codex", "id": "x1", "status": "waiting", "pane": "%1", "alive": True, "unseen": True, "updatedAt": 9}]},
        {"name": "web", "hidden": False, "windows": [{"id": "@2", "panes": [{"id": "%2"}]}], "threads": [
            {"agent": "claude", "id": "c2", "status": "done", "pane": "%2", "alive": True, "unseen": True, "updatedAt": 1},
            {"agent": "amp", "id": "a1", "status": "error", "pane": None, "alive": False, "unseen": True, "updatedAt": 3}]}]}
    summary = os_.status_summary(state)
    assert summary["global"]["@opensessions-status"] == "⠋1 ◉1 ✗1 ●3"
    assert summary["global"]["@opensessions-waiting"] == "1" and summary["global"]["@opensessions-unseen"] == "3"
    assert summary["windows"]["@1"] == {"@opensessions-agent": "◉", "@agent_session": "codex:x1"}
    assert summary["windows"]["@2"]["@agent_session"] == "claude:c2"
    assert [t["id"] for _, t in os_.attention_queue(state)] == ["x1", "a1", "c2"]


# ---- live ----------------------------------------------------------------------------------------

@pytest.fixture
def fake_notify_send(env):
    bin_dir = os.path.join(env.base, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    log = os.path.join(env.base, "notify-send.log")
    path = os.path.join(bin_dir, "notify-send")
    with open(path, "w") as f:
        # the whole line in one write (O_APPEND): a reader never sees half of it
        f.write('#!/bin/sh\nline=""\nfor a in "$@"; do line="$line$a|"; done\nprintf "%%s\\n" "$line" >> %s\n' % shlex.quote(log))
    os.chmod(path, 0o755)
    env.vars["PATH"] = bin_dir + os.pathsep + env.vars["PATH"]

    def calls():
        try:
            with open(log) as f:
                return [line.rstrip("|\n").split("|") for line in f if line.endswith("\n") and line.strip()]
        except OSError:
            return []
    return calls


@pytest.fixture
def nserver(env, tmux, fake_notify_send):
    s = ServerProc(env, tmux)
    s.calls = fake_notify_send
    yield s
    s.stop()


def event(server, status, tid="t1", pane=None, **kw):
    body = {"agent": "claude", "status": status, "threadId": tid, "threadName": "fix login"}
    body.update(kw)
    if pane:
        body["paneId"] = pane
    else:
        body.setdefault("tmuxSession", "main")
    assert server.post("/api/agent-event", body)[0] == 204


def test_background_thread_finishing_notifies_once(nserver):
    event(nserver, "running")
    event(nserver, "done")
    calls = retry_until(nserver.calls)
    assert calls[0][:4] == ["-a", "opensessions", "-u", "normal"]
    assert calls[0][4] == "claude finished" and "main" in calls[0][5] and "fix login" in calls[0][5]
    event(nserver, "done")  # no change: no second notification
    assert_next_is_only(nserver, calls)


def assert_next_is_only(server, before, session="main"):
    """Nothing was notified since `before`: a sentinel thread fails, and the next notification is
    that one alone (anything notified earlier would come first or be coalesced into it). The
    server handles API calls in order, so no waiting is needed to show that nothing happened."""
    event(server, "running", tid="sentinel", tmuxSession=session)
    event(server, "error", tid="sentinel", tmuxSession=session, threadName="sentinel")
    calls = retry_until(lambda: len(server.calls()) > len(before) and server.calls(), timeout=6)
    assert calls[len(before)][4:] == ["claude failed", "%s · sentinel" % session], calls
    assert len(calls) == len(before) + 1, calls


def test_foreground_thread_does_not_notify(nserver, tmux, attach):
    pane = nserver.session("main")["windows"][0]["panes"][0]["id"]
    attach("=main")
    retry_until(lambda: nserver.state()["clients"])
    event(nserver, "running", pane=pane)
    event(nserver, "done", pane=pane)
    event(nserver, "waiting", tid="t2", pane=pane)
    tmux.new_session("elsewhere")  # a session nobody looks at
    retry_until(lambda: nserver.session("elsewhere"))
    assert_next_is_only(nserver, [], session="elsewhere")


def test_burst_is_coalesced_and_errors_are_urgent(nserver):
    for tid in ("a", "b", "c", "d"):
        event(nserver, "running", tid=tid)
    event(nserver, "error", tid="a", detail="HTTP 500")
    event(nserver, "done", tid="b")
    event(nserver, "done", tid="c")
    event(nserver, "waiting", tid="d")
    calls = retry_until(lambda: len(nserver.calls()) >= 2 and nserver.calls(), timeout=5)
    assert calls[0][3] == "critical" and calls[0][4] == "claude failed"
    assert calls[1][4] == "1 agent needs you, 2 agents finished" and calls[1][3] == "critical"
    assert_next_is_only(nserver, calls[:2])


def test_mute_silences_a_session(nserver):
    assert nserver.post("/mute", {"session": "main"})[0] == 204
    assert nserver.session("main")["muted"] is True
    event(nserver, "running")
    event(nserver, "done")
    assert nserver.cli("mute", "main", "--off").returncode == 0
    assert_next_is_only(nserver, [])


def test_missing_channel_does_not_break_the_others(env, tmux, attach):
    env.vars["PATH"] = "/usr/bin:/bin"  # no notify-send anywhere here
    s = ServerProc(env, tmux)
    try:
        tmux.new_session("other")
        attach("=other")
        retry_until(lambda: s.state()["clients"])
        shown = lambda n: (lambda m: m if m.count("claude finished") >= n else None)(tmux.run("show-messages"))
        for i in range(2):  # the second is held by the coalescing window, then sent alone at its end
            event(s, "running", tid="m%d" % i)
            event(s, "done", tid="m%d" % i)
            retry_until(lambda: shown(i + 1), timeout=6)
        # both went through every channel: the server sent the second from its one loop, and answers
        # this request only after that round, desktop attempt included
        s.state()
        assert s.log().count("notification channel desktop failed") == 1  # logged once, skipped after
    finally:
        s.stop()


def test_notify_endpoint_uses_the_channels(nserver):
    assert nserver.cli("notify", "deploy finished", "--session", "main", "--tone", "success").returncode == 0
    calls = retry_until(nserver.calls)
    assert calls[0][4] == "opensessions: main" and calls[0][5] == "deploy finished"


def test_status_options_follow_state(nserver, tmux):
    opt = lambda name: tmux.run("show-options", "-gqv", name).strip()
    event(nserver, "running")
    retry_until(lambda: opt("@opensessions-status") == "⠋1")
    event(nserver, "waiting", tid="t2")
    retry_until(lambda: opt("@opensessions-status") == "⠋1 ◉1 ●1" and opt("@opensessions-waiting") == "1")
    event(nserver, "done")
    retry_until(lambda: opt("@opensessions-status") == "◉1 ●2")
    pane = nserver.session("main")["windows"][0]["panes"][0]["id"]
    event(nserver, "running", tid="t3", pane=pane)
    win = tmux.run("display-message", "-p", "-t", pane, "#{window_id}").strip()
    retry_until(lambda: tmux.run("show-options", "-wqv", "-t", win, "@agent_session").strip() == "claude:t3")
    assert tmux.run("show-options", "-wqv", "-t", win, "@opensessions-agent").strip() == "⠋"
    # the user's status-right shows it without running anything
    assert tmux.run("display-message", "-p", "#{@opensessions-status}").strip() == "⠋1 ◉1 ●2"


def test_next_jumps_to_what_needs_you_and_back(nserver, tmux, attach):
    tmux.new_session("api")
    tmux.new_session("web")
    api_pane = tmux.run("display-message", "-p", "-t", "=api:0.0", "#{pane_id}").strip()
    web_pane = tmux.run("display-message", "-p", "-t", "=web:0.0", "#{pane_id}").strip()
    attach("=main")
    retry_until(lambda: nserver.state()["clients"])
    event(nserver, "running", tid="w", pane=web_pane)
    event(nserver, "done", tid="w", pane=web_pane)
    event(nserver, "running", tid="a", pane=api_pane)
    event(nserver, "waiting", tid="a", pane=api_pane)
    session = lambda: [l.split()[1] for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{session_name}")
                       .splitlines() if l.startswith("0")][0]
    r = nserver.cli("next")
    assert r.returncode == 0, r.stderr
    assert session() == "api"  # waiting comes first
    assert nserver.cli("next").returncode == 0
    assert session() == "web"
    assert nserver.cli("next", "--back").returncode == 0
    assert session() == "api"


def test_terminal_channel_writes_osc_to_the_client_terminal(nserver, tmux, attach):
    assert nserver.post("/ui", {"notify": ["terminal"]})[0] == 204
    tmux.new_session("bg")
    client = attach("=main")
    retry_until(lambda: nserver.state()["clients"])
    event(nserver, "running", tmuxSession="bg")
    event(nserver, "done", tmuxSession="bg")
    retry_until(lambda: b"\x1b]777;notify;claude finished;bg" in client.output, timeout=5)
    assert b"\x1b]9;claude finished: bg" in client.output
    assert nserver.calls() == []  # only the enabled channel ran


# -- the notifier alone, on an injected clock and loop -------------------------------------------


def test_rule_only_the_first_retry_notifies():
    on = list(os_.NOTIFY_STATUSES)

    def retry(attempt, old):
        return os_.should_notify(os_.Thread("opencode", "ses_1", status="retry", attempt=attempt), old,
                                 viewed=False, muted=False, notify_on=on)
    assert retry(1, "running") and retry(None, "running")
    assert not retry(2, "running")  # a later attempt seen first (e.g. after a restart): not news
    assert not retry(3, "waiting")
    assert not retry(2, "retry")


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
    host = os_.NotifierHost(ui=lambda: srv.store.ui, clients=lambda: srv.store.clients, is_viewed=srv.is_viewed,
                            call_later=srv.loop.call_later, tmux_argv=lambda *a: ["tmux"] + list(a),
                            pane_tty=lambda pane: None)
    return srv, os_.Notifier(host, clock=clock, window=window)


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


def test_notify_on_a_muted_session_stays_quiet(nserver):  # noqa: F811
    assert nserver.post("/mute", {"session": "main"})[0] == 204
    assert nserver.cli("notify", "quiet please", "--session", "main").returncode == 0
    assert nserver.cli("notify", "loud").returncode == 0
    calls = retry_until(nserver.calls)  # sent in order: the muted one would have come first
    assert [c[5] for c in calls] == ["loud"]
    assert [l["message"] for l in nserver.session("main")["metadata"]["logs"]] == ["quiet please"]


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
