"""The sidebar as a user sees it in the first ten minutes: each through a real client
(sidebar panes in real tmux, keys through an attached client's terminal), read with capture-pane.

Set OPENSESSIONS_SHOW=DIR to keep the screens these tests read in DIR (for notes)."""
import os
import subprocess

import pytest

import opensessions as os_
from conftest import IMPORT_PATH, PYTHON, SCRIPT, retry_until
from test_sidebar import shown, sidebars, screen, snapshot, th, texts  # noqa: F401  (shown: a fixture)

LONG_BRANCH = "feature/a-very-long-branch-name-for-the-login-rework"


def keep(name, text):
    d = os.environ.get("OPENSESSIONS_SHOW")
    if d:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, name + ".txt"), "w") as f:
            f.write(text)


def git_repo(path, branch):
    os.makedirs(path, exist_ok=True)
    subprocess.run(["git", "init", "-q", path], check=True)
    subprocess.run(["git", "-C", path, "symbolic-ref", "HEAD", "refs/heads/" + branch], check=True)
    return path


def metadata(server, session):
    for argv in (("set-status", session, "Deploying to staging", "--tone", "warn"),
                 ("set-progress", session, "3", "10", "--label", "services"),
                 ("log", session, "Tests passed on all three platforms", "--source", "ci", "--tone", "success")):
        r = server.cli(*argv)
        assert r.returncode == 0, r.stderr


def grab(tmux, pane, want, message=None):
    """The pane's screen once `want(lines)` holds."""
    last = []

    def look():
        last[:] = [screen(tmux, pane)]
        return last[0] if want(last[0].splitlines()) else None
    try:
        return retry_until(look, timeout=10)
    except AssertionError:
        raise AssertionError("%s; the screen:\n%s" % (message or "screen of %s never matched" % pane, last[0]))


def sidebar_of(tmux, session):
    """The session's running sidebar (a window no client shows may hold a sleeping placeholder,
    and a client coming to it brings a running sidebar in: ask after the client came)."""
    return retry_until(lambda: [p for p in sidebars(tmux, session) if p["cmd"] != "sleep"], timeout=10)[0]["pane"]


def client_sidebar(tmux, session, want):
    """The running sidebar in `session`'s window once its screen satisfies `want(lines)`, found
    again on each look: a client coming to a window brings a running sidebar with it (the one of the
    window it left, swapped in), so the pane there can change after the client arrived; keys sent
    by pane id before then go to a sidebar still in the window the client left."""
    last = {}

    def look():
        for p in sidebars(tmux, session):
            if p["cmd"] != "sleep":
                last[p["pane"]] = screen(tmux, p["pane"])
                if want(last[p["pane"]].splitlines()):
                    return p["pane"]
        return None
    try:
        return retry_until(look, timeout=10)
    except AssertionError:
        raise AssertionError("no sidebar in %s matched; the screens: %r" % (session, last))


@pytest.fixture
def proj(env, tmux, server):
    """A session `proj` on a long branch with a status pill, a progress bar and a log line,
    sidebars shown in every window."""
    tmux.new_session("proj", cwd=git_repo(os.path.join(env.home, "proj"), LONG_BRANCH))
    metadata(server, "proj")
    assert server.cli("toggle").returncode == 0
    sb = sidebar_of(tmux, "proj")
    grab(tmux, sb, lambda lines: any("[Deploying" in l for l in lines))
    return sb


@pytest.mark.parametrize("width", [20, 32, 60])
def test_metadata_rows_stay_visible_at_every_width(proj, server, tmux, width):
    assert server.post("/ui", {"width": width})[0] == 204

    def fits(lines):
        # drawn at this width (not tmux's cut of the old screen): the log line ends with its age at the edge,
        # and the detail panel under the rule is drawn too (a capture can fall between the two)
        return (lines and all(len(l) <= width for l in lines) and any(l.startswith("─" * width) for l in lines)
                and any(l.startswith("   ✓ ci:") and len(l) == width and l.endswith("s") for l in lines)
                and "Deploying" in " ".join(lines[[l.startswith("─") for l in lines].index(True):]))
    text = grab(tmux, proj, fits, "not redrawn at width %d" % width)
    keep("sidebar-%d" % width, text)
    lines = text.splitlines()
    row = lines.index(next(l for l in lines if l[1:].startswith("2 proj")))
    branch, pill, bar, log = lines[row + 1:row + 5]
    assert branch.startswith("   feature/a-very") and (branch.endswith("…") or LONG_BRANCH in branch)
    assert pill.startswith("   [Deploying") and (pill.rstrip().endswith("]") or pill.endswith("…"))
    assert "█" in bar and "░" in bar and " 30% " in bar and "services".startswith(bar.split("% ")[1].rstrip("…"))
    assert log.startswith("   ✓ ci: Tests") and log.rstrip()[-1] == "s"  # the age ("0s") is kept at the end
    # the detail panel has all of it, wrapped rather than cut
    panel = " ".join(l.strip() for l in lines[lines.index(next(l for l in lines if l.startswith("─"))):])
    for words in ("status Deploying to staging", "progress 3/10 (30%) services",
                  "ci: Tests passed on all three platforms"):
        assert words in panel, (words, text)


