"""Reply without switching: the keys each agent's prompt takes (screens of the real agents in
tests/fixtures/<agent>/), and POST /api/reply + `opensessions reply` against fake agents on a real
tmux that draw those screens and record every key they receive."""
import json
import os
import subprocess
import sys

import pytest

from conftest import PYTHON, requires_tmux, retry_until

import opensessions as o

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures")

CLAUDE_ID = "2f2a81ee-c6fd-4a36-a1f4-f1ee51347b23"
CODEX_ID = "01a21f11-0ef5-73f2-aed6-832c32678b5b"
OPENCODE_ID = "ses_de0fb491dffeIeDBHKG1AY6mOa"
IDS = {"claude": CLAUDE_ID, "codex": CODEX_ID, "opencode": OPENCODE_ID}


def screen(agent, name):
    with open(os.path.join(FX, agent, name + ".txt"), encoding="utf-8") as f:
        return f.read()


# -- pure: which keys, from which screen ---------------------------------------------------------

def keys_of(steps):
    return [k for s in steps if s[0] == "keys" for k in s[1]]


@pytest.mark.parametrize("agent,action,keys", [
    ("claude", "approve", ["1"]), ("claude", "approve-always", ["2"]), ("claude", "deny", ["4"]),
    ("codex", "approve", ["y"]), ("codex", "approve-always", ["p"]), ("codex", "deny", ["Escape"]),
    ("opencode", "deny", ["Escape"]),
])
def test_permission_keys_from_real_screens(agent, action, keys):
    name = "permission-escapes" if agent == "opencode" else "permission"
    assert keys_of(o.reply_plan(agent, action, screen(agent, name))) == keys


def test_opencode_buttons_are_chosen_by_the_selection_drawn_on_screen():
    once = screen("opencode", "permission-escapes")
    always = screen("opencode", "permission-always-selected-escapes")
    confirm = screen("opencode", "permission-always-confirm-escapes")
    assert o.opencode_prompt(once) == ("permission", "Allow once")
    assert o.opencode_prompt(always) == ("permission", "Allow always")
    assert o.opencode_prompt(confirm) == ("confirm-always", "Confirm")
    assert keys_of(o.reply_plan("opencode", "approve", once)) == ["Enter"]
    assert keys_of(o.reply_plan("opencode", "approve-always", once)) == ["Right", "Enter", "Enter"]
    assert keys_of(o.reply_plan("opencode", "approve", always)) == ["Right", "Right", "Enter"]
    # without escapes the selection cannot be told: refuse rather than guess
    with pytest.raises(o.ReplyRefused, match="selected"):
        o.reply_plan("opencode", "approve", screen("opencode", "permission"))
    with pytest.raises(o.ReplyRefused, match="confirm"):
        o.reply_plan("opencode", "approve", confirm)


@pytest.mark.parametrize("agent", ["claude", "codex", "opencode"])
def test_text_goes_only_into_an_input_and_never_into_a_permission_prompt(agent):
    steps = o.reply_plan(agent, "text", screen(agent, "idle"), "say hi")
    assert steps[0] == ("literal", "say hi") and keys_of(steps) == ["Enter"]
    assert keys_of(o.reply_plan(agent, "text", screen(agent, "denied"), "go on")) == ["Enter"]
    name = "permission-escapes" if agent == "opencode" else "permission"
    with pytest.raises(o.ReplyRefused, match="is asking for a permission") as refused:
        o.reply_plan(agent, "text", screen(agent, name), "say hi")
    assert refused.value.wait == 0  # another look would not change it: refused at once
    for action in ("approve", "deny"):
        with pytest.raises(o.ReplyRefused, match="not a permission prompt; there is nothing to"):
            o.reply_plan(agent, action, screen(agent, "idle"))


def test_text_with_control_characters_is_refused():
    for bad in ("a\rb", "\x1b[A", "x\x03", "tab\there", "", "   ", "a\u2028b", "two\nlines\x1b[A"):
        with pytest.raises(o.ReplyRefused):
            o.check_reply_text(bad)
    assert o.check_reply_text("fix the login bug; then run `make test` -- thanks") .startswith("fix")


