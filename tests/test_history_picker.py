"""The history picker (prefix o r, and the agents popup's second tab): keys to actions (pure), its
rows (pure: hostile titles and directories drawn safely, within the width), the key binding, and
the real popup on a real client: typing filters, Enter resumes and closes it."""
import json
import os
import time
import uuid

import pytest

from conftest import FIXTURES, requires_tmux, retry_until
from test_history import write_claude
from test_history_api import H

import opensessions as o

NOW = 1796400000000


def doc(*threads, total=None):
    return {"threads": list(threads), "total": len(threads) if total is None else total, "count": 50, "complete": True}


def conv(n, agent="claude", title=None, prompt="fix the login", cwd="/home/u/src/app", live=None, gone=False,
         can_fork=True, usage=None, exact=True):
    return {"thread": "%s:%s" % (agent, "id-%d" % n), "agent": agent, "id": "id-%d" % n, "title": title,
            "prompt": prompt, "cwd": cwd, "dirGone": gone, "branch": "main", "createdAt": NOW - 3 * 86400000,
            "updatedAt": NOW - 2 * 3600000, "turns": 12, "turnsExact": exact,
            "usage": usage if usage is not None else {"input": 1000, "output": 200, "cacheRead": 1200000,
                                                      "cacheWrite": 0, "cost": 0.84, "exact": exact},
            "live": live, "canFork": can_fork}


def view(*threads, **kw):
    v = o.HistoryView("/home/u/src/app", "/home/u", **kw)
    v.set_answer(doc(*threads))
    return v


def text_of(rows):
    return ["".join(t for t, _ in r[1]) for r in rows]


def test_typing_filters_and_enter_resumes():
    v = view(conv(1), conv(2, agent="codex"))
    assert v.typing and v.params() == {"q": "", "limit": o.HISTORY_PAGE, "offset": 0, "dir": "/home/u/src/app"}
    assert v.key("f") == [("fetch",)] and v.key("i") == [("fetch",)] and v.query == "fi"  # letters are text
    assert v.key("KEY_BACKSPACE") == [("fetch",)] and v.query == "f"
    assert v.key("\x15") == [("fetch",)] and v.query == ""
    assert v.key("KEY_DOWN") == [] and v.selected == ("history", "codex:id-2")
    assert v.key("\n") == [("resume", "codex:id-2", False, "window")]
    assert v.key("\x12") == [("fetch",)] and v.all and "dir" not in v.params()  # C-r: all directories


def test_the_filter_edits_as_a_shell_line_does():
    """As every text prompt of the sidebar and popup (h/firsthour): C-a/C-e, arrows, C-w, C-k, C-d;
    only a change of the text asks the server again."""
    v = view(conv(1))
    for k in "fix login":
        v.key(k)
    assert (v.query, v.pos) == ("fix login", 9)
    assert v.key("\x01") == [] and v.pos == 0 and not v.all  # C-a: start of the line, not the scope
    assert v.key("KEY_RIGHT") == [] and v.key("\x06") == [] and v.pos == 2
    assert v.key("\x0b") == [("fetch",)] and v.query == "fi"  # C-k: cut after the cursor
    assert v.key("\x05") == [] and v.pos == 2
    assert v.key(" ") == [("fetch",)] and v.key("x") == [("fetch",)] and v.query == "fi x"
    assert v.key("\x17") == [("fetch",)] and v.query == "fi "  # C-w: a word
    assert v.key("KEY_HOME") == [] and v.pos == 0 and v.key("\x04") == [("fetch",)] and v.query == "i "
    assert v.key("KEY_LEFT") == [] and v.key("KEY_BACKSPACE") == [] and v.query == "i "  # nothing before
    v.key("KEY_END")
    assert v.key("\x15") == [("fetch",)] and v.query == "" and v.pos == 0  # C-u: cut before
    rows = text_of(o.render_history(v, 80, 20, now=NOW))
    assert rows[1] == "> _"
    v.key("a"), v.key("b"), v.key("KEY_LEFT")
    pieces = o.render_history(v, 80, 20, now=NOW)[1][1]
    assert pieces[1:] == [("a", "fg"), ("b", "sel"), ("", "fg")]  # the cursor on the b


