"""The sidebar: pure model and rendering, then the real thing in real tmux panes."""
import json
import os
import shutil
import subprocess
import time

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, SOURCE, ServerProc, retry_until


def snapshot(*sessions, ui=None):
    out = []
    for i, (name, threads) in enumerate(sessions):
        out.append({"id": "$%d" % i, "name": name, "created": i, "attached": 0, "dir": "/home/u/" + name,
                    "branch": "main", "dirty": i == 0, "ports": [3000] if i == 0 else [], "windows": [
                        {"id": "@%d" % i, "index": 0, "name": "w", "active": True, "width": 160,
                         "panes": [{"id": "%%%d" % i, "index": 0, "pid": 1, "tty": "", "cwd": "/", "command": "x",
                                    "title": "", "active": True, "width": 128, "height": 40, "sidebar": False}]}],
                    "state": None, "unseen": any(t.get("unseen") for t in threads), "hidden": False, "muted": False,
                    "threads": threads, "metadata": {"status": None, "progress": None, "logs": []}})
    return {"version": 1, "sessions": out, "threads": [], "clients": [], "ui": ui or dict(os_.UI_DEFAULTS)}


def th(agent, tid, status, unseen=False, pane=None):
    return {"agent": agent, "id": tid, "title": "t " + tid, "status": status, "detail": None, "attempt": None,
            "model": "m", "pane": pane, "unseen": unseen, "updatedAt": 0, "alive": True}


def texts(rows):
    return ["".join(t for t, _ in pieces) for _, pieces in rows]


def test_render_rows_badges_and_detail():
    m = os_.SidebarModel(own_session="api")
    m.set_state(snapshot(("api", [th("claude", "a", "waiting", True), th("codex", "b", "done", True)]),
                         ("web", [th("opencode", "c", "running")])))
    lines = texts(os_.render(m, 32, 30, now=0))
    assert lines[0].startswith("opensessions")
    assert lines[1].startswith("❯1 api ◂") and lines[1].rstrip().endswith("◉● ●")  # cursor, client's session
    assert "main*" in lines[2]
    assert any(l.startswith(" 2 web") for l in lines)
    assert "/home/u/api" in lines and "ports :3000" in lines  # the detail panel of the selected session
    assert all(os_.display_width(l) <= 32 for l in lines)


@pytest.mark.parametrize("width", [20, 24, 32, 60])
def test_render_fits_any_width_and_ascii(width):
    m = os_.SidebarModel(own_session="a-very-long-session-name-indeed", charset="ascii")
    m.set_state(snapshot(("a-very-long-session-name-indeed", [th("claude", "x" * 40, "error", True)]),
                         ("日本語のセッション", [])))
    rows = os_.render(m, width, 12, now=0)
    assert len(rows) <= 12
    for line in texts(rows):
        assert os_.display_width(line) <= width
        assert all(ord(c) < 128 for c in line)


def test_keys_move_switch_reorder_hide_and_prompt():
    m = os_.SidebarModel(own_session="a")
    m.set_state(snapshot(("a", [th("claude", "t1", "done", pane="%9")]), ("b", []), ("c", [])))
    assert m.selected == ("session", "a")
    m.key("j")
    assert m.selected == ("thread", "a", "claude", "t1")
    assert m.key("\n") == [("switch-pane", "a", "%9")]
    m.key("\t")
    assert m.selected == ("session", "b")
    assert m.key("\n") == [("switch", "b")]
    assert m.key("3") == [("switch", "c")]
    m.key("KEY_BTAB")
    assert m.selected == ("session", "b")
    assert m.key("K") == [("ui", {"order": ["b", "a", "c"]})]
    assert m.key("d") == [("ui", {"hidden": ["b"]})]
    assert m.key("x") == [] and m.key("y") == [("kill", "b")]
    assert m.key("x") == [] and m.key("n") == []  # cancelled
    m.key("n")
    for ch in "new":
        m.key(ch)
    m.key("\n")
    assert m.prompt["label"] == "directory"
    m.prompt["text"] = "/tmp"
    assert m.key("\n") == [("new", "new", "/tmp")]
    assert m.key("o") == [("open", 3000)] or m.selected_session()["name"] != "a"
    assert m.key("q") == [("leave",)]


