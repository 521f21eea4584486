"""POST /api/reply against fake Gemini CLI, Qwen Code and Pi on a real tmux: each fake draws its agent's
real screens (tests/fixtures/<agent>/) and records every key and paste it receives, with the agent's
quirks seen in the lab (FORMATS.md): Gemini drops an Enter that comes within ~1.5 s of a paste,
Qwen draws a paste late and keeps the old prompt in its input after an Esc."""
import json
import os

import pytest

from conftest import PYTHON, requires_tmux, retry_until

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures")

IDS = {"gemini": "3cd2468e-9b1f-4b8e-a6a4-1f2e3d4c5b6a", "qwen": "62d08780-68f0-4d7f-91f5-a635b942ada8",
       "pi": "01a209aa-260f-74ee-8b83-cb143aadfd23", "claude": "2f2a81ee-c6fd-4a36-a1f4-f1ee51347b23",
       "opencode": "ses_de0fb491dffeIeDBHKG1AY6mOa"}

FAKE = r'''#!%(python)s
"""A fake agent drawing real screens; records keys and pastes (bracketed paste mode on, as theirs is)."""
import json, os, sys, time, tty
agent = os.path.basename(sys.argv[0])
fx = os.environ["FAKE_FIXTURES"]
log = os.environ["FAKE_KEYS"]
mode = sys.argv[1]
SCREENS = {
    "gemini": {"shell": "gemini/replies/screens/04-write-always-prompt.esc.txt",
               "file": "gemini/replies/screens/14-file-once-prompt.esc.txt",
               "idle": "gemini/replies/screens/09-other-cmd-after-Escape.txt"},
    "qwen": {"shell": "qwen/replies/screens/04-write-always-prompt.esc.txt",
             "file": "qwen/replies/screens/17-file-once-prompt.esc.txt",
             "idle": "qwen/replies/screens/05-write-always-after-2.txt",
             "held": "qwen/err500-esc/screens/02-after-esc.esc.txt"},
    "pi": {"idle": "pi/text/screens/01-idle.txt"},
    "claude": {"idle": "claude/paste/screens/01-text-answered.txt"},
    "opencode": {"idle": "opencode/idle.txt"},
}[agent]
NO = {"gemini": {"shell": "3", "file": "4"}, "qwen": {"shell": "4", "file": "3"}}.get(agent, {})
composer = ""
pasted_at = 0.0
draw_at = None


def text_of(name):
    return open(os.path.join(fx, SCREENS[name]), encoding="utf-8").read().rstrip("\n")


def with_input(text, typed):
    if not typed:
        return text
    if agent in ("gemini", "qwen"):
        i = text.rfind("Type your message or @path/to/file")
        lines = typed.split("\n")
        first = "> " + lines[0] + "".join("\n   " + l for l in lines[1:])
        j = text.rfind(">", 0, i)
        return text[:j] + first + text[i + len("Type your message or @path/to/file"):]
    if agent == "pi":  # the editor: lines between its last two rules
        lines = text.split("\n")
        upper = [i for i, l in enumerate(lines) if l.startswith("\u2500" * 40)][-2]
        return "\n".join(lines[:upper + 1] + typed.split("\n") + lines[upper + 1:])
    if agent == "claude":
        i = text.rfind("\n\u276f\u00a0")
        lines = typed.split("\n")
        return text[:i] + "\n\u276f\u00a0" + lines[0] + "".join("\n  " + l for l in lines[1:]) + text[i + 3:]
    if agent == "opencode":
        i = text.rfind("  \u2503\n  \u2503  Build")
        shown = "[Pasted ~%%d lines]" %% (typed.count("\n") + 1) if "\n" in typed else typed
        return text[:i] + "  \u2503  " + shown + text[i + 3:]
    return text


def show(name):
    text = with_input(text_of(name), composer if name == "idle" else "")
    sys.stdout.write("\x1b[H\x1b[2J\x1b[0m" + text.replace("\n", "\r\n"))
    sys.stdout.flush()


def record(what, data):
    with open(log, "a") as f:
        f.write(json.dumps({"what": what, "data": data, "mode": mode}) + "\n")


tty.setraw(0)
sys.stdout.write("\x1b[?2004h")
if mode == "held":
    composer = "then FAKE_ERR500"
    mode = "idle"
    show("held")
else:
    show(mode)
record("ready", os.getpid())
import select
buf = ""
while True:
    timeout = None if draw_at is None else max(0.0, draw_at - time.monotonic())
    if not select.select([0], [], [], timeout)[0]:
        draw_at = None
        show("idle")  # Qwen draws a paste late
        continue
    data = os.read(0, 4096).decode("utf-8", "replace")
    if not data:
        break
    buf += data
    if "\x1b[200~" in buf and "\x1b[201~" not in buf:
        continue  # a paste still arriving
    data, buf = buf, ""
    if data.startswith("\x1b[200~"):
        body = data[len("\x1b[200~"):data.index("\x1b[201~")]
        record("paste", body)
        composer += body.replace("\r", "\n")
        pasted_at = time.monotonic()
        if agent == "qwen":
            draw_at = time.monotonic() + 1.0
        else:
            show("idle")
        continue
    record("key", data)
    if mode in ("shell", "file"):
        if data in ("1", "2", "\r"):
            record("answered", data)
            mode = "idle"; show("idle")
        elif data == NO[mode] or data == "\x1b":
            record("denied", data)
            mode = "idle"; show("idle")
    elif mode == "idle":
        if data == "\r":
            if agent == "gemini" and time.monotonic() - pasted_at < 1.5:
                record("ignored", data)  # as Gemini CLI does right after a paste
                continue
            record("submitted", composer)
            composer = ""
        else:
            composer += data
        show("idle")
'''