def test_the_help_lists_the_history_keys_in_the_popup_and_the_sidebar():
    assert ("Tab" in dict(o.POPUP_HELP_KEYS)) and "history" in dict(o.POPUP_HELP_KEYS)["Tab"]
    sidebar = o.SidebarModel()
    sidebar.mode = "help"
    assert "prefix o r every past conversation" in " ".join(text_of(o.render(sidebar, 200, 80)))
    m = o.SidebarModel(popup=True)
    m.mode = "help"
    help_text = "\n".join(text_of(o.render(m, 80, 80)))
    assert "the history tab" in help_text
    v = view(conv(1))
    v.key("\x1b"), v.key("?")
    lines = text_of(o.render_history(v, 100, 40, now=NOW))
    for keys in ("C-r", "Tab", "f", "p", "C-a/C-e", "this machine"):
        assert any(keys in l for l in lines), keys


def test_the_readme_names_the_keys_that_switch_to_every_directory():
    """The README said `C-a` (or `a`) shows every directory; C-a moves the cursor to the start of the
    typed line (it edits as a shell line does), C-r switches the scope. Each key the README names
    for it does that."""
    import re
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md"),
              encoding="utf-8") as f:
        section = f.read().split("\n## History", 1)[1].split("\n## ", 1)[0]
    sentence = [s for s in re.split(r"(?<=\.)\s+", section) if "every directory" in s][0]
    keys = [k for k in re.findall(r"`([^`]+)`", sentence) if len(k) == 1 or re.match(r"^C-[a-z]$", k)]
    assert keys
    for k in keys:
        v = view(conv(1))
        if not k.startswith("C-"):
            v.key("\x1b")  # a letter acts in keys mode (typed, it filters)
        assert v.key(chr(ord(k[2]) - 96) if k.startswith("C-") else k) == [("fetch",)] and v.all, k


def test_question_mark_on_an_empty_line_shows_the_help_as_the_popup_says():
    """The agents popup's help says the history tab's ? lists its keys; typed first, it filtered for
    '?' ("no conversation matches") instead. After a word it is text."""
    v = view(conv(1))
    assert v.key("?") == [] and v.help and v.query == ""
    lines = text_of(o.render_history(v, 100, 40, now=NOW))
    assert any("C-r" in l for l in lines)
    assert len(lines) == 40 and lines[-1].startswith("Enter resume")  # the footer stays at the bottom
    assert v.key("x") == [] and not v.help and v.query == ""  # any key closes it
    assert v.key("a") == [("fetch",)] and v.key("?") == [("fetch",)] and v.query == "a?" and not v.help


def test_keys_mode_f_forks_p_resumes_here_a_all_q_closes():
    v = view(conv(1), conv(2, agent="gemini", can_fork=False))
    assert v.key("\x1b") == [] and not v.typing
    assert v.key("f") == [("resume", "claude:id-1", True, "window")]
    assert v.key("p") == [("resume", "claude:id-1", False, "here")]
    assert v.key("j") == [] and v.key("f") == [] and "gemini has no fork" in v.message
    assert v.key("a") == [("fetch",)] and v.all
    assert v.key("/") == [] and v.typing
    v.key("\x1b")
    assert v.key("q") == [("quit",)] and v.key("\x1b") == [("quit",)]
    assert v.key("\t") == [] and o.HistoryView(tabs=True).key("\t") == [("tab",)]


def test_more_is_fetched_near_the_end():
    threads = [conv(n) for n in range(30)]
    v = o.HistoryView("/x", "/home/u")
    v.set_answer(doc(*threads, total=300))
    assert v.key("KEY_NPAGE") == [("more",)]
    v.set_answer(doc(*[conv(n) for n in range(30, 60)], total=300), offset=30)
    assert len(v.threads) == 60 and v.index == 10


