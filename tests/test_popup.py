"""The agents popup (prefix o g): every thread grouped by what needs you, a preview of the selected
thread, reply keys (also in the sidebar), Enter to go there; opened with display-popup."""
import os
import subprocess
import time

import pytest

from conftest import PYTHON, SCRIPT, requires_tmux, retry_until

import opensessions as o


def thread(agent, tid, status, unseen=False, updated=0, detail=None, pane="%1", title=None):
    return {"agent": agent, "id": tid, "status": status, "unseen": unseen, "updatedAt": updated,
            "detail": detail, "title": title or tid, "pane": pane, "attempt": None}


def state():
    return {"ui": {}, "clients": [], "sessions": [
        {"name": "api", "windows": [], "threads": [
            thread("claude", "c-done-seen", "done", updated=5),
            thread("codex", "x-wait-new", "waiting", updated=9, detail="permission: Bash", pane="%2"),
            thread("opencode", "o-run", "running", updated=7),
        ]},
        {"name": "web", "windows": [], "threads": [
            thread("claude", "c-wait-old", "waiting", updated=3, detail="permission prompt", pane="%5"),
            thread("codex", "x-err", "error", updated=4, detail="HTTP 500"),
            thread("claude", "c-done-unseen", "done", unseen=True, updated=6),
            thread("opencode", "o-int-unseen", "interrupted", unseen=True, updated=8),
        ]},
        {"name": "secret", "hidden": True, "windows": [], "threads": [thread("claude", "c-hidden", "waiting")]},
    ]}


def test_groups_by_what_needs_you():
    groups = o.popup_groups(state())
    assert [(g, [t["id"] for _, t in rows]) for g, rows in groups] == [
        ("waiting", ["c-wait-old", "x-wait-new"]),  # oldest first, as `next` visits them
        ("error", ["x-err"]),
        ("finished unseen", ["o-int-unseen", "c-done-unseen"]),
        ("running", ["o-run"]),
        ("idle", ["c-done-seen"]),
    ]
    assert o.popup_groups({"sessions": []}) == [] and o.popup_groups(None) == []


def popup_model():
    m = o.SidebarModel(popup=True)
    m.set_state(state())
    return m


def test_popup_lists_every_thread_and_enter_goes_there_and_closes():
    m = popup_model()
    assert m.selected == ("thread", "web", "claude", "c-wait-old")
    assert len(m.items()) == 7
    m.key("j")
    assert m.selected == ("thread", "api", "codex", "x-wait-new")
    assert m.key("\n") == [("switch-pane", "api", "%2"), ("quit",)]
    assert m.key("q") == [("quit",)] and m.key("\x1b") == [("quit",)]
    assert m.key("3") == []  # session numbers belong to the sidebar


def test_reply_keys_in_the_popup():
    m = popup_model()
    assert m.key("y") == [("reply", "claude:c-wait-old", "approve", None)]
    assert m.key("Y") == [("reply", "claude:c-wait-old", "approve-always", None)]
    assert m.key("N") == [("reply", "claude:c-wait-old", "deny", None)]
    m.selected = ("thread", "api", "opencode", "o-run")
    assert m.key("y") == [] and "not waiting" in m.message
    m.selected = ("thread", "web", "claude", "c-done-unseen")
    assert m.key("i") == [] and m.mode == "prompt"
    for ch in "run the tests":
        m.key(ch)
    assert m.key("\n") == [("reply", "claude:c-done-unseen", "text", "run the tests")]
    assert m.mode == "list"
    m.key("i")
    assert m.key("\x1b") == [] and m.mode == "list"  # Esc cancels, nothing sent


def test_reply_keys_in_the_sidebar():
    m = o.SidebarModel(own_session="web")
    m.set_state(state())
    assert m.key("y") == [] and "select an agent thread" in m.message  # a session is selected
    m.selected = ("thread", "web", "claude", "c-wait-old")
    assert m.key("N") == [("reply", "claude:c-wait-old", "deny", None)]
    assert o.render_view(m, 32, 60)[1]["preview"] == ("thread", "web", "claude", "c-wait-old")  # room for one
    assert o.render_view(m, 32, 8)[1]["preview"] is None  # no room: nothing is read
    m.key("?")
    help_lines = text_of(o.render(m, 32, 80))
    assert any("approve/always/deny" in l for l in help_lines) and any("prefix o g" in l for l in help_lines)


def test_render_writes_nothing_into_the_model():
    """render() is pure: what it scrolled to comes back in render_view's view for the app to keep."""
    m = popup_model()
    m.key("?")
    before = dict(vars(m))
    for _ in range(30):
        m.key(" ")  # ten rows a press: far past the help's end
    scrolled = dict(vars(m))
    rows, view = o.render_view(m, 30, 10)
    assert vars(m) == scrolled and view["help_scroll"] < scrolled["help_scroll"]  # clamped in the view only
    m.viewed(view)
    assert m.help_scroll == view["help_scroll"] and before["help_scroll"] == 0