def test_filter_and_attention_cycle():
    m = os_.SidebarModel()
    m.set_state(snapshot(("api", [th("claude", "a", "done", True)]), ("web", []), ("docs", [th("codex", "b", "running")])))
    m.key("/")
    for ch in "we":
        m.key(ch)
    assert [s["name"] for s in m.sessions()] == ["web"]
    m.key("\n")
    m.key("q")  # clears the filter first
    assert len(m.sessions()) == 3
    m.key("f")
    assert [s["name"] for s in m.sessions()] == ["api", "docs"]  # with agents
    m.key("f")
    assert [s["name"] for s in m.sessions()] == ["api", "docs"]  # needing attention or active
    m.key("f")
    assert m.filter_mode == "all"


def test_theme_picker_and_help():
    m = os_.SidebarModel()
    m.set_state(snapshot(("a", [])))
    m.key("t")
    assert m.mode == "theme"
    m.key("j")
    assert m.key("\n") == [("ui", {"theme": sorted(os_.THEMES)[(sorted(os_.THEMES).index("catppuccin-mocha") + 1)]})]
    m.key("?")
    assert any("switch" in l for l in texts(os_.render(m, 40, 20)))
    m.key("x")
    assert m.mode == "list"


def test_the_theme_picker_opened_before_the_first_state_marks_the_current_theme_once_it_arrives():
    """t pressed while the sidebar still says "connecting…": the picker follows the state's theme
    until the user moves it (it marked the default theme, and Enter would have picked it)."""
    m = os_.SidebarModel()
    m.key("t")
    names = sorted(os_.THEMES)
    assert "> " + os_.DEFAULT_THEME in texts(os_.render(m, 40, 30))
    state = snapshot(("a", []))
    state["ui"] = {"theme": "nord"}
    m.set_state(state)
    assert "> nord" in texts(os_.render(m, 40, 30))
    m.key("k")
    state["ui"] = {"theme": "dracula"}
    m.set_state(state)  # moved: the user's row holds
    assert "> " + names[names.index("nord") - 1] in texts(os_.render(m, 40, 30))
    assert m.key("\n") == [("ui", {"theme": names[names.index("nord") - 1]})]


def test_every_key_in_the_help_is_a_key_of_the_sidebar():
    """The help listed "o g" and "o r" beside the sidebar's keys (tmux's prefix o g / o r): o in the
    sidebar opens a port. Each key of the help's key column is one the sidebar takes; the prefix
    keys are said apart."""
    names = {"Enter": "\n", "Tab": "\t", "Esc": "\x1b"}
    for column, _ in os_.HELP_KEYS:
        for k in (column.split("/") if column != "/" else ["/"]):
            if k == "1-9":
                continue
            k = names.get(k, k)
            assert k in os_.SidebarModel.LIST_KEYS, (column, k)
    m = os_.SidebarModel()
    m.mode = "help"
    assert "from any pane: prefix o g the agents popup" in " ".join(texts(os_.render(m, 200, 80)))


def test_mouse_click_and_wheel():
    m = os_.SidebarModel()
    m.set_state(snapshot(("a", []), ("b", [])))
    rows = os_.render(m, 30, 20)
    row_b = next(i for i, r in enumerate(rows) if r[0] == ("session", "b"))
    assert m.click(row_b, rows) == [] and m.selected == ("session", "b")
    assert m.click(row_b, rows, double=True) == [("switch", "b")]
    m.wheel(-1)
    assert m.selected == ("session", "a")


def test_colours_fall_back_to_256_and_8():
    assert os_.rgb_to_256((0, 0, 0)) == 16 and os_.rgb_to_256((255, 255, 255)) == 231
    mocha = os_.THEMES["catppuccin-mocha"]
    got = {k: os_.rgb_to_8(os_.hex_to_rgb(mocha[k])) for k in ("error", "waiting", "done", "running", "accent")}
    assert got == {"error": 1, "waiting": 3, "done": 2, "running": 6, "accent": 4}  # pastels keep their hue
    theme = os_.resolve_theme("nord", {"accent": "#ff0000", "bogus": "#000000", "fg": "not-a-colour"})
    assert theme["accent"] == "#ff0000" and theme["fg"] == os_.THEMES["nord"]["fg"]
    for name in ("catppuccin-mocha", "catppuccin-latte", "tokyo-night", "gruvbox-dark", "nord", "dracula",
                 "one-dark", "solarized-light"):
        assert set(os_.THEMES[name]) == set(os_.THEME_KEYS)