def test_rows_show_what_matters():
    live = conv(1, title="Payments refactor", live={"session": "api", "pane": "%3", "status": "running"})
    est = conv(2, prompt="a big one", exact=False)
    gone = conv(3, cwd="/home/u/src/app/old", gone=True)
    v = view(live, est, gone)
    lines = text_of(o.render_history(v, 120, 30, now=NOW))
    assert lines[0].startswith("history  ~/src/app and below  3 of 50")
    assert lines[1] == "> _"
    first = [l for l in lines if "Payments refactor" in l][0]
    assert first.startswith("● claude") and first.rstrip().endswith("~/src/app (main)")
    facts = lines[lines.index(first) + 1]
    assert "started 3d ago · active 2h ago · 12 turns · 1.2M tok · $0.84" in facts and "live in api" in facts
    assert "~12 turns · ~1.2M tok · ~$0.84" in [l for l in lines if "~12 turns" in l][0]
    assert [l for l in lines if "~/src/app/old (main) gone" in l]
    assert lines[-1].startswith("Enter resume")
    assert v.preview_wanted == "claude:id-1" and "(reading the conversation…)" in lines
    v.set_preview("claude:id-1", {"messages": [{"role": "user", "text": "refactor payments"},
                                               {"role": "assistant", "text": "Done: three files changed."}]})
    lines = text_of(o.render_history(v, 120, 30, now=NOW))
    assert "you: refactor payments" in lines and "claude: Done: three files changed." in lines
    assert o.render_history(v, 120, 8, now=NOW) and v.preview_wanted is None  # no room: nothing is read


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_hostile_titles_and_directories_are_drawn_safely(width):
    evil = conv(1, title="\x1b[2J\x1b]52;c;cm0gLXJmIH4=\x07 #(rm) ; $(id)", prompt="x" * 5000,
                cwd="/home/u/\x1b[31mred\n;#(touch p)" + "d" * 300, live={"session": "s\x07", "pane": "%1"})
    v = view(evil, conv(2, title="日本語のタイトル" * 20))
    v.query = "\x1b[1m"
    for charset in ("unicode", "ascii"):
        v.charset = charset
        rows = o.render_history(v, width, 24, now=NOW)
        assert len(rows) <= 24
        for _, pieces in rows:
            line = "".join(t for t, _ in pieces)
            assert o.display_width(line) <= width, (width, line)
            assert not o.CONTROL_CHARS.search(line), repr(line)


def test_the_binding_and_its_popup():
    binds = o.tmux_bindings("os", {})
    r = [b for b in binds if b[:2] == ("opensessions", "r")]
    assert r and "history-open -c '#{client_name}'" in r[0][-1]
    assert [b for b in o.tmux_bindings("os", {"@opensessions-history-key": "h"}) if b[:2] == ("opensessions", "h")]
    direct = [b for b in o.tmux_bindings("py /x/o#s.py", {}, ("90%", "60%")) if b[:2] == ("opensessions", "r")][0]
    assert direct[2:] == ("display-popup", "-E", "-w", "90%", "-h", "60%", "-d", "#{pane_current_path}",
                          "py /x/o##s.py history-popup --here")  # no extra process; tmux expands -d
    assert o.popup_command("py /x/o#s.py", "/dev/pts/3", "3.3a", "80%", "75%", "history-popup")[-1] == \
        "py /x/o##s.py history-popup -c /dev/pts/3"
    assert o.popup_command("py", "c", "3.1", "1", "1", "history-popup")[:4] == ["new-window", "-t", "c", "-n"]