def test_lang_c_draws_ascii_glyphs(env, tmux, server):
    # the terminal's locale is C: Python's UTF-8 mode would say UTF-8, the sidebar must not believe it
    tmux.run("set-environment", "-g", "LANG", "C")
    for name in ("LC_ALL", "LC_CTYPE"):
        tmux.run("set-environment", "-gu", name)
    tmux.new_session("proj", cwd=git_repo(os.path.join(env.home, "proj"), LONG_BRANCH))
    metadata(server, "proj")
    assert server.cli("toggle").returncode == 0
    sb = sidebar_of(tmux, "proj")
    text = grab(tmux, sb, lambda lines: any("[Deploying" in l for l in lines) and any(l.startswith("-" * 32)
                                                                                       for l in lines))
    keep("sidebar-32-LANG-C", text)
    assert all(ord(c) < 128 for c in text), text
    lines = text.splitlines()
    assert any(l.startswith(">2 proj <") for l in lines)
    assert any(l.startswith("   ##-----") and "30% services" in l for l in lines)
    assert any(l.startswith("   v ci: Tests passed") for l in lines)
    assert any(l.startswith("   feature/a-very-long-branch-n~") for l in lines)


@pytest.fixture
def one_event():
    """A stand-in server whose /events sends one state and then nothing, ever: whatever the
    sidebar draws after that, it draws by itself."""
    import json
    import socket
    import threading
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(4)
    conns = []

    def serve():
        while True:
            try:
                c, _ = lst.accept()
            except OSError:
                return
            conns.append(c)
            c.recv(65536)
            body = json.dumps(snapshot(("api", []), ("web", [])))
            c.sendall(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: %s\n\n" % body).encode())
    threading.Thread(target=serve, daemon=True).start()
    yield lst.getsockname()[1]
    lst.close()
    for c in conns:
        c.close()


def test_resize_redraws_without_waiting_for_an_event(env, tmux, one_event):
    tmux.run("new-session", "-d", "-s", "solo", "-x", "24", "-y", "20",
             "%s %s -S %s --port %d sidebar" % (PYTHON, SCRIPT, tmux.socket, one_event))
    pane = tmux.run("display-message", "-p", "-t", "=solo:", "#{pane_id}").strip()
    grab(tmux, pane, lambda lines: any(l == "─" * 24 for l in lines))
    # wider: tmux cannot make the longer separator out of the old screen, only a redraw can
    tmux.run("resize-window", "-t", "=solo:", "-x", "40")
    grab(tmux, pane, lambda lines: any(l == "─" * 40 for l in lines), "not redrawn after a resize")


def help_lines(tmux, sb, last):
    """Every line of the help (? pressed), scrolled through with j until `last` is on screen."""
    seen = []
    text = grab(tmux, sb, lambda lines: any("any other key" in l for l in lines))
    for _ in range(80):
        for l in text.splitlines():
            if l not in seen:
                seen.append(l)
        if any(last in l for l in text.splitlines()):
            return seen
        before = text
        tmux.run("send-keys", "-t", sb, "j")
        text = grab(tmux, sb, lambda lines: "\n".join(lines) != before)
    raise AssertionError("%r never came on screen; seen:\n%s" % (last, "\n".join(seen)))


def test_help_wraps_to_the_width_with_a_glyph_legend(shown, tmux):
    sb = sidebar_of(tmux, "work")
    tmux.run("send-keys", "-t", sb, "?")
    text = grab(tmux, sb, lambda lines: any("any other key" in l for l in lines))
    keep("help-32", text)
    assert text.splitlines()[-1].startswith("j/k scroll, any other key closes")  # the footer: always shown
    lines = help_lines(tmux, sb, "newest log line")
    keep("help-32-all", "\n".join(lines))
    assert all(len(l) <= 32 for l in lines)
    assert "Enter switch to the session or" in lines and "      thread" in lines
    for legend in ("◉ waiting for you", "● finished, not seen yet", "✓ finished", "✗ stopped on an error",
                   "⊘ interrupted", "↻ retrying after an error", "⠋ working", "○ idle"):
        assert legend in lines, legend
    # every mark a session's row can show, the separate unseen dot among them
    for legend in ("❯     the cursor (j/k move it)", "◂     the session you are in",
                   "1-9   its number: prefix o N", "$0.28 what its agents cost", "◉✓    a mark per agent thread:",
                   "●     apart: news you have not", "m     notifications muted",
                   "main* git branch; * uncommitted", "[..]  status pill (set-status)",
                   "██░   progress (set-progress)", "✓!✗i· newest log line, by tone"):
        assert any(l.startswith(legend) for l in lines), legend
    # which wins for the theme, and the prompts' keys
    assert "t     pick a theme (it holds" in lines and "      until @opensessions-theme" in lines
    assert any(l.startswith("typing: C-a/C-e start/end,") for l in lines)
    tmux.run("send-keys", "-t", sb, "x")
    grab(tmux, sb, lambda lines: not any("any other key" in l for l in lines))


def test_cursor_and_the_clients_session_look_different_and_help_is_hinted(shown, tmux, attach):
    client = attach("=work")
    retry_until(lambda: client_session(tmux) == "work")
    # it starts on its own session: the cursor and the session you are in on one row, ? help in the header
    sb = client_sidebar(tmux, "work", lambda lines: "❯2 work ◂" in lines and lines[0].startswith("opensessions"))
    text = screen(tmux, sb)
    assert text.splitlines()[0] == "opensessions" + " " * 14 + "? help"
    tmux.run("send-keys", "-t", sb, "Tab")  # the cursor to main: each mark stays on its own row
    text = grab(tmux, sb, lambda lines: "❯1 main" in lines and " 2 work ◂" in lines)
    keep("cursor-and-current", text)
    styled = tmux.run("capture-pane", "-p", "-e", "-t", sb).splitlines()
    sel = "48;5;%d" % os_.rgb_to_256(os_.hex_to_rgb(os_.THEMES["catppuccin-mocha"]["sel"]))
    assert sel in next(l for l in styled if "main" in l) and sel not in next(l for l in styled if "work ◂" in l)


def test_a_footer_message_goes_when_its_thread_changes(shown, tmux):
    sb = sidebar_of(tmux, "work")
    pane = next(p["id"] for p in shown.session("work")["windows"][0]["panes"] if not p["sidebar"])
    event = {"agent": "claude", "threadId": "t1", "paneId": pane, "threadName": "fix login"}
    assert shown.post("/api/agent-event", dict(event, status="waiting", detail="Bash: rm -rf build"))[0] == 204
    grab(tmux, sb, lambda lines: any("fix login" in l for l in lines))
    tmux.run("send-keys", "-t", sb, "j")  # the thread
    tmux.run("send-keys", "-t", sb, "N")  # deny: refused (the pane is not linked by its process)
    text = grab(tmux, sb, lambda lines: any(l.startswith("not sent:") for l in lines))
    keep("footer-before-change", text)
    # a status of the same thread that says nothing new (the same prompt) keeps it: a sentinel
    assert shown.post("/set-status", {"session": "work", "text": "sentinel"})[0] == 204
    grab(tmux, sb, lambda lines: any("[sentinel]" in l for l in lines) and any(l.startswith("not sent:")
                                                                               for l in lines))
    # the thread moves on to another prompt: the old footer is not left under it
    assert shown.post("/api/agent-event", dict(event, status="running"))[0] == 204
    assert shown.post("/api/agent-event", dict(event, status="waiting", detail="Edit: src/app.py"))[0] == 204
    text = grab(tmux, sb, lambda lines: any("Edit: src/app.py" in l for l in lines))
    keep("footer-after-change", text)
    assert not any(l.startswith("not sent:") for l in text.splitlines()), text


def test_a_replys_result_stays_while_the_reply_takes_effect():
    m = os_.SidebarModel(own_session="b")
    waiting = dict(th("claude", "t1", "waiting"), detail="Bash: ls")
    m.set_state(snapshot(("a", []), ("b", [waiting])))
    m.key("j")
    assert m.key("N") == [("reply", "claude:t1", "deny", None)]
    m.say("denied", answered=True)  # what the app says once the server sent the keys
    m.set_state(snapshot(("a", []), ("b", [waiting])))
    assert m.message == "denied"  # nothing changed yet
    m.set_state(snapshot(("a", []), ("b", [th("claude", "t1", "interrupted")])))
    assert m.message == "denied"  # the prompt went away: that is the reply's effect
    m.set_state(snapshot(("a", []), ("b", [dict(waiting, detail="Edit: x.py")])))
    assert m.message is None  # a new prompt: the old answer is not shown under it
    # a refusal goes at the first change; a click or the wheel takes any message away
    m.say("not sent: no")
    m.set_state(snapshot(("a", []), ("b", [th("claude", "t1", "running")])))
    assert m.message is None
    m.say("something")
    m.wheel(1)
    assert m.message is None
    # the question of x stays while it is asked, whatever the thread does
    m.selected = ("session", "b")
    m.key("x")
    m.set_state(snapshot(("a", []), ("b", [th("claude", "t1", "done")])))
    assert m.message == "kill session b? (y/n)"


def test_prompts_edit_like_a_shell_line():
    m = os_.SidebarModel(own_session="a")
    m.set_state(snapshot(("a", []), ("b", [])))
    m.key("/")
    for k in ["w", "e", "b", "KEY_LEFT", "KEY_LEFT", "x", "\x01", "<", "\x05", ">"]:
        m.key(k)
    assert m.prompt["text"] == "<wxeb>"
    for k in " api":
        m.key(k)
    for k, text in (("\x17", "<wxeb> "), ("KEY_HOME", "<wxeb> "), ("KEY_DC", "wxeb> "), ("KEY_RIGHT", "wxeb> "),
                    ("\x0b", "w"), ("KEY_END", "w"), ("\x7f", ""), ("a", "a"), ("\x15", "")):
        m.key(k)
        assert m.prompt["text"] == text, k
    rows = os_.render(m, 32, 10, now=0)
    assert texts(rows)[-1] == "filter: _"
    for k in "web":
        m.key(k)
    m.key("KEY_LEFT")
    rows = os_.render(m, 32, 10, now=0)
    assert rows[-1][1][-3:] == [("we", "fg"), ("b", "sel"), ("", "fg")]  # the cursor is on the b
    assert os_.word_start("~/work/api", 10) == 7 and os_.word_start("~/work/", 7) == 2
    assert os_.word_start("run the tests", 13) == 8


def test_complete_directory():
    tree = {"/h": ["work", "wiki", ".dot", "src"], "/h/work": ["api", "web"], "/": ["h", "tmp"]}

    def list_dirs(path):
        if path.rstrip("/") + "/" not in [k.rstrip("/") + "/" for k in tree]:
            raise OSError("no such directory")
        return tree[path.rstrip("/") or "/"]
    assert os_.complete_directory("~", list_dirs, "/h") == ("~/", [])
    assert os_.complete_directory("~/w", list_dirs, "/h") == ("~/w", ["wiki", "work"])
    assert os_.complete_directory("~/wo", list_dirs, "/h") == ("~/work/", [])
    assert os_.complete_directory("~/work/a", list_dirs, "/h") == ("~/work/api/", [])
    assert os_.complete_directory("~/work/", list_dirs, "/h") == ("~/work/", ["api", "web"])
    assert os_.complete_directory("~/.", list_dirs, "/h") == ("~/.dot/", [])  # hidden ones when asked for
    assert os_.complete_directory("/t", list_dirs, "/h") == ("/tmp/", [])
    assert os_.complete_directory("s", list_dirs, "/h") == ("src/", [])  # relative: under home
    assert os_.complete_directory("~/nope/x", list_dirs, "/h") == ("~/nope/x", [])


def test_new_session_prompt_clears_expands_and_completes(shown, tmux, env, attach):
    for d in ("work/api", "work/web", "wiki", "proj"):
        os.makedirs(os.path.join(env.home, d))
    tmux.new_session("proj", cwd=os.path.join(env.home, "proj"))
    client = attach("=proj")
    retry_until(lambda: client_session(tmux) == "proj")
    sb = client_sidebar(tmux, "proj", lambda lines: "❯3 proj ◂" in lines)

    def footer(want):
        return grab(tmux, sb, lambda lines: lines and [l for l in lines if l.strip()][-1] == want)
    tmux.run("send-keys", "-t", sb, "n")
    tmux.run("send-keys", "-t", sb, "-l", "demo")
    tmux.run("send-keys", "-t", sb, "Enter")
    text = footer("directory: ~/proj_")  # the pre-filled directory, the session's own, written with ~
    keep("new-dir-prefilled", text)
    tmux.run("send-keys", "-t", sb, "C-u")  # cleared
    footer("directory: _")
    tmux.run("send-keys", "-t", sb, "-l", "~/w")
    tmux.run("send-keys", "-t", sb, "Tab")  # two fit: both are shown
    grab(tmux, sb, lambda lines: "wiki/ work/" in lines and "directory: ~/w_" in lines)
    tmux.run("send-keys", "-t", sb, "-l", "o")
    tmux.run("send-keys", "-t", sb, "Tab")
    footer("directory: ~/work/_")
    tmux.run("send-keys", "-t", sb, "-l", "w")
    tmux.run("send-keys", "-t", sb, "Tab")
    footer("directory: ~/work/web/_")
    tmux.run("send-keys", "-t", sb, "C-w")  # a directory back
    footer("directory: ~/work/_")
    tmux.run("send-keys", "-t", sb, "-l", "api")
    keep("new-dir-completed", footer("directory: ~/work/api_"))
    tmux.run("send-keys", "-t", sb, "Enter")
    retry_until(lambda: "demo" in tmux.run("list-sessions", "-F", "#{session_name}").split())
    pane = next(l.split()[0] for l in tmux.run("list-panes", "-s", "-t", "=demo", "-F",
                                               "#{pane_id} #{@opensessions-sidebar}").splitlines()
                if l.split()[1:] != ["1"])
    assert tmux.run("display-message", "-p", "-t", pane, "#{pane_current_path}").strip() == \
        os.path.join(env.home, "work", "api")
    # typed over the pre-filled directory: the first character replaces it (no '…/work~/wiki')
    tmux.run("switch-client", "-c", client_name(tmux), "-t", "=proj")
    retry_until(lambda: client_session(tmux) == "proj")
    # the client's sidebar went to demo with it and comes back now: keys go to it once it is here
    sb = client_sidebar(tmux, "proj", lambda lines: "❯3 proj ◂" in lines)
    tmux.run("send-keys", "-t", sb, "n")
    tmux.run("send-keys", "-t", sb, "-l", "demo2")
    tmux.run("send-keys", "-t", sb, "Enter")
    footer("directory: ~/proj_")
    tmux.run("send-keys", "-t", sb, "-l", "~/wiki")
    footer("directory: ~/wiki_")
    tmux.run("send-keys", "-t", sb, "Escape")


def client_name(tmux):
    return [l.split(" ", 1)[1] for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{client_name}")
            .splitlines() if l.startswith("0 ")][0]


def test_prompts_show_what_is_typed(shown, tmux):
    sb = sidebar_of(tmux, "work")
    tmux.run("send-keys", "-t", sb, "n")
    tmux.run("send-keys", "-t", sb, "-l", "my new project")
    text = grab(tmux, sb, lambda lines: "my new project_" in lines)
    assert "new session name:" in text.splitlines()
    tmux.run("send-keys", "-t", sb, "Escape")
    grab(tmux, sb, lambda lines: "my new project_" not in lines)


def prefix_o(tmux, client, key):
    """prefix o KEY typed in the client's terminal (KEY once tmux has switched to our key table)."""
    # tmux treats a key that comes within assume-paste-time (1 ms) of the session's last activity
    # as pasted text and sends it to the pane: a machine typing right after a tmux command would
    # lose the key, a person never does
    tmux.run("set-option", "-g", "assume-paste-time", "0")
    os.write(client.master, b"\x02o")
    retry_until(lambda: "opensessions" in tmux.run("list-clients", "-F", "#{client_key_table}").split())
    os.write(client.master, key)


def client_session(tmux):
    rows = [l.split(" ", 1) for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{session_name}").splitlines()]
    return " ".join(name for control, name in rows if control == "0")


@pytest.fixture
def bound(env, tmux, server):
    """The plugin's key bindings (tmux-setup), with the test's server."""
    vars_ = dict(server.vars, TMUX="%s,1,0" % tmux.socket)
    r = subprocess.run([PYTHON, SCRIPT, "tmux-setup"], env=vars_, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    return server


def test_prefix_o_question_mark_shows_the_keys_as_a_menu_and_its_keys_act(shown, tmux, attach, bound):
    """prefix o ? (tmux's own prefix ? lists keys) did nothing: the key table had no ?. Now a menu of
    the table's keys, each picked by the same key (t here: the sidebars are hidden, as prefix o t)."""
    client = attach("=work")
    sidebar_of(tmux, "work")
    prefix_o(tmux, client, b"?")
    retry_until(lambda: b"every past conversation" in client.output and b"agents popup" in client.output)
    os.write(client.master, b"t")
    retry_until(lambda: not sidebars(tmux, "work"), timeout=10)


def test_new_sidebar_and_prefix_o_s_select_the_clients_session(shown, tmux, attach, bound):
    tmux.new_session("my new project")
    client = attach("=my new project")
    retry_until(lambda: client_session(tmux) == "my new project")
    sb = client_sidebar(tmux, "my new project", lambda lines: "❯3 my new project ◂" in lines)
    # a new sidebar starts on its own session: x asks about this one, not the first
    tmux.run("send-keys", "-t", sb, "x")
    grab(tmux, sb, lambda lines: "kill session my new project?" in lines)
    tmux.run("send-keys", "-t", sb, "n")
    grab(tmux, sb, lambda lines: "cancelled" in lines)
    # move the selection away, leave the sidebar, then prefix o s through the client's terminal
    tmux.run("send-keys", "-t", sb, "Tab")
    tmux.run("send-keys", "-t", sb, "x")
    question = grab(tmux, sb, lambda lines: any(l.startswith("kill session") for l in lines))
    assert "kill session my new project?" not in question
    tmux.run("send-keys", "-t", sb, "n")
    tmux.run("select-pane", "-t", "=my new project:0.1")
    prefix_o(tmux, client, b"s")
    retry_until(lambda: tmux.run("display-message", "-p", "-t", sb, "#{pane_active}").strip() == "1",
                message="not focused: %r %r" % (client.output[-600:], tmux.run("list-keys", "-T", "opensessions")))
    # the focus report arrives after the pane is active: wait for its row to be the selected one
    sel = "48;5;%d" % os_.rgb_to_256(os_.hex_to_rgb(os_.THEMES["catppuccin-mocha"]["sel"]))
    retry_until(lambda: any(sel in l and "my new project" in l
                            for l in tmux.run("capture-pane", "-p", "-e", "-t", sb).splitlines()))
    tmux.run("send-keys", "-t", sb, "x")
    grab(tmux, sb, lambda lines: "kill session my new project?" in lines)
    tmux.run("send-keys", "-t", sb, "n")
    # focusing the sidebar keeps the window's name: automatic-rename's format, evaluated with the
    # sidebar as the active pane, is the window's name, not python3
    name = tmux.run("display-message", "-p", "-t", sb, "#{window_name}").strip()
    assert name != "python3"
    assert tmux.run("display-message", "-p", "-t", sb, "#{E:automatic-rename-format}").strip() == name



def test_uninstall_tmux_gives_back_the_rename_format(tmux, bound):
    default = "#{?pane_in_mode,[tmux],#{pane_current_command}}#{?pane_dead,[dead],}"
    assert tmux.run("show-options", "-gv", "automatic-rename-format").strip() == os_.RENAME_GUARD + default + "}"
    r = bound.cli("tmux-setup")  # twice: wrapped once
    assert r.returncode == 0, r.stderr
    assert tmux.run("show-options", "-gv", "automatic-rename-format").strip() == os_.RENAME_GUARD + default + "}"
    r = bound.cli("uninstall-tmux")
    assert r.returncode == 0, r.stderr
    assert tmux.run("show-options", "-gv", "automatic-rename-format").strip() == default


def test_prefix_o_keys_never_open_view_mode(shown, tmux, attach, bound):
    client = attach("=main")
    retry_until(lambda: client_session(tmux) == "main")
    in_mode = lambda: tmux.run("list-panes", "-a", "-F", "#{pane_in_mode}").split()
    for key, said in ((b"9", "opensessions: there is no session number 9 (2 listed)"),
                      (b"p", "nothing to go back to: `next` has not jumped anywhere yet"),
                      (b"n", "nothing (else) needs you")):
        prefix_o(tmux, client, key)
        retry_until(lambda: "message: " + said in tmux.run("show-messages"),
                    message="%r not shown on the status line" % said, timeout=10)
        assert "1" not in in_mode()
    prefix_o(tmux, client, b"2")
    retry_until(lambda: client_session(tmux) == "work")
    assert "1" not in in_mode()


def test_next_visits_every_thread_that_needs_you_and_comes_round(server, tmux, attach):
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        tmux.new_session(name)
        pane = tmux.run("display-message", "-p", "-t", "=%s:" % name, "#{pane_id}").strip()
        server.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t" + name,
                                         "paneId": pane, "threadName": "ask " + name})
    retry_until(lambda: sum(1 for s in server.state()["sessions"] for t in s["threads"]
                            if t["status"] == "waiting") == 3)
    attach("=main")
    cname = retry_until(lambda: [l for l in tmux.run("list-clients", "-F", "#{client_control_mode} #{client_name}")
                                 .splitlines() if l.startswith("0 ")])[0].split(" ", 1)[1]
    seen = []
    for _ in range(4):
        r = server.cli("next", "-c", cname)
        assert r.returncode == 0, r.stderr
        seen.append(retry_until(lambda: (lambda s: s if s != (seen[-1] if seen else "main") else None)(
            client_session(tmux))))
    assert seen == ["a", "b", "c", "a"]
    r = server.cli("next", "--back", "-c", cname)
    assert r.returncode == 0 and r.stdout == b""
    retry_until(lambda: client_session(tmux) == "c")  # where the last jump came from
    # back there already, then the pane gone: it says so instead of nothing
    r = server.cli("next", "--back", "-c", cname)
    assert (r.returncode, r.stdout) == (0, b"nothing to go back to: you are where the last jump came from\n")
    tmux.run("switch-client", "-c", cname, "-t", "=main")
    retry_until(lambda: client_session(tmux) == "main")
    tmux.run("kill-session", "-t", "=c")
    r = server.cli("next", "--back", "-c", cname)
    assert (r.returncode, r.stdout) == (0, b"nothing to go back to: the pane the last jump came from is gone\n")
    r = server.cli("next", "--back", "-c", cname)
    assert (r.returncode, r.stdout) == (0, b"nothing to go back to: `next` has not jumped anywhere yet\n")


def test_next_attention_order_is_a_round():
    q = [("a", {"pane": "%1", "alive": True}), ("b", {"pane": "%2", "alive": True}), ("c", {"pane": None})]
    assert os_.next_attention(q, "%9", "x")[:2] == ("%1", "a")
    assert os_.next_attention(q, "%1", "a")[:2] == ("%2", "b")
    assert os_.next_attention(q, "%2", "b")[:2] == ("=c", "c")
    assert os_.next_attention(q, "%5", "c")[:2] == ("%1", "a")
    assert os_.next_attention(q[:1], "%1", "a") is None and os_.next_attention([], "%1", "a") is None


def test_thread_rows_in_the_detail_panel_keep_a_highlight(shown, tmux):
    pane = shown.session("work")["windows"][0]["panes"]
    work_pane = next(p["id"] for p in pane if not p["sidebar"])
    shown.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t1", "paneId": work_pane,
                                    "threadName": "fix login"})
    sb = sidebar_of(tmux, "work")
    grab(tmux, sb, lambda lines: any("fix login" in l for l in lines))
    tmux.run("send-keys", "-t", sb, "j")
    sel = "48;5;%d" % os_.rgb_to_256(os_.hex_to_rgb(os_.THEMES["catppuccin-mocha"]["sel"]))

    def highlighted():
        styled = tmux.run("capture-pane", "-p", "-e", "-t", sb).splitlines()
        i = next(i for i, l in enumerate(styled) if "fix login" in l)
        session_row = next(l for l in styled if "2 " in l and "work" in l)
        # capture-pane -e writes a colour only where it changes: the second row keeps the first's
        return sel in styled[i] and "48;5;" not in styled[i + 1].split("waiting")[0] and sel not in session_row
    retry_until(highlighted, message="the thread's rows are not highlighted: %r" % tmux.run("capture-pane", "-p", "-e", "-t", sb))
    # a short sidebar still shows the panel (and the selection in it) once a thread in it is selected
    m = os_.SidebarModel(own_session="b")
    m.set_state(snapshot(("a", []), ("b", [th("claude", "t1", "waiting")])))
    assert not any("t t1" in l for l in texts(os_.render(m, 32, 7, now=0)))
    m.key("j")
    rows = os_.render(m, 32, 7, now=0)
    assert [r for r in rows if r[0] == ("thread", "b", "claude", "t1")] and len(rows) <= 7