def test_even_layout_checksum_matches_tmux(tmux):
    tmux.run("split-window", "-h", "-t", "=main:0")
    tmux.run("split-window", "-h", "-t", "=main:0")
    panes = [int(p[1:]) for p in tmux.run("list-panes", "-t", "=main:0", "-F", "#{pane_id}").split()]
    layout = os_.even_layout(160, 40, (panes[0], 32), panes[1:])
    tmux.run("select-layout", "-t", "=main:0", layout)  # tmux refuses a layout whose checksum is wrong
    widths = tmux.run("list-panes", "-t", "=main:0", "-F", "#{pane_width}").split()
    assert widths[0] == "32" and abs(int(widths[1]) - int(widths[2])) <= 1


# ---- real tmux ---------------------------------------------------------------------------------

def panes(tmux):
    out = tmux.run("list-panes", "-a", "-F", "#{session_name}\t#{window_id}\t#{pane_id}\t#{pane_width}\t"
                                             "#{@opensessions-sidebar}\t#{pane_current_command}")
    return [dict(zip(("session", "window", "pane", "width", "sidebar", "cmd"), l.split("\t")))
            for l in out.splitlines()]


def sidebars(tmux, session=None):
    return [p for p in panes(tmux) if p["sidebar"] == "1" and (session is None or p["session"] == session)]


def windows(tmux, session):
    """Window ids of a session in tmux's index order."""
    return tmux.run("list-windows", "-t", "=" + session, "-F", "#{window_id}").split()


def screen(tmux, pane):
    return tmux.run("capture-pane", "-p", "-t", pane)


def listed(tmux, pane):
    """Session names in the sidebar's list rows ('▌1 name' or ' 2 name')."""
    out = []
    for line in screen(tmux, pane).splitlines():
        if len(line) > 3 and line[1].isdigit() and line[2] == " ":
            out.append(line[3:].split()[0] if line[3:].split() else "")
    return out


@pytest.fixture
def shown(server, tmux):
    tmux.run("new-window", "-t", "=main")
    tmux.new_session("work")
    r = server.cli("toggle")
    assert r.returncode == 0, r.stderr
    retry_until(lambda: len(sidebars(tmux)) == 3, timeout=5)
    for p in sidebars(tmux):
        retry_until(lambda: "opensessions" in screen(tmux, p["pane"]), timeout=5)
    return server


def test_toggle_shows_and_hides_in_every_window(shown, tmux):
    assert {p["window"] for p in sidebars(tmux)} == set(windows(tmux, "main") + windows(tmux, "work"))
    assert all(p["width"] == "32" for p in sidebars(tmux))
    pids_before = {p["pane"] for p in sidebars(tmux)}
    assert shown.cli("toggle").returncode == 0
    retry_until(lambda: sidebars(tmux, "main") == [] and sidebars(tmux, "work") == [])
    assert {p["pane"] for p in sidebars(tmux, os_.STASH_SESSION)} == pids_before  # parked, still running
    assert all(s["name"] != os_.STASH_SESSION for s in shown.state()["sessions"])
    assert shown.cli("toggle").returncode == 0
    retry_until(lambda: len(sidebars(tmux, "main")) == 2 and len(sidebars(tmux, "work")) == 1)
    assert {p["pane"] for p in sidebars(tmux)} == pids_before  # the same processes came back


