"""Sidebars only where a client looks: the other windows hold a sleeping placeholder that a switch
brings to life (a running sidebar swapped in, else started), on real tmux."""
import os

import opensessions as os_
from conftest import ServerProc, retry_until

WARM = os_.SIDEBAR_WARM


def sidebar_panes(tmux):
    """Every sidebar pane: session, window, pane, asleep, command, width (parked ones included)."""
    out = tmux.run("list-panes", "-a", "-F", "#{session_name}\t#{window_id}\t#{pane_id}\t#{@opensessions-sidebar}\t"
                                             "#{@opensessions-asleep}\t#{pane_current_command}\t#{pane_width}")
    rows = [dict(zip(("session", "window", "pane", "sidebar", "asleep", "cmd", "width"), l.split("\t")))
            for l in out.splitlines()]
    return [r for r in rows if r["sidebar"] == "1"]


def in_window(tmux, window):
    return next((p for p in sidebar_panes(tmux) if p["window"] == window), None)


def running(tmux):
    return [p for p in sidebar_panes(tmux) if p["asleep"] != "1"]


def current_window(tmux):
    rows = [l.split() for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{window_id}").splitlines()]
    return next(w for control, w in rows if control == "0")


def shows_sessions(tmux, window, names):
    """The window's sidebar is a running sidebar whose screen lists these sessions."""
    p = in_window(tmux, window)
    if p is None or p["asleep"] == "1" or p["cmd"] == "sleep":
        return False
    text = tmux.run("capture-pane", "-p", "-t", p["pane"])
    return all(n in text for n in names) and p


def setup_windows(server, tmux, attach, windows=8):
    """main with `windows` windows (the client on the first), and a second session, shown."""
    for _ in range(windows - 1):
        tmux.run("new-window", "-d", "-t", "=main")
    tmux.new_session("other")
    client = attach("=main")
    retry_until(lambda: server.state()["clients"])
    assert server.post("/ui", {"visible": True})[0] == 204
    retry_until(lambda: len([p for p in sidebar_panes(tmux) if p["session"] in ("main", "other")]) == windows + 1,
                timeout=10)
    return client


def test_only_shown_and_warm_windows_run_a_sidebar(server, tmux, attach):
    setup_windows(server, tmux, attach)
    win = current_window(tmux)
    retry_until(lambda: shows_sessions(tmux, win, ("main", "other")), timeout=10)
    # the shown window and WARM more run the sidebar; the 5 others sleep in a `sleep` placeholder
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    sleepers = [p for p in sidebar_panes(tmux) if p["asleep"] == "1"]
    assert len(sleepers) == 9 - 1 - WARM
    retry_until(lambda: all(p["cmd"] == "sleep" for p in sidebar_panes(tmux) if p["asleep"] == "1"))
    # a placeholder says what it is and how to start opensessions (what shows while the server is stopped)
    assert "prefix o s" in tmux.run("capture-pane", "-p", "-t", sleepers[0]["pane"])
    assert all(p["width"] == "32" for p in sidebar_panes(tmux))
    # the state says which are asleep
    panes = [p for s in server.state()["sessions"] for w in s["windows"] for p in w["panes"] if p["sidebar"]]
    assert sorted(p["id"] for p in panes if p["sidebarAsleep"]) == sorted(p["pane"] for p in sleepers)


def test_switching_windows_brings_the_sidebar_to_life(server, tmux, attach, sse):
    setup_windows(server, tmux, attach)
    first = current_window(tmux)
    mine = retry_until(lambda: shows_sessions(tmux, first, ("main", "other")), timeout=10)["pane"]
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    events = sse(server.port)
    for target in tmux.run("list-windows", "-t", "=main", "-F", "#{window_id}").split()[1:]:
        tmux.run("select-window", "-t", target)
        retry_until(lambda: shows_sessions(tmux, target, ("main", "other")))
        # a window shown for the first time takes the client's size: the width is put back
        retry_until(lambda: in_window(tmux, target)["width"] == "32")
        assert len(running(tmux)) <= 1 + WARM + 1  # never a sidebar for every window
    # the sidebar the client left came along (swapped in, not restarted) to windows that slept
    assert mine in {p["pane"] for p in running(tmux)}
    # to another session
    tmux.run("switch-client", "-t", "=other")
    other = retry_until(lambda: (lambda w: w if w != target else None)(current_window(tmux)))
    retry_until(lambda: shows_sessions(tmux, other, ("main", "other")))
    retry_until(lambda: len(running(tmux)) == 1 + WARM)
    assert all(p["width"] == "32" for p in sidebar_panes(tmux))
    # no published state has a client looking at a sleeping sidebar: a swap's layout is read back
    # before anything is published (else the sidebar swapped in heard it was still in the window it
    # left: its session, cursor and a directory prompt's text jumped there and back)
    states = []
    while not events.queue.empty():
        ev = events.queue.get()
        if ev is not None:
            states.append(ev["data"])
    assert len(states) > len(tmux.run("list-windows", "-t", "=main").splitlines())
    for st in states:
        for c in st["clients"]:
            shown = [p for ss in st["sessions"] for w in ss["windows"] if w["id"] == c["window"]
                     for p in w["panes"] if p["sidebar"]]
            assert not shown or not shown[0]["sidebarAsleep"], (c, shown, st["version"])


def test_a_focused_sidebar_keeps_its_focus_and_no_window_is_named_sleep(server, tmux, attach):
    setup_windows(server, tmux, attach, windows=6)
    a = current_window(tmux)
    retry_until(lambda: shows_sessions(tmux, a, ("main", "other")), timeout=10)
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    tmux.run("select-pane", "-t", in_window(tmux, a)["pane"])  # prefix o s: the sidebar has the focus
    active = lambda w: tmux.run("display-message", "-p", "-t", w, "#{pane_id} #{pane_current_command}").split()
    b = next(p["window"] for p in sidebar_panes(tmux) if p["asleep"] == "1" and p["session"] == "main")
    tmux.run("select-window", "-t", b)
    retry_until(lambda: shows_sessions(tmux, b, ("main", "other")))
    # the placeholder now in window a does not hold its focus (nor give the window its name)
    retry_until(lambda: active(a)[0] != in_window(tmux, a)["pane"] and active(a)[1] != "sleep")
    assert in_window(tmux, a)["asleep"] == "1"
    assert "sleep" not in tmux.run("list-windows", "-a", "-F", "#{window_name}").split()
    # back in window a: a running sidebar, with the focus it had
    tmux.run("select-window", "-t", a)
    sb = retry_until(lambda: shows_sessions(tmux, a, ("main", "other")))
    retry_until(lambda: active(a)[0] == sb["pane"])


def test_a_second_client_and_detach(server, tmux, attach):
    first = setup_windows(server, tmux, attach)
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    asleep = next(p for p in sidebar_panes(tmux) if p["asleep"] == "1" and p["session"] == "main")
    tmux.run("select-window", "-t", asleep["window"])  # main's current window: the client follows
    retry_until(lambda: shows_sessions(tmux, asleep["window"], ("main", "other")))
    # a second client on the other session: both windows shown, both drawn
    second = attach("=other")
    other = next(w for w in tmux.run("list-windows", "-t", "=other", "-F", "#{window_id}").split())
    retry_until(lambda: shows_sessions(tmux, other, ("main", "other")))
    assert shows_sessions(tmux, asleep["window"], ("main", "other"))
    retry_until(lambda: len(running(tmux)) == 2 + WARM)
    # nobody looks: only WARM keep running. Both clients end (by their own handles: right after a
    # client exits, tmux 3.3a's list-clients can come back empty, so a list read then misses one),
    # and only our control client is listed (an empty list is not "none left")
    second.close()
    first.close()
    retry_until(lambda: {l.split()[0] for l in tmux.run("list-clients", "-F", "#{client_control_mode}").splitlines()}
                == {"1"}, timeout=10)
    try:
        retry_until(lambda: len(running(tmux)) == WARM, timeout=10)
    except AssertionError:
        raise AssertionError("running: %r\nclients: %r\nlog: %s" % (
            [(p["window"], p["pane"], p["cmd"]) for p in running(tmux)],
            tmux.run("list-clients", "-F", "#{client_control_mode} #{client_flags} #{window_id}"), server.log()[-2000:]))


def test_hide_and_show_with_sleepers(server, tmux, attach):
    setup_windows(server, tmux, attach)
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    before = {p["pane"] for p in sidebar_panes(tmux)}
    assert server.post("/ui", {"visible": False})[0] == 204
    retry_until(lambda: all(p["session"] == os_.STASH_SESSION for p in sidebar_panes(tmux)))
    retry_until(lambda: len(running(tmux)) <= WARM)
    assert server.post("/ui", {"visible": True})[0] == 204
    win = current_window(tmux)
    retry_until(lambda: shows_sessions(tmux, win, ("main", "other")), timeout=10)
    retry_until(lambda: not [p for p in sidebar_panes(tmux) if p["session"] == os_.STASH_SESSION])
    assert {p["pane"] for p in sidebar_panes(tmux)} == before  # the same panes came back
    retry_until(lambda: len(running(tmux)) == 1 + WARM)


def test_right_after_a_tmux_restart(server, tmux, attach, env):
    setup_windows(server, tmux, attach, windows=6)
    retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
    tmux.kill()
    retry_until(lambda: server.proc.poll() is not None, timeout=10)  # the server follows tmux out
    tmux.new_session("main", cwd=env.home)
    for _ in range(5):
        tmux.run("new-window", "-d", "-t", "=main")
    tmux.new_session("other")
    again = ServerProc(env, tmux)
    try:
        attach("=main")
        win = current_window(tmux)
        # ui.json still says visible: every window gets its sidebar pane, the shown one drawn
        retry_until(lambda: len(sidebar_panes(tmux)) == 7, timeout=10)
        retry_until(lambda: shows_sessions(tmux, win, ("main", "other")), timeout=10)
        retry_until(lambda: len(running(tmux)) == 1 + WARM, timeout=10)
        target = next(p["window"] for p in sidebar_panes(tmux) if p["asleep"] == "1" and p["session"] == "main")
        tmux.run("select-window", "-t", target)
        retry_until(lambda: shows_sessions(tmux, target, ("main", "other")))
    finally:
        again.stop()


def test_an_idle_sidebar_redraws_when_its_pane_is_resized(server, tmux):
    """A sidebar swapped into a window of another size gets a SIGWINCH and nothing else: it must
    redraw for that alone (it once kept its old drawing, cut by tmux, until the next event)."""
    name = "a-rather-long-session-name"
    tmux.new_session(name)
    assert server.post("/ui", {"visible": True})[0] == 204
    win = tmux.run("list-windows", "-t", "=main", "-F", "#{window_id}").strip()
    retry_until(lambda: shows_sessions(tmux, win, ("main", name)), timeout=10)
    tmux.run("resize-window", "-t", win, "-x", "40")  # too narrow for the width to be put back
    retry_until(lambda: int(in_window(tmux, win)["width"]) < 8)
    tmux.run("resize-pane", "-t", in_window(tmux, win)["pane"], "-x", "16")
    retry_until(lambda: in_window(tmux, win)["width"] == "16")

    def row():
        text = tmux.run("capture-pane", "-p", "-t", in_window(tmux, win)["pane"])
        return next((l for l in text.splitlines() if "a-r" in l), "")
    retry_until(lambda: "\u2026" in row(), message="drawn for its new width")  # fit() ends it with …


# ---- the decisions, without tmux ---------------------------------------------------------------

class FakeTmux(object):
    socket_path = "/nonexistent"

    def __init__(self):
        self.calls = []

    def run(self, *args, **kw):
        self.calls.append(args)
        return ""


class FakeServer(object):
    def __init__(self, sessions, clients):
        self.tmux = FakeTmux()
        self.store = os_.Store()
        self.store.sessions = sessions
        self.store.clients = clients
        self.store.ui = dict(os_.UI_DEFAULTS, visible=True)
        self.refreshes = 0

    def schedule_refresh(self, delay=0.005):
        self.refreshes += 1


def panes(server, **kw):
    """SidebarPanes given what it needs of the server: tmux, the store's view, schedule_refresh."""
    return os_.SidebarPanes(server.tmux, lambda: (server.store.sessions, server.store.clients, server.store.ui),
                            server.schedule_refresh, "opensessions sidebar", **kw)


def test_the_plan_is_data_and_runs_nothing():
    """A window without a sidebar, one with two: the plan says split and kill, and runs nothing."""
    sessions = world([False])
    sessions[0]["windows"].append({"id": "@5", "index": 5, "name": "w", "active": False, "width": 100,
                                   "height": 40, "panes": [{"id": "%55", "sidebar": False, "width": 100,
                                                            "height": 40, "left": 0, "top": 0}]})
    sessions[0]["windows"][0]["panes"].append(dict(sessions[0]["windows"][0]["panes"][0], id="%99"))
    ui = dict(os_.UI_DEFAULTS, visible=True)
    plan = os_.SidebarPlan(sessions, [client("@0")], ui, {}, 7.0, "opensessions sidebar", warm=1)
    steps = plan.plan()
    assert ("run", ("kill-pane", "-t", "%99")) in steps
    split = [s for s in steps if s[0] == "split"]
    assert len(split) == 1 and split[0][1][-1] == "opensessions sidebar" and split[0][2:] == ("@5", False)
    assert plan.memory()["shown_at"] == {"@0": 7.0}
    calls = []
    os_.run_sidebar_steps(lambda *a: calls.append(a) or "%77\n", steps)
    assert calls[-1][:5] == ("set-option", "-p", "-t", "%77", "@opensessions-sidebar")  # the new pane, marked


def world(asleep):
    """One session, windows @0..@n-1, each a work pane and a sidebar %10+i (asleep as given)."""
    windows = []
    for i, sleeping in enumerate(asleep):
        windows.append({"id": "@%d" % i, "index": i, "name": "w", "active": i == 0, "width": 100, "height": 40,
                        "panes": [{"id": "%%%d" % (10 + i), "sidebar": True, "sidebarAsleep": sleeping,
                                   "sidebarWindow": "@%d" % i, "width": 32, "height": 40, "left": 0, "top": 0},
                                  {"id": "%%%d" % (50 + i), "sidebar": False, "width": 67, "height": 40,
                                   "left": 33, "top": 0}]})
    return [{"id": "$0", "name": "main", "windows": windows, "dir": "/"}]


def client(window):
    return {"name": "/dev/pts/1", "control": False, "pid": 1, "sessionId": "$0", "session": "main",
            "window": window}


def test_balance_swaps_the_sidebar_the_client_left_into_the_window_it_shows():
    server = FakeServer(world([False, True, False, True, True]), [client("@0")])
    sp = panes(server, warm=1, clock=iter(range(100)).__next__)
    assert sp.sync() is False  # @0 shown: @2 stays warm, nothing else to do
    assert server.tmux.calls == [] and server.refreshes == 0
    server.store.clients = [client("@1")]
    # @1 shown and asleep: the sidebar of @0 (shown last) comes, its placeholder goes to @0; what the
    # server read is stale now: it reads tmux again at once (True), before anything publishes it
    assert sp.sync() is True
    swap = server.tmux.calls[0]
    assert swap[:6] == ("swap-pane", "-d", "-Z", "-s", "%10", "-t") and swap[6] == "%11"
    assert ("set-option", "-p", "-t", "%10", "@opensessions-window", "@1") == swap[8:14]
    assert len(server.tmux.calls) == 1 and server.refreshes == 0


def test_balance_sleeps_the_least_recently_shown_and_wakes_when_nothing_is_free():
    server = FakeServer(world([False, False, False, True]), [client("@3")])
    sp = panes(server, warm=1, clock=iter(range(100)).__next__)
    sp.shown_at = {"@0": 5, "@1": 9, "@2": 1}
    sp.sync()
    calls = [c[:5] for c in server.tmux.calls]
    # @3 takes @1's sidebar (shown last); of @0 and @2 one stays warm (@0, shown later), @2 sleeps
    assert calls[0] == ("swap-pane", "-d", "-Z", "-s", "%11")
    assert calls[1] == ("respawn-pane", "-k", "-t", "%12") + os_.SIDEBAR_SLEEPER[:1]
    assert len(calls) == 2
    # nothing running anywhere: a shown placeholder is started, and one warm sidebar besides
    server = FakeServer(world([True, True, True]), [client("@1")])
    sp = panes(server, warm=1, clock=iter(range(100)).__next__)
    sp.sync()
    woken = [c[3] for c in server.tmux.calls if c[0] == "respawn-pane"]
    assert woken[0] == "%11" and len(woken) == 2
    assert all(c[4] == "opensessions sidebar" for c in server.tmux.calls)


def test_control_clients_show_their_session_unless_they_take_no_output():
    server = FakeServer(world([True, True, True]), [])
    sp = panes(server, warm=0)
    ours = {"name": "client-1", "control": True, "noOutput": True, "sessionId": "$0", "window": "@0"}
    assert sp.shown_windows() == set() == os_.shown_windows(server.store.sessions, [])
    server.store.clients = [ours]
    assert sp.shown_windows() == set()  # the server's own, or any monitor: sees no pane
    tabs = {"name": "client-2", "control": True, "noOutput": False, "sessionId": "$0", "window": "@0"}
    server.store.clients = [ours, tabs, client("@1")]
    assert sp.shown_windows() == {"@0", "@1", "@2"}  # e.g. iTerm2: every window is a tab