def test_8_colour_fallbacks_are_visible():
    for name in sorted(os_.THEMES):
        colours = os_.theme_colors(os_.THEMES[name], 8)
        assert all(fg != bg for fg, bg in colours.values()), name
        assert colours[("fg", True)][1] != colours[("fg", False)][1], name  # selection stands out
    latte = os_.theme_colors(os_.THEMES["catppuccin-latte"], 256)
    assert latte[("fg", False)][1] == os_.rgb_to_256(os_.hex_to_rgb("#eff1f5"))  # its own light background
    mine = os_.theme_colors(os_.resolve_theme("nord", {"bg": "#ff0000"}), 256)
    assert mine[("muted", False)][1] == 196


def test_theme_background_is_painted(shown, tmux):
    sb = sidebar_of(tmux, "work")
    assert shown.post("/ui", {"theme": "catppuccin-latte"})[0] == 204
    light = "48;5;%d" % os_.rgb_to_256(os_.hex_to_rgb(os_.THEMES["catppuccin-latte"]["bg"]))
    retry_until(lambda: light in tmux.run("capture-pane", "-p", "-e", "-t", sb), message="no latte background")


def test_terminal_charset_reads_the_locale():
    assert os_.terminal_charset({"LANG": "C"}) == "ascii"
    assert os_.terminal_charset({"LANG": "en_US.UTF-8"}) == "unicode"
    assert os_.terminal_charset({"LC_ALL": "C", "LANG": "en_US.UTF-8"}) == "ascii"
    assert os_.terminal_charset({"LC_CTYPE": "C.UTF-8"}, python_chose_utf8=True) == "ascii"
    out = subprocess.run([PYTHON, "-c", "import sys, os; sys.path.insert(0, %r); import opensessions as o; "
                                        "print(o.terminal_charset(os.environ, o._python_chose_utf8(os.environ)))"
                          % IMPORT_PATH],
                         env={"PATH": os.environ["PATH"], "LANG": "C"}, stdout=subprocess.PIPE, check=True)
    assert out.stdout.strip() == b"ascii"