def test_new_window_gets_one_and_width_holds(shown, tmux):
    tmux.run("new-window", "-t", "=work")
    retry_until(lambda: len(sidebars(tmux, "work")) == 2)
    win = windows(tmux, "work")[-1]
    tmux.run("split-window", "-h", "-t", win)
    tmux.run("split-window", "-v", "-t", win)
    retry_until(lambda: all(p["width"] == "32" for p in sidebars(tmux, "work")))
    geometry = lambda: tmux.run("list-panes", "-t", win, "-F", "#{pane_id} #{pane_left},#{pane_top} "
                                "#{pane_width}x#{pane_height} #{@opensessions-sidebar}")
    tmux.run("resize-window", "-t", win, "-x", "200")
    retry_until(lambda: [p["width"] for p in sidebars(tmux, "work") if p["window"] == win] == ["32"],
                message="after resize-window: " + geometry())
    tmux.run("select-layout", "-t", win, "tiled")
    retry_until(lambda: [p["width"] for p in sidebars(tmux, "work") if p["window"] == win] == ["32"]
                and "0,0 32x40" in geometry(), message="after select-layout tiled")
    assert "0,0 32x40 1" in geometry(), geometry()


def test_closing_last_work_pane_never_kills_the_session(shown, tmux):
    work_pane = next(p["pane"] for p in panes(tmux) if p["session"] == "work" and p["sidebar"] != "1")
    tmux.run("kill-pane", "-t", work_pane)
    # the session's only window keeps living with a fresh shell beside its sidebar
    retry_until(lambda: len([p for p in panes(tmux) if p["session"] == "work" and p["sidebar"] != "1"]) == 1)
    assert len(sidebars(tmux, "work")) == 1
    # in a session with two windows, a window left with only its sidebar closes
    second = windows(tmux, "main")[-1]
    victim = next(p["pane"] for p in panes(tmux) if p["window"] == second and p["sidebar"] != "1")
    tmux.run("kill-pane", "-t", victim)
    retry_until(lambda: second not in windows(tmux, "main"))
    assert windows(tmux, "main")


def test_keys_switch_reorder_hide_create_and_kill(shown, tmux, attach, env):
    attach("=main")
    retry_until(lambda: shown.state()["clients"])
    sb = next(p["pane"] for p in sidebars(tmux, "main") if p["window"] == windows(tmux, "main")[0])
    def client():
        rows = [l.split(" ", 1) for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{session_name}").splitlines()]
        return " ".join(name for control, name in rows if control == "0")
    tmux.run("send-keys", "-t", sb, "2")
    retry_until(lambda: client() == "work")
    tmux.run("switch-client", "-t", "=main")
    retry_until(lambda: client() == "main")
    # "2" also selected work: K moves it up
    tmux.run("send-keys", "-t", sb, "K")
    retry_until(lambda: shown.state()["ui"]["order"] == ["work", "main"])
    retry_until(lambda: screen(tmux, sb).splitlines()[1][1:].startswith("1 work"))
    # hide work, then show it again
    tmux.run("send-keys", "-t", sb, "d")
    retry_until(lambda: shown.state()["ui"]["hidden"] == ["work"])
    retry_until(lambda: listed(tmux, sb) == ["main"])
    tmux.run("send-keys", "-t", sb, "u")
    retry_until(lambda: shown.state()["ui"]["hidden"] == [] and listed(tmux, sb) == ["work", "main"])
    # create a session through the two prompts (name, then directory)
    tmux.run("send-keys", "-t", sb, "n")
    tmux.run("send-keys", "-t", sb, "-l", "fresh")
    tmux.run("send-keys", "-t", sb, "Enter")
    retry_until(lambda: "directory:" in screen(tmux, sb))
    for _ in range(60):
        tmux.run("send-keys", "-t", sb, "BSpace")
    tmux.run("send-keys", "-t", sb, "-l", env.base)
    tmux.run("send-keys", "-t", sb, "Enter")
    retry_until(lambda: "fresh" in tmux.run("list-sessions", "-F", "#{session_name}").split())
    fresh_pane = next(p["pane"] for p in panes(tmux) if p["session"] == "fresh" and p["sidebar"] != "1")
    assert tmux.run("display-message", "-p", "-t", fresh_pane, "#{pane_current_path}").strip() == env.base
    retry_until(lambda: client() == "fresh")
    # the list is now work, main, fresh: 3 selects fresh, x asks, n cancels, y kills
    retry_until(lambda: listed(tmux, sb) == ["work", "main", "fresh"])
    tmux.run("send-keys", "-t", sb, "3")
    tmux.run("send-keys", "-t", sb, "x")
    retry_until(lambda: "kill session fresh?" in screen(tmux, sb))
    tmux.run("send-keys", "-t", sb, "n")
    retry_until(lambda: "cancelled" in screen(tmux, sb))
    tmux.run("send-keys", "-t", sb, "x")
    retry_until(lambda: "kill session fresh?" in screen(tmux, sb))
    tmux.run("send-keys", "-t", sb, "y")
    retry_until(lambda: "fresh" not in tmux.run("list-sessions", "-F", "#{session_name}").split())
    retry_until(lambda: client() == "main")  # the client viewing it was moved, not detached


def test_screen_shows_what_state_holds(shown, tmux):
    shown.post("/set-status", {"session": "work", "text": "Deploying", "tone": "warn"})
    pane = shown.session("main")["windows"][0]["panes"][0]["id"]
    shown.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t1", "paneId": pane,
                                    "threadName": "fix login"})
    sb = sidebars(tmux, "main")[0]["pane"]
    retry_until(lambda: "[Deploying]" in screen(tmux, sb))
    text = retry_until(lambda: (lambda s: s if "fix login" in s else None)(screen(tmux, sb)))
    assert "◉" in text and "claude" in text and "waiting" in text