def text_of(rows):
    return ["".join(t for t, _ in r[1]) for r in rows]


def test_popup_render_groups_what_for_and_preview():
    m = popup_model()
    rows, view = o.render_view(m, 80, 40)
    lines = text_of(rows)
    assert lines[0].startswith("agents")
    for head in ("waiting (2)", "error (1)", "finished unseen (2)", "running (1)", "idle (1)"):
        assert head in lines, head
    assert "    needs: permission prompt" in lines and "    needs: permission: Bash" in lines
    assert "(reading the pane…)" in lines
    assert view["preview"] == ("thread", "web", "claude", "c-wait-old")
    m.viewed(view)
    assert m.preview_wanted == view["preview"]  # what the app reads the pane for
    m.set_preview(view["preview"], ["$ echo hi > hi.txt", " Do you want to proceed?", " ❯ 1. Yes"])
    lines = text_of(o.render(m, 80, 40))
    assert lines[-3:] == ["$ echo hi > hi.txt", " Do you want to proceed?", " ❯ 1. Yes"]
    m.set_preview(view["preview"], error="the thread has no pane")
    assert "the thread has no pane" in text_of(o.render(m, 80, 40))
    # a short popup keeps the selected row and a preview on screen
    m.selected = ("thread", "api", "claude", "c-done-seen")
    lines = text_of(o.render(m, 80, 12))
    assert any("c-done-seen" in l for l in lines) and len(lines) <= 12


def test_binding_and_popup_command():
    binds = o.tmux_bindings("os", {})
    g = [b for b in binds if b[:2] == ("opensessions", "g")]
    assert g and "popup-open -c '#{client_name}'" in g[0][-1]
    assert [b for b in o.tmux_bindings("os", {"@opensessions-popup-key": "a"}) if b[:2] == ("opensessions", "a")]
    new = o.popup_command("py /x/o#s.py", "/dev/pts/3", "3.3a", "80%", "75%")
    assert new == ["display-popup", "-c", "/dev/pts/3", "-E", "-w", "80%", "-h", "75%",
                   "py /x/o##s.py popup -c /dev/pts/3"]
    old = o.popup_command("py /x/o.py", "/dev/pts/3", "tmux 3.1c", "80%", "75%")
    assert old[:2] == ["new-window", "-t"] and old[-1] == "py /x/o.py popup -c /dev/pts/3"
    assert o.popup_command("me", "c", "next-3.4", "1", "1")[0] == "display-popup"