def test_claude_input_holding_text_is_not_typed_into():
    idle = screen("claude", "idle").replace("\n❯\u00a0\n", "\n❯\u00a0half typed\n")
    with pytest.raises(o.ReplyRefused, match="already holds text"):
        o.reply_plan("claude", "text", idle, "say hi")


def test_claude_option_missing_is_refused_with_the_options():
    three = screen("claude", "permission").replace(
        "   2. Yes, and always allow access to /home/dev/work/claude from this project\n", "")
    with pytest.raises(o.ReplyRefused, match="has no option to approve always; it offers: 1. Yes; 3. Yes, and "
                                             "switch to auto mode .*; 4. No"):
        o.reply_plan("claude", "approve-always", three)


def test_preview_lines_have_no_escapes():
    lines = o.thread_preview(screen("opencode", "permission-escapes"), 5)
    assert len(lines) == 5 and not any("\x1b" in l for l in lines)
    assert any("Allow once" in l for l in lines)


class FakeTmux(object):
    """Screens in, keys out, for the step runner."""

    def __init__(self, screens):
        self.screens = list(screens)
        self.sent = []

    def run(self, *args):
        if args[0] == "capture-pane":
            return self.screens[0] if len(self.screens) == 1 else self.screens.pop(0)
        self.sent.append(args[3:])
        return ""


def test_runner_stops_before_enter_when_the_selection_does_not_move():
    once = screen("opencode", "permission-escapes")
    steps = o.reply_plan("opencode", "approve-always", once)
    t = [0.0]
    fake = FakeTmux([once])  # the Right key "did nothing": the screen never shows the new selection

    def clock():
        t[0] += 0.1
        return t[0]
    with pytest.raises(o.ReplyRefused, match="sent Right; then waited for 'Allow always' selected"):
        o.run_reply_steps(fake, "%1", steps, once, clock=clock, sleep=lambda s: None)
    assert fake.sent == [("Right",)]


# -- real tmux, fake agents that draw the real screens and record keys ---------------------------

FAKE = r'''#!%(python)s
"""A fake agent: draws a real agent's screen (fixtures), records the keys it receives."""
import json, os, sys, termios, time, tty
agent = os.path.basename(sys.argv[0])
fx = os.path.join(os.environ["FAKE_FIXTURES"], agent)
log = os.environ["FAKE_KEYS"]
mode = sys.argv[1] if len(sys.argv) > 1 else "idle"
composer = ""
shown_at = 0.0
variant = "permission-escapes" if agent == "opencode" else "permission"


def show(name, typed=""):
    global shown_at
    text = open(os.path.join(fx, name + ".txt"), encoding="utf-8").read().rstrip("\n")
    if agent == "claude":
        i = text.rfind("\n\u276f\u00a0")  # the input line: the prompt sign and a no-break space
        text = text[:i] + "\n\u276f\u00a0" + typed + text[i + 3:]
    elif agent == "codex" and typed:
        text = text.replace("\u203a Ask Codex to do anything", "\u203a " + typed)
    elif agent == "opencode" and typed:
        i = text.rfind("  \u2503\n  \u2503  Build")
        text = text[:i] + "  \u2503  " + typed + text[i + 3:]
    sys.stdout.write("\x1b[H\x1b[2J\x1b[0m" + text.replace("\n", "\r\n"))
    sys.stdout.flush()
    shown_at = time.monotonic()


def record(what, data):
    with open(log, "a") as f:
        f.write(json.dumps({"what": what, "data": data, "mode": mode}) + "\n")


tty.setraw(0)
show(variant if mode == "permission" else "idle")
record("ready", os.getpid())
while True:
    data = os.read(0, 1024).decode("utf-8", "replace")
    if not data:
        break
    if agent == "claude" and mode == "permission" and time.monotonic() - shown_at < 0.1:
        record("ignored", data)  # as the real Claude Code does right after a prompt appears
        continue
    record("key", data)
    if mode == "permission":
        if agent == "claude" and data in "123":
            mode = "idle"; show("idle")
        elif agent == "claude" and data == "4" or data == "\x1b":
            mode = "idle"; show("denied")
        elif agent == "codex" and data in ("y", "p"):
            mode = "idle"; show("idle")
        elif agent == "opencode" and data in ("\x1b[C", "\x1bOC"):
            variant = "permission-always-selected-escapes"; show(variant)
        elif agent == "opencode" and data == "\r":
            if variant == "permission-always-selected-escapes":
                mode = "confirm"; show("permission-always-confirm-escapes")
            else:
                mode = "idle"; show("idle")
    elif mode == "confirm" and data == "\r":
        mode = "idle"; show("idle")
    elif mode == "idle":
        if data == "\r":
            record("submitted", composer)
            composer = ""
        else:
            composer += data
        show("idle", composer)
'''