def test_narrow_resize_and_server_restart_are_survived(shown, tmux, env):
    sb = sidebars(tmux, "work")[0]["pane"]
    assert shown.post("/ui", {"width": 20})[0] == 204  # every sidebar goes to 20 columns
    retry_until(lambda: all(p["width"] == "20" for p in sidebars(tmux)))
    text = retry_until(lambda: (lambda s: s if "work" in s and "main" in s else None)(screen(tmux, sb)))
    assert all(len(line.rstrip()) <= 20 for line in text.splitlines())
    assert text.splitlines()[0].startswith("opensessions")
    assert sidebars(tmux, "work")[0]["pane"] == sb  # the same process, redrawn, not restarted
    old_pid = shown.proc.pid
    shown.stop()
    # the sidebar notices, starts a server on demand, and reconnects to it
    info = retry_until(lambda: (lambda i: i if i and i["pid"] != old_pid else None)(shown.runtime.live_info()),
                       timeout=15)
    try:
        tmux.new_session("after")
        retry_until(lambda: "after" in listed(tmux, sb), timeout=10)
        assert sidebars(tmux, "work")[0]["pane"] == sb  # the same process, reconnected
    finally:
        os.kill(info["pid"], 15)


def test_a_sidebar_runs_the_new_code_after_an_update(env, tmux, tmp_path):
    """An update (the plugin writes the new program over the old and restarts the server): a
    sidebar started before it starts again on the new code, in the same pane and process. A
    restart without an update starts no sidebar again."""
    prog = str(tmp_path / "plugin" / "opensessions.py")
    os.makedirs(os.path.dirname(prog))
    shutil.copy(SOURCE, prog)
    restarts_log = os.path.join(env.vars["XDG_STATE_HOME"], "opensessions", "sidebar.log")

    def restarts():
        try:
            with open(restarts_log) as f:
                return f.read().count("was updated; starting again on its new code")
        except OSError:
            return 0

    first = ServerProc(env, tmux, argv=[PYTHON, prog])
    cli = first.cli  # the program at prog, on this tmux, whichever server runs
    try:
        assert first.cli("toggle").returncode == 0
        sb = retry_until(lambda: sidebars(tmux, "main"))[0]["pane"]
        pid = tmux.run("display-message", "-p", "-t", sb, "#{pane_pid}").strip()
        retry_until(lambda: "main" in listed(tmux, sb), timeout=10)
        # the update: the new program renamed over the old one, then the server restarted on it
        with open(SOURCE) as f:
            new = f.read() + "\n# an update\n"
        with open(prog + ".new", "w") as f:
            f.write(new)
        os.replace(prog + ".new", prog)
        first.stop()
        assert cli("start").returncode == 0
        retry_until(lambda: restarts() == 1, timeout=15)
        tmux.new_session("after")
        retry_until(lambda: "after" in listed(tmux, sb), timeout=15)
        assert tmux.run("display-message", "-p", "-t", sb, "#{pane_pid}").strip() == pid  # the same process
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            assert f.read().split(b"\0")[1:4] == [b"-S", prog.encode(), b"sidebar"]
        # stopped and started again, no update: the sidebar reconnects and keeps running
        assert cli("stop").returncode == 0 and cli("start").returncode == 0
        tmux.new_session("later")
        retry_until(lambda: "later" in listed(tmux, sb), timeout=15)
        assert restarts() == 1
    finally:
        first.stop()
        info = first.runtime.live_info()
        if info:
            os.kill(info["pid"], 15)