def test_clicking_a_port_opens_it_or_says_what_is_missing(monkeypatch):
    m = os_.SidebarModel(own_session="api")
    st = snapshot(("api", []), ("web", []))
    st["sessions"][0]["ports"] = [3000, 8080]
    m.set_state(st)
    rows = os_.render(m, 32, 30, now=0)
    y = next(i for i, r in enumerate(rows) if r[0] == ("port", "api"))
    line = texts(rows)[y]
    assert m.click(y, rows, x=line.index(":8080") + 1) == [("open", 8080)]
    assert m.click(y, rows, x=line.index(":3000")) == [("open", 3000)]
    app = os_.SidebarApp(tmux=None, find_port=lambda: 1, environ={})
    app.model = m
    monkeypatch.setenv("PATH", "/nonexistent")
    app.carry_out(("open", 3000))
    assert m.message == "cannot open http://localhost:3000: xdg-open is not installed (xdg-utils)"


def test_numbers_in_filtered_views_match_prefix_o_n(shown, tmux):
    sb = sidebar_of(tmux, "work")
    work_pane = next(p["id"] for p in shown.session("work")["windows"][0]["panes"] if not p["sidebar"])
    r = shown.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t1", "paneId": work_pane,
                                        "threadName": "fix login"})
    assert r[0] < 300, r
    grab(tmux, sb, lambda lines: any("fix login" in l for l in lines))
    tmux.run("send-keys", "-t", sb, "f")  # only sessions with agents: work, the second in the list
    text = grab(tmux, sb, lambda lines: any("[agents]" in l for l in lines))
    assert any(l[1:].startswith("2 work") for l in text.splitlines()), text
    assert not any(l[1:].startswith("1 ") for l in text.splitlines())
    m = os_.SidebarModel()
    m.set_state(snapshot(("a", []), ("b", [th("claude", "x", "waiting")])))
    m.key("f")
    assert m.key("2") == [("switch", "b")] and m.key("1") == [("switch", "a")]