class Lab(object):
    def __init__(self, env, tmux, server, tmp_path):
        self.env, self.tmux, self.server = env, tmux, server
        self.bin = str(tmp_path / "bin")
        os.makedirs(self.bin)
        for agent in IDS:
            path = os.path.join(self.bin, agent)
            with open(path, "w") as f:
                f.write(FAKE % {"python": PYTHON})
            os.chmod(path, 0o755)
        self.keys_path = str(tmp_path / "keys.jsonl")

    def start(self, agent, mode, wrap=None):
        """A window running the fake agent; -> (pane id, agent pid)."""
        cmd = "env FAKE_FIXTURES=%s FAKE_KEYS=%s %s %s" % (FX, self.keys_path, os.path.join(self.bin, agent), mode)
        if wrap:
            cmd = wrap % cmd
        out = self.tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "main", cmd).strip()
        self.tmux.run("resize-window", "-t", out, "-x", "220", "-y", "50")
        ready = retry_until(lambda: [r for r in self.records() if r["what"] == "ready"], timeout=10)
        pid = ready[-1]["data"]
        open(self.keys_path, "w").close()
        return out, pid

    def records(self):
        try:
            with open(self.keys_path) as f:
                return [json.loads(l) for l in f if l.strip()]
        except OSError:
            return []

    def keys(self):
        return [r["data"] for r in self.records() if r["what"] == "key"]

    def report(self, agent, status, pid):
        code, body = self.server.post("/api/agent-event", {"agent": agent, "status": status,
                                                          "threadId": IDS[agent], "pid": pid})
        assert code in (202, 204), body

        def linked():
            t = self.thread(agent)
            return t and t["link"] == "pid" and t["status"] == status and t
        return retry_until(linked, timeout=10)

    def thread(self, agent):
        for s in self.server.state()["sessions"]:
            for t in s["threads"]:
                if t["agent"] == agent and t["id"] == IDS[agent]:
                    return t
        return None

    def reply(self, agent, action, text=None):
        body = {"thread": IDS[agent], "action": action}
        if text is not None:
            body["text"] = text
        return self.server.post("/api/reply", body)


@pytest.fixture
def lab(env, tmux, server, tmp_path):
    return Lab(env, tmux, server, tmp_path)


@requires_tmux
@pytest.mark.parametrize("agent,action,keys", [
    ("claude", "approve", ["1"]), ("claude", "deny", ["4"]), ("claude", "approve-always", ["2"]),
    ("codex", "approve", ["y"]), ("codex", "deny", ["\x1b"]), ("codex", "approve-always", ["p"]),
    ("opencode", "approve", ["\r"]), ("opencode", "deny", ["\x1b"]),
    ("opencode", "approve-always", ["\x1b[C", "\r", "\r"]),
])
def test_reply_answers_a_permission_prompt_without_switching(lab, agent, action, keys):
    pane, pid = lab.start(agent, "permission")
    lab.report(agent, "waiting", pid)
    code, body = lab.reply(agent, action)
    assert code == 200, body
    assert body["pane"] == pane and body["sent"].startswith({"approve": "approved once", "deny": "denied",
                                                             "approve-always": "approved always"}[action])
    got = lab.keys()
    if got[-2:] == ["\x1bOC", "\r"] or got[:1] == ["\x1bOC"]:
        got = ["\x1b[C" if k == "\x1bOC" else k for k in got]
    assert got == keys
    assert not any(r["what"] == "ignored" for r in lab.records())  # Claude's grace time was waited out
    assert "reply %s %s/%s sent to pane %s" % (action, agent, IDS[agent], pane) in lab.server.log()