def test_the_key_menu_runs_each_key_s_own_command():
    """prefix o ?: a display-menu whose rows are the key table's keys; tmux expands formats in an
    item's command once when the menu opens, so after that pass (## -> #) and tmux's parsing (as a
    shell's) each row's command is the bound command itself, also for a path with # and quotes."""
    import shlex
    me = "py '/x/o#s (it'\\''s).py'"
    binds = o.tmux_bindings(me, {"@opensessions-history-key": "h"}, ("80%", "75%"), menu=True)
    table = {b[1]: b[2:] for b in binds if b[0] == "opensessions"}
    menu = table["?"]
    assert menu[0] == "display-menu" and menu[menu.index("-x") + 1] == "C"
    rows = menu[menu.index("-y") + 2:]
    picked = {}
    for name, key, command in zip(rows[0::3], rows[1::3], rows[2::3]):
        if key:
            picked[key] = tuple(shlex.split(command.replace("##", "#")))
    assert sorted(picked) == sorted(k for k in table if not k.isdigit() and k != "?")  # every key but 1-9
    for key, args in picked.items():
        assert args == table[key], key
    assert any(name.startswith("-1-9") for name in rows[0::3])  # shown, not picked
    assert not [b for b in o.tmux_bindings(me, {}) if b[1] == "?"]  # tmux before 3.0: no menu


def test_display_width_and_fit_take_the_ascii_shortcut_exactly():
    import unicodedata

    def width(text):
        return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1
                   for ch in text)

    def slow_fit(text, w, more):
        if w <= 0:
            return ""
        if width(text) <= w:
            return text
        out, used, limit = "", 0, w - width(more)
        for ch in text:
            if used + width(ch) > limit:
                break
            out, used = out + ch, used + width(ch)
        return out + more if limit >= 0 else out[:w]
    for text in ("", "a", "abc def", "\x1b[31m;x", "x" * 50, "日本", "e\u0301t\u00e9"):
        assert o.display_width(text) == width(text)
        for more in ("…", "~", ".."):
            for w in range(0, 12):
                assert o.fit(text, w, more) == slow_fit(text, w, more), (text, w, more)


class FakeTmux(object):
    def __init__(self):
        self.calls = []

    def run(self, *args, **kw):
        self.calls.append(args)
        return ""


@pytest.mark.parametrize("answer,where,switched", [
    ({"action": "resumed", "pane": "%9"}, "window", "%9"),  # the new window
    ({"action": "jumped", "pane": "%7"}, "window", "%7"),  # a live one: its pane
    ({"action": "jumped", "pane": "%7"}, "here", "%7"),  # p on a live one: its pane too, nothing typed
    ({"action": "resumed", "pane": "%1"}, "here", None),  # resumed in the pane under the popup: stay
])
def test_the_picker_goes_where_the_conversation_is(answer, where, switched):
    tmux = FakeTmux()
    app = o.SidebarApp(tmux, lambda: 1, popup=True, tab="history",
                       origin={"pane": "%1", "session": "api", "client": "/dev/pts/3"})
    app.history = o.HistoryView(None, "/home/u", pane="%1")
    sent = []
    app.post_answer = lambda path, body: sent.append((path, body)) or (200, json.dumps(answer).encode())
    assert app._history_resume("claude:x", False, where) == "quit"
    assert sent[0][1] == ({"thread": "claude:x", "fork": False, "target": "%1"} if where == "here" else
                          {"thread": "claude:x", "fork": False, "session": "api"})
    switches = [c for c in tmux.calls if c[0] == "switch-client"]
    assert switches == ([("switch-client", "-c", "/dev/pts/3", "-t", switched)] if switched else [])
    notes = ["directory /x/#{pane_id} is gone; opencode resumes by id from elsewhere"]
    app.post_answer = lambda path, body: (200, json.dumps(dict(answer, notes=notes)).encode())
    tmux.calls = []
    assert app._history_resume("opencode:x", False, where) == "quit"  # the popup closes: tmux says it
    assert [c for c in tmux.calls if c[0] == "display-message"] == [
        ("display-message", "-c", "/dev/pts/3", "opensessions: directory /x/##{pane_id} is gone; opencode resumes "
                                                "by id from elsewhere")]
    app.post_answer = lambda path, body: (409, b'{"error": "its directory /x is gone"}')
    assert app._history_resume("claude:x", False, "window") is None
    assert app.history.message == "not resumed: its directory /x is gone"