class Lab(object):
    def __init__(self, tmux, server, tmp_path):
        self.tmux, self.server = tmux, server
        self.bin = str(tmp_path / "bin")
        os.makedirs(self.bin)
        for agent in IDS:
            path = os.path.join(self.bin, agent)
            with open(path, "w") as f:
                f.write(FAKE % {"python": PYTHON})
            os.chmod(path, 0o755)
        self.keys_path = str(tmp_path / "keys.jsonl")

    def start(self, agent, mode):
        cmd = "env FAKE_FIXTURES=%s FAKE_KEYS=%s %s %s" % (FX, self.keys_path, os.path.join(self.bin, agent), mode)
        pane = self.tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "main", cmd).strip()
        self.tmux.run("resize-window", "-t", pane, "-x", "200", "-y", "60")
        ready = retry_until(lambda: [r for r in self.records() if r["what"] == "ready"], timeout=10)
        open(self.keys_path, "w").close()
        return pane, ready[-1]["data"]

    def records(self, what=None):
        try:
            with open(self.keys_path) as f:
                rows = [json.loads(l) for l in f if l.strip()]
        except OSError:
            return []
        return [r for r in rows if what is None or r["what"] == what]

    def report(self, agent, status, pid):
        code, body = self.server.post("/api/agent-event", {"agent": agent, "status": status,
                                                          "threadId": IDS[agent], "pid": pid})
        assert code in (202, 204), body

        def linked():
            for s in self.server.state()["sessions"]:
                for t in s["threads"]:
                    if t["id"] == IDS[agent] and t["link"] == "pid" and t["status"] == status:
                        return t
        return retry_until(linked, timeout=10)

    def reply(self, agent, action, text=None):
        body = {"thread": IDS[agent], "action": action}
        if text is not None:
            body["text"] = text
        return self.server.post("/api/reply", body)


@pytest.fixture
def lab(env, tmux, server, tmp_path):
    return Lab(tmux, server, tmp_path)


@requires_tmux
@pytest.mark.parametrize("agent,mode,action,key", [
    ("gemini", "shell", "approve", "1"), ("gemini", "shell", "approve-always", "2"), ("gemini", "shell", "deny", "3"),
    ("gemini", "file", "deny", "4"),
    ("qwen", "shell", "approve", "1"), ("qwen", "shell", "approve-always", "2"), ("qwen", "shell", "deny", "4"),
    ("qwen", "file", "deny", "3"),
])
def test_gemini_and_qwen_prompts_answered_with_the_digit_on_screen(lab, agent, mode, action, key):
    pane, pid = lab.start(agent, mode)
    lab.report(agent, "waiting", pid)
    code, body = lab.reply(agent, action)
    assert code == 200, body
    assert [r["data"] for r in lab.records("key")] == [key]
    assert body["pane"] == pane and body["answer"].startswith("“%s. " % key)
    if action == "approve-always":
        covers = {"gemini": "Gemini allows, until it exits", "qwen": "Qwen wrote it to <project>/.qwen/settings.json"}
        assert covers[agent] in body["sent"]


@requires_tmux
@pytest.mark.parametrize("agent", ["gemini", "qwen", "pi"])
def test_text_typed_and_submitted(lab, agent):
    pane, pid = lab.start(agent, "idle")
    lab.report(agent, "done", pid)
    text = "fix #{pane_id} it; then `make test` $HOME -- now;"
    code, body = lab.reply(agent, "text", text)
    assert code == 200, body
    assert retry_until(lambda: [r["data"] for r in lab.records("submitted")]) == [text]


@requires_tmux
@pytest.mark.parametrize("agent", ["gemini", "qwen", "pi", "claude", "opencode"])
def test_multi_line_text_is_one_paste_then_one_enter(lab, agent):
    pane, pid = lab.start(agent, "idle")
    lab.report(agent, "done", pid)
    text = "first line of the prompt\n  second, indented\nthird line"
    code, body = lab.reply(agent, "text", text)
    assert code == 200, body
    assert [r["data"] for r in lab.records("paste")] == [text]  # one bracketed paste, newlines kept
    assert [r["data"] for r in lab.records("key")] == ["\r"]  # then one Enter
    assert not lab.records("ignored")  # Gemini: the Enter came late enough to count
    assert retry_until(lambda: [r["data"] for r in lab.records("submitted")]) == [text]
    assert body["sent"].startswith("sent a 3-line prompt to ")


@requires_tmux
def test_qwen_input_holding_the_old_prompt_gets_nothing(lab):
    pane, pid = lab.start("qwen", "held")
    lab.report("qwen", "interrupted", pid)
    code, body = lab.reply("qwen", "text", "say hi after esc")
    assert code == 409 and "Qwen Code's input already holds text ('then FAKE_ERR500')" in body["error"], body
    assert lab.records("key") == [] and lab.records("paste") == []


@requires_tmux
def test_text_on_a_permission_prompt_is_refused_at_once(lab):
    # refused on the first look (it waited 1.5-3.5 s before; the wait itself is held by
    # test_reply_plans.py's injected clock, the time by bench)
    pane, pid = lab.start("gemini", "shell")
    lab.report("gemini", "waiting", pid)
    code, body = lab.reply("gemini", "text", "hi")
    assert code == 409 and body["error"].startswith("Gemini CLI is asking for a permission"), body
    assert lab.records("key") == []


@requires_tmux
def test_pi_permission_actions_refused_with_the_reason(lab):
    pane, pid = lab.start("pi", "idle")
    lab.report("pi", "waiting", pid)
    code, body = lab.reply("pi", "approve")
    assert code == 409 and body["error"].startswith("Pi never asks for a permission"), body
    assert lab.records("key") == []