def children_args(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    with open("/proc/%s/cmdline" % name, "rb") as f:
                        out.append(f.read().replace(b"\0", b" ").decode())
            except (OSError, ValueError, IndexError):
                pass
    return out


@requires_tmux
def test_popup_opens_on_a_real_client_and_q_closes_it(env, tmux, server, attach):
    client = attach("main")
    name = retry_until(lambda: [n for n in tmux.run("list-clients", "-F", "#{client_name}").split()
                                if n.startswith("/dev/")])[0]  # not the server's control client
    p = server.cli("popup-open", "-c", name)
    assert p.returncode == 0, p.stderr
    pid = tmux.pid()
    retry_until(lambda: [a for a in children_args(pid) if "popup -c %s" % name in a], timeout=10)
    retry_until(lambda: b"agents" in client.output and b"no agent threads" in client.output, timeout=15)
    os.write(client.master, b"q")
    retry_until(lambda: not [a for a in children_args(pid) if "popup -c %s" % name in a], timeout=10)


def test_session_expands_to_windows_and_panes_and_enter_jumps_there():
    st = state()
    st["sessions"][1]["windows"] = [
        {"id": "@3", "index": 0, "name": "code", "active": True, "panes": [
            {"id": "%9", "command": "python3", "sidebar": True},
            {"id": "%5", "command": "claude", "sidebar": False},
            {"id": "%6", "command": "zsh", "sidebar": False}]},
        {"id": "@4", "index": 1, "name": "logs", "active": False, "panes": [
            {"id": "%7", "command": "tail", "sidebar": False}]},
    ]
    m = o.SidebarModel(own_session="web")
    m.set_state(st)
    tree = [i for i in m.items() if i[0] in ("window", "pane")]
    assert tree == [("window", "web", "@3"), ("pane", "web", "%5"), ("pane", "web", "%6"),
                    ("window", "web", "@4"), ("pane", "web", "%7")]  # the sidebar pane is left out
    lines = text_of(o.render(m, 40, 60))
    assert "0:code *" in lines and "1:logs" in lines and "  %6 zsh" in lines
    assert any(l.startswith("  %5 claude") and "claude waiting" in l for l in lines)  # agent and status
    m.selected = ("pane", "web", "%6")
    assert m.key("\n") == [("switch-pane", "web", "%6")]
    m.selected = ("window", "web", "@4")
    assert m.key("\n") == [("switch-pane", "web", "@4")]
    m.selected = ("session", "api")  # another session: its tree, not this one's
    assert not [i for i in m.items() if i[0] == "pane" and i[1] == "web"]


def test_the_popup_has_its_own_keys_and_help():
    m = popup_model()
    before = m.selected
    for k in ("x", "d", "u", "n", "t", "/", "f", "m", "o", "K", "J", "\t", "1"):  # the sidebar's keys
        assert m.key(k) == [] and m.mode == "list" and m.message is None, k
    assert m.selected == before and m.filter_mode == "all"
    m.key("?")
    lines = text_of(o.render(m, 60, 60))
    assert "q/Esc close the popup" in lines and "Enter go to the thread's pane (closes the popup)" in lines
    assert not any("kill" in l or "session" in l for l in lines), lines
    assert "◉ waiting for you" in lines
    m.key("q")  # closes the help, not the popup
    assert m.mode == "list"
    assert m.key("q") == [("quit",)]


class Terminal(object):
    """A real client attached inside an outer tmux, whose pane is the client's terminal: the
    screen it shows, popups included, is read with capture-pane (as a user sees it)."""

    def __init__(self, tmux, target, width=120, height=36):
        self.tmux = tmux
        self.outer = os.path.join(tmux.env.base, "outer.sock")
        cmd = "env -u TMUX tmux -S %s attach -t %s" % (tmux.socket, target)
        subprocess.run(["tmux", "-S", self.outer, "-f", "/dev/null", "new-session", "-d", "-s", "term", "-x",
                        str(width), "-y", str(height), cmd], env=dict(tmux.env.vars, TERM="xterm-256color"),
                       check=True, timeout=10)
        self.name = retry_until(lambda: [n for c, n in (l.split(" ", 1) for l in tmux.run(
            "list-clients", "-F", "#{client_control_mode} #{client_name}").splitlines()) if c == "0"])[0]

    def screen(self):
        return subprocess.run(["tmux", "-S", self.outer, "capture-pane", "-p", "-t", "term"], env=self.tmux.env.vars,
                              stdout=subprocess.PIPE, timeout=10).stdout.decode()

    def wait(self, want, message):
        last = []

        def look():
            last[:] = [self.screen()]
            return last[0] if want(last[0]) else None
        try:
            return retry_until(look, timeout=10)
        except AssertionError:
            raise AssertionError("%s; the screen:\n%s" % (message, last[0]))

    def keys(self, *keys):
        for k in keys:
            subprocess.run(["tmux", "-S", self.outer, "send-keys", "-t", "term", k], env=self.tmux.env.vars,
                           check=True, timeout=10)

    def close(self):
        subprocess.run(["tmux", "-S", self.outer, "kill-server"], env=self.tmux.env.vars, timeout=10)


@pytest.fixture
def terminal(tmux):
    made = []

    def open_(target):
        t = Terminal(tmux, target)
        made.append(t)
        return t
    yield open_
    for t in made:
        t.close()


@requires_tmux
def test_in_a_real_popup_question_mark_shows_its_keys_and_x_kills_nothing(env, tmux, server, terminal):
    pane = server.session("main")["windows"][0]["panes"][0]["id"]
    assert server.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t1", "paneId": pane,
                                            "threadName": "fix login", "detail": "Bash: rm -rf build"})[0] == 204
    term = terminal("=main")
    assert server.cli("popup-open", "-c", term.name).returncode == 0
    term.wait(lambda s: "waiting (1)" in s and "fix login" in s, "no popup")
    term.keys("?")
    text = term.wait(lambda s: "close the popup" in s, "no popup help")
    keep("popup-help", text)
    assert "kill the session" not in text and "leave the sidebar" not in text
    term.keys("q")  # closes the help
    term.wait(lambda s: "waiting (1)" in s and "close the popup" not in s, "the help did not close")
    # the sidebar's keys do nothing here: had x asked to kill, or t opened the themes, or n a prompt,
    # the ? after them would not bring the help back
    term.keys("x", "d", "t", "n", "/", "?")
    text = term.wait(lambda s: "close the popup" in s, "a sidebar key acted in the popup")
    assert "kill session" not in text
    assert server.state()["ui"]["hidden"] == [] and "main" in tmux.run("list-sessions", "-F", "#{session_name}")
    term.keys("q", "q")
    term.wait(lambda s: "waiting (1)" not in s, "the popup did not close")


def keep(name, text):
    d = os.environ.get("OPENSESSIONS_SHOW")
    if d:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name + ".txt"), "w") as f:
            f.write(text)