@requires_tmux
@pytest.mark.parametrize("agent", ["claude", "codex", "opencode"])
def test_reply_text_types_literally_and_submits(lab, agent):
    pane, pid = lab.start(agent, "idle")
    lab.report(agent, "done", pid)
    text = "fix #{pane_id} it; then run `make -j2 test` $HOME 'quoted' -- now;"
    code, body = lab.reply(agent, "text", text)
    assert code == 200, body
    submitted = retry_until(lambda: [r["data"] for r in lab.records() if r["what"] == "submitted"])
    assert submitted == [text]
    assert lab.keys()[-1] == "\r"


@requires_tmux
def test_reply_refusals_say_why_and_send_nothing(lab):
    pane, pid = lab.start("claude", "permission")
    code, body = lab.server.post("/api/reply", {"thread": "no-such-thread", "action": "approve"})
    assert code == 404
    lab.report("claude", "running", pid)
    code, body = lab.reply("claude", "approve")
    assert code == 409 and body["error"] == "Claude Code is working on a turn; there is no permission to answer"
    lab.report("claude", "waiting", pid)
    code, body = lab.reply("claude", "text", "hello")
    assert code == 409 and "is asking for a permission" in body["error"]
    code, body = lab.reply("claude", "text", "two\nlines\x07")
    assert code == 400 and "control characters" in body["error"]
    code, body = lab.server.post("/api/reply", {"thread": CLAUDE_ID, "action": "shout"})
    assert code == 400
    assert lab.keys() == []
    assert "reply text claude/%s refused" % CLAUDE_ID in lab.server.log()


@requires_tmux
def test_reply_refused_when_the_agent_is_not_in_front(lab):
    # the agent runs in a session of its own (setsid): the pane's foreground is someone else
    pane, pid = lab.start("claude", "permission", wrap="setsid -w %s")
    lab.report("claude", "waiting", pid)
    code, body = lab.reply("claude", "approve")
    assert code == 409 and "foreground" in body["error"], body
    assert lab.keys() == []


@requires_tmux
def test_reply_refused_for_a_thread_linked_by_directory_only(lab, env):
    pane, pid = lab.start("claude", "permission")
    # a hook that names only the directory: the thread has no exact pane
    code, _ = lab.server.post("/api/agent-event", {"agent": "claude", "status": "waiting",
                                                   "threadId": CLAUDE_ID, "projectDir": env.home})
    retry_until(lambda: lab.thread("claude"))
    code, body = lab.reply("claude", "approve")
    assert code == 409 and "not known exactly" in body["error"], body
    assert lab.keys() == []


@requires_tmux
def test_cli_reply(lab):
    pane, pid = lab.start("codex", "permission")
    lab.report("codex", "waiting", pid)
    p = lab.server.cli("reply", CODEX_ID, "--approve")
    assert p.returncode == 0, p.stderr
    assert lab.keys() == ["y"]
    # one line: what was sent, to which agent and pane, and how soon its screen showed it
    out = p.stdout.decode().splitlines()
    assert len(out) == 1 and out[0].startswith("approved once in Codex, pane %s: “1. Yes, proceed” (keys y); "
                                               "on screen " % pane) and out[0].endswith(" ms after the last key"), out
    p = lab.server.cli("reply", CODEX_ID, "--deny")
    assert p.returncode == 1 and p.stderr == (b"opensessions: not sent: Codex shows its prompt input, not a permission "
                                              b"prompt; there is nothing to deny\n")
    lab.report("codex", "done", pid)
    p = lab.server.cli("reply", CODEX_ID, "--text", "next step")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().startswith("sent the prompt to Codex in pane %s (9 characters, then Enter)" % pane)
    assert retry_until(lambda: [r["data"] for r in lab.records() if r["what"] == "submitted"]) == ["next step"]


@requires_tmux
def test_preview_endpoint(lab):
    pane, pid = lab.start("opencode", "permission")
    lab.report("opencode", "waiting", pid)
    code, body = lab.server.get("/api/preview?thread=%s&lines=6" % OPENCODE_ID)
    assert code == 200, body
    doc = json.loads(body.decode())
    assert doc["pane"] == pane and len(doc["lines"]) == 6
    assert any("Allow once" in l for l in doc["lines"]) and not any("\x1b" in l for l in doc["lines"])
    assert doc["prompt"] == "permission"  # its spec's prompt reader
    assert lab.server.get("/api/preview?thread=nope")[0] == 404