def test_tab_in_the_agents_popup_opens_the_history_tab_and_back():
    app = o.SidebarApp(FakeTmux(), lambda: 1, popup=True, origin={"pane": "%1"})
    app.model = o.SidebarModel(popup=True)
    app.history = o.HistoryView(None, "/home/u", pane="%1", tabs=True)
    assert app._key("\t") == [("tab",)]
    app.carry_out(("tab",))
    assert app.tab == "history" and app._key("q") == [("fetch",)]  # letters filter there
    assert app._key("\t") == [("tab",)]
    assert "Tab history" in text_of(o.render(app.model, 120, 10))[0]


def test_the_popups_own_query_string_and_arguments():
    from urllib.parse import quote, urlencode
    for params in ({"q": "fix login/ü;&=%#+", "limit": 50, "dir": "/home/u/a b"}, {"thread": "claude:x"}, {"q": ""}):
        assert o.query_string(params) == urlencode(params, quote_via=quote, safe="")
    a = o.parse_plainly(["-S", "/tmp/s", "--port", "7", "history-popup", "--here", "-c", "/dev/pts/1", "-t", "%3"],
                        o._command_table())
    assert (a.socket_path, a.port, a.here, a.client, a.pane) == ("/tmp/s", 7, True, "/dev/pts/1", "%3")  # no argparse


def test_history_lines_for_the_cli():
    lines = o.history_lines(doc(conv(1, title="t\x1b[31m", live={"session": "api"}), conv(2, exact=False),
                                total=9), "/home/u", now=NOW)
    assert lines[0].split()[:6] == ["THREAD", "ACTIVE", "TURNS", "TOKENS", "COST", "LIVE"]
    assert "claude:id-1  2h ago  12" in lines[1] and "api" in lines[1] and "~/src/app (main)" in lines[1]
    assert "\x1b" not in lines[1] and "~12" in lines[2] and "~$0.84" in lines[2]
    assert lines[-1] == "(2 of 9 shown; --limit shows more)"
    # nothing found: a sentence that says where it looked (a bare header said nothing)
    assert o.history_lines(dict(doc(), dir="/home/u/src/x", count=14), "/home/u", now=NOW) == \
        ["no conversation found in ~/src/x or below (14 in the history; --all looks in every directory)"]
    assert o.history_lines(dict(doc(), count=14), "/home/u", now=NOW) == \
        ["no conversation found in any directory (14 in the history)"]


@requires_tmux
def test_the_popup_filters_as_you_type_and_enter_resumes(env, tmp_path):
    h = H(env, tmp_path)
    try:
        h.start()
        sid = str(uuid.uuid4())
        write_claude(env.home, sid, h.dirs[0], "quokka migration plan")
        retry_until(lambda: h.get("/api/history?q=quokka")["total"] == 1, timeout=10)
        # the picker as prefix o r runs it, here in a window of its own in the directory (display-popup
        # needs an attached client): its scope is the pane it opened over
        h.tmux.run("new-window", "-t", "main", "-n", "picker", "-c", h.dirs[0], "%s %s -S %s --port %d history-popup" % (
            o.sys.executable, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "opensessions.py"),
            h.tmux.socket, h.server.port))
        screen = lambda: h.tmux.run("capture-pane", "-p", "-t", "main:picker")
        retry_until(lambda: "~/src/app and below" in screen(), timeout=15)
        for ch in "quokka":
            h.tmux.run("send-keys", "-t", "main:picker", "-l", ch)
        retry_until(lambda: "1 of" in screen() and "quokka migration plan" in screen(), timeout=10)
        retry_until(lambda: "you: quokka migration plan" in screen(), timeout=10)  # the preview
        h.tmux.run("send-keys", "-t", "main:picker", "Enter")
        line = retry_until(lambda: [l for l in h.launched() if l[3] == "--resume " + sid], timeout=15)[0]
        assert line[1] == h.dirs[0]
        retry_until(lambda: "picker" not in h.tmux.run("list-windows", "-t", "main", "-F", "#{window_name}"), timeout=10)
    finally:
        h.close()