def test_focus_layout_and_switch_commands(shown, tmux):
    win = windows(tmux, "main")[0]
    assert shown.cli("focus", "-w", win).returncode == 0
    active = tmux.run("display-message", "-p", "-t", win, "#{pane_id}").strip()
    assert active in {p["pane"] for p in sidebars(tmux, "main")}
    tmux.run("split-window", "-h", "-t", win)
    r = shown.cli("layout", "-w", win)
    assert r.returncode == 0, r.stderr
    widths = [int(p["width"]) for p in panes(tmux) if p["window"] == win and p["sidebar"] != "1"]
    assert len(widths) == 2 and abs(widths[0] - widths[1]) <= 1
    assert [p["width"] for p in sidebars(tmux) if p["window"] == win] == ["32"]
    r = shown.cli("switch", "9")
    assert r.returncode == 1 and b"no session number 9" in r.stderr


def test_broken_ui_file_gives_message_and_defaults(env, tmux):
    path = os.path.join(env.home, ".config", "opensessions", "ui.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{oops")
    s = ServerProc(env, tmux)
    try:
        ui = s.state()["ui"]
        assert ui["theme"] == "catppuccin-mocha" and "not valid JSON" in ui["error"]
        assert open(path).read() == "{oops"  # not replaced until the user changes something
        assert s.post("/ui", {"theme": "nord"})[0] == 204
        assert json.load(open(path))["theme"] == "nord"
        assert s.post("/ui", {"width": 5})[0] == 400
    finally:
        s.stop()


def test_a_ui_file_with_bad_values_keeps_the_good_ones_and_says_so(env, tmux):
    """{"theme": "nope", "width": -5} is said (log, /state, the sidebar's footer, `status`), not
    silently loaded as the defaults; the valid field is kept."""
    path = os.path.join(env.home, ".config", "opensessions", "ui.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({"theme": "nope", "width": -5, "muted": ["work"]}, f)
    s = ServerProc(env, tmux)
    try:
        ui = s.state()["ui"]
        assert (ui["muted"], ui["theme"], ui["width"]) == (["work"], "catppuccin-mocha", 32)
        assert "'theme' must be one of" in ui["error"] and "'width' must be" in ui["error"]
        assert "'theme' must be one of" in s.log()
        r = s.cli("status")
        assert r.returncode == 0 and b"'width' must be" in r.stderr
        m = os_.SidebarModel()
        m.set_state(dict(s.state(), sessions=[]))
        footer = [text for _, pieces in os_.render(m, 40, 20)[-3:] for text, _ in pieces]
        assert any("ui.json" in text for text in footer)
        assert json.load(open(path))["theme"] == "nope"  # the user's file, until they change something
    finally:
        s.stop()


def test_position_right_moves_every_sidebar(shown, tmux):
    assert shown.post("/ui", {"position": "right"})[0] == 204
    def at_right():
        out = tmux.run("list-panes", "-a", "-F", "#{session_name} #{@opensessions-sidebar} #{pane_left} "
                                                 "#{pane_width} #{window_width}")
        rows = [l.split() for l in out.splitlines()]
        sbs = [r for r in rows if len(r) == 5 and r[1] == "1" and not r[0].startswith("_os_")]
        return len(sbs) == 3 and all(int(r[2]) + int(r[3]) == int(r[4]) for r in sbs)
    retry_until(at_right, timeout=10)