def test_status_has_labelled_aligned_columns(server, tmux):
    pane = server.session("main")["windows"][0]["panes"][0]["id"]
    server.post("/api/agent-event", {"agent": "claude", "status": "interrupted", "threadId": "t1", "paneId": pane,
                                     "threadName": "fix login"})
    tmux.new_session("a-much-longer-session-name")
    retry_until(lambda: server.session("a-much-longer-session-name"))
    r = server.cli("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    keep("status", r.stdout.decode())
    header = lines[0]
    assert header.split() == ["SESSION", "/", "AGENT", "STATUS", "UNSEEN", "UPDATED", "COST", "BRANCH", "/", "TITLE"]
    col = header.index("STATUS")
    thread = next(l for l in lines if "fix login" in l)
    assert thread[col:].startswith("interrupted") and thread.index("fix login") == header.index("BRANCH")
    assert all(l[col - 2:col] == "  " for l in lines)


def test_every_subcommand_has_a_description_and_help_for_each_argument():
    assert [c[0] for c in os_._command_table()] == list(os_.COMMANDS)
    for name in os_.COMMANDS:
        parser = os_.build_parser(name)
        sub = next(a for a in parser._actions if a.dest == "command").choices[name]
        assert sub.description and sub.description.endswith(".") and "\n" not in sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
    r = subprocess.run([PYTHON, SCRIPT, "set-progress", "--help"], stdout=subprocess.PIPE, timeout=20)
    assert b"steps done" in r.stdout and b"Set a session's progress bar" in r.stdout
