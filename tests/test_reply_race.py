"""Replies and previews that race the agent: the foreground is
looked at again right before each keystroke; a preview shows only the agent's own screen; what a
reply types is text (a lone surrogate, a lone ';').

The integration cases run a fake Claude Code (drawing the captured screen, tests/fixtures/claude)
under a fake shell with job control, as a user's shell runs it: the agent in a process group of its
own in front, the shell taking the terminal back when it exits and recording every key it gets."""
import json
import os

import pytest

from conftest import PYTHON, requires_tmux, retry_until

import opensessions as o

HERE = os.path.dirname(os.path.abspath(__file__))
FX = os.path.join(HERE, "fixtures")
CLAUDE_ID = "2f2a81ee-c6fd-4a36-a1f4-f1ee51347b23"


# -- the step runner: a guard before each keystroke -----------------------------------------------

class FakeTmux(object):
    def __init__(self, screen):
        self.screen = screen
        self.sent = []

    def run(self, *args):
        if args[0] == "capture-pane":
            return self.screen
        self.sent.append(args[3:])
        return ""


def idle_screen(typed=""):
    with open(os.path.join(FX, "claude", "idle.txt"), encoding="utf-8") as f:
        text = f.read().rstrip("\n")
    i = text.rfind("\n\u276f\u00a0")
    return text[:i] + "\n\u276f\u00a0" + typed + text[i + 3:]


def test_the_guard_stops_a_reply_before_enter_and_says_what_was_typed():
    steps = o.reply_plan("claude", "text", idle_screen(), "hello there")
    fake = FakeTmux(idle_screen("hello there"))
    answers = iter([None, "the agent's process 42 is gone"])  # fine before the text, gone before Enter
    with pytest.raises(o.ReplyRefused) as e:
        o.run_reply_steps(fake, "%1", steps, idle_screen(), sleep=lambda s: None, guard=lambda: next(answers))
    assert fake.sent == [("-l", "--", "hello there")]  # the text, never the Enter
    assert str(e.value) == "sent 11 characters of text; stopped before Enter: the agent's process 42 is gone"


def test_the_guard_stops_a_permission_key_and_nothing_is_sent():
    with open(os.path.join(FX, "claude", "permission.txt"), encoding="utf-8") as f:
        screen = f.read()
    steps = o.reply_plan("claude", "approve", screen)
    fake = FakeTmux(screen)
    t = [0.0]

    def clock():
        t[0] += 0.1
        return t[0]
    with pytest.raises(o.ReplyRefused, match="^nothing was sent: the pane's foreground process group changed"):
        o.run_reply_steps(fake, "%1", steps, screen, clock=clock, sleep=lambda s: None,
                          guard=lambda: "the pane's foreground process group changed (7, was 6)")
    assert fake.sent == []


def test_the_foreground_guard_wants_the_same_group_and_process_as_at_first(tmp_path):
    """/proc as the guard reads it: the pane's process, the agent, the foreground group."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)

    def stat(pid, comm, ppid, pgrp, tpgid, start):
        d = proc / str(pid)
        d.mkdir(exist_ok=True)
        fields = ["S", ppid, pgrp, pgrp, 0, tpgid] + [0] * 13 + [start]
        (d / "stat").write_text("%d (%s) %s" % (pid, comm, " ".join(str(f) for f in fields)))
        (d / "cmdline").write_bytes(comm.encode() + b"\0")
    stat(10, "bash", 1, 10, 20, 100)  # the shell; the agent's group (20) is in front
    stat(20, "claude", 10, 20, 0, 200)
    guard = o.foreground_guard("claude", 20, 10, None, str(proc))
    assert guard() is None and guard() is None
    stat(10, "bash", 1, 10, 10, 100)  # the agent stopped (^Z): the shell's group is in front
    assert "not the pane's foreground process" in guard()
    stat(10, "bash", 1, 10, 20, 100)
    stat(20, "claude", 10, 20, 0, 201)  # another process with the same pid
    assert "restarted" in guard()
    (proc / "20" / "stat").unlink()
    assert "gone" in guard()


# -- real tmux: the agent exits while a reply waits -------------------------------------------------

FAKE_SHELL = r'''#!%(python)s
"""A shell with job control: runs its command in front in a group of its own; when that exits,
takes the terminal back, shows what the agent left on screen, and records every key it gets."""
import json, os, signal, sys, tty
log = os.environ["RACE_LOG"]


def record(what, data=None):
    with open(log, "a") as f:
        f.write(json.dumps({"what": what, "data": data}) + "\n")


signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpgrp())
    os.execv(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(pid, pid)
    os.tcsetpgrp(0, pid)
except OSError:
    pass
os.waitpid(pid, 0)
os.tcsetpgrp(0, os.getpgrp())
tty.setraw(0)
screen = os.environ.get("RACE_SCREEN")
if screen and os.path.exists(screen):  # the terminal still shows the agent's last screen
    sys.stdout.write(open(screen, encoding="utf-8").read())
    sys.stdout.flush()
record("shell-front", os.getpid())
while True:
    data = os.read(0, 1024)
    if not data:
        break
    record("shell-key", data.decode("utf-8", "replace"))
    sys.stdout.write("\x1b[H\x1b[2Juser@host:~$ ")  # a shell prompt where the agent's screen was
    sys.stdout.flush()
'''

FAKE_CLAUDE = r'''#!%(python)s
"""A fake Claude Code at its prompt: draws the captured idle screen, records what it gets. In mode
"exit-on-key" it leaves at the first key, the typed text written to $RACE_SCREEN as its screen
would show it (the shell shows that file once it has the terminal back)."""
import json, os, sys, tty
log = os.environ["RACE_LOG"]
mode = sys.argv[1] if len(sys.argv) > 1 else "idle"
text = open(os.path.join(os.environ["RACE_FIXTURES"], "claude", "idle.txt"), encoding="utf-8").read().rstrip("\n")


def screen(typed):
    i = text.rfind("\n\u276f\u00a0")
    return "\x1b[H\x1b[2J" + (text[:i] + "\n\u276f\u00a0" + typed + text[i + 3:]).replace("\n", "\r\n")


def record(what, data=None):
    with open(log, "a") as f:
        f.write(json.dumps({"what": what, "data": data}) + "\n")


tty.setraw(0)
sys.stdout.write(screen(""))
sys.stdout.flush()
record("agent-ready", os.getpid())
composer = ""
while True:
    data = os.read(0, 1024).decode("utf-8", "replace")
    if not data:
        break
    record("agent-key", data)
    if mode == "exit-on-key":
        with open(os.environ["RACE_SCREEN"], "w", encoding="utf-8") as f:
            f.write(screen(data))
        sys.exit(0)
    if data == "\r":
        record("submitted", composer)
        composer = ""
    else:
        composer += data
    sys.stdout.write(screen(composer))
    sys.stdout.flush()
'''


class Race(object):
    def __init__(self, tmux, server, tmp_path):
        self.tmux, self.server = tmux, server
        self.bin = str(tmp_path / "bin")
        os.makedirs(self.bin)
        for name, src in (("fakeshell", FAKE_SHELL), ("claude", FAKE_CLAUDE)):
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(src % {"python": PYTHON})
            os.chmod(path, 0o755)
        self.log = str(tmp_path / "race.jsonl")
        self.screen = str(tmp_path / "screen.txt")

    def start(self, mode="idle", shell=True):
        """A window: the fake shell running the fake Claude -> (pane id, agent pid, pane pid)."""
        claude = os.path.join(self.bin, "claude")
        cmd = "%s %s" % (claude, mode)
        if shell:
            cmd = "%s %s" % (os.path.join(self.bin, "fakeshell"), cmd)
        cmd = "env RACE_LOG=%s RACE_SCREEN=%s RACE_FIXTURES=%s %s" % (self.log, self.screen, FX, cmd)
        pane = self.tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "main", cmd).strip()
        self.tmux.run("resize-window", "-t", pane, "-x", "200", "-y", "50")
        pid = retry_until(lambda: [r["data"] for r in self.records("agent-ready")], timeout=10)[-1]
        pane_pid = int(self.tmux.run("display-message", "-p", "-t", pane, "#{pane_pid}").strip())
        return pane, pid, pane_pid

    def records(self, what=None):
        try:
            with open(self.log) as f:
                recs = [json.loads(l) for l in f if l.strip()]
        except OSError:
            return []
        return [r for r in recs if what is None or r["what"] == what]

    def report(self, status, pid):
        code, body = self.server.post("/api/agent-event", {"agent": "claude", "status": status,
                                                          "threadId": CLAUDE_ID, "pid": pid})
        assert code in (202, 204), body
        return retry_until(lambda: (lambda t: t if t and t["link"] == "pid" and t["status"] == status else None)(
            self.thread()), timeout=10)

    def thread(self):
        state = self.server.state()
        for t in [t for s in state["sessions"] for t in s["threads"]] + state["threads"]:
            if t["agent"] == "claude" and t["id"] == CLAUDE_ID:
                return t
        return None

    def reply(self, text):
        return self.server.post("/api/reply", {"thread": CLAUDE_ID, "action": "text", "text": text})

    def preview(self):
        code, body = self.server.get("/api/preview?thread=%s&lines=40" % CLAUDE_ID)
        return code, json.loads(body.decode())


@pytest.fixture
def race(tmux, server, tmp_path):
    return Race(tmux, server, tmp_path)


@requires_tmux
def test_an_agent_that_exits_while_the_reply_waits_gets_no_enter_and_the_shell_gets_nothing(race):
    pane, pid, _ = race.start("exit-on-key")
    race.report("done", pid)
    code, body = race.reply("run the tests")
    # the text went to the agent (which then left); the Enter is never sent to the shell in front
    assert code == 409, body
    assert "sent 13 characters of text; stopped before Enter" in body["error"], body
    assert "gone" in body["error"] or "not the agent" in body["error"] or "foreground" in body["error"], body
    assert [r["data"] for r in race.records("agent-key")] == ["run the tests"]
    assert race.records("shell-front")
    assert race.records("shell-key") == []
    assert "reply text claude/%s refused" % CLAUDE_ID in race.server.log()


@requires_tmux
def test_text_of_a_lone_semicolon_is_typed(race):
    pane, pid, _ = race.start("idle", shell=False)
    race.report("done", pid)
    for text in (";", "a;", "a\\;"):
        code, body = race.reply(text)
        assert code == 200 and body.get("sent"), (text, body)  # 200 with what was sent
    assert retry_until(lambda: (lambda s: s if len(s) == 3 else None)(
        [r["data"] for r in race.records("submitted")])) == [";", "a;", "a\\;"]


def test_a_lone_surrogate_in_text_is_refused_as_text():
    for bad in ("\udc9b", "a\udc85b", "\ud800"):
        with pytest.raises(o.ReplyRefused, match="surrogate"):
            o.check_reply_text(bad)
    assert o.check_reply_text("\U0001f600 ok") == "\U0001f600 ok"  # a real astral character is fine
    assert o.tmux_arg(o.TmuxText(";")) == "\\;" and o.tmux_arg(";") == ";"


@requires_tmux
def test_a_lone_surrogate_is_a_400_and_never_reaches_the_pane(race):
    pane, pid, _ = race.start("idle", shell=False)
    race.report("done", pid)
    for text in ("\udc9b", "x\udc85y", "\ud800"):  # sent as JSON escapes: "\\udc9b"
        code, body = race.reply(text)
        assert code == 400 and "surrogate" in body["error"], (text, code, body)
    assert race.records("agent-key") == []


# -- previews: only the agent's own screen ---------------------------------------------------------

@requires_tmux
def test_no_preview_once_the_agent_exited_and_the_shell_has_the_pane(race):
    pane, pid, _ = race.start("exit-on-key")
    race.report("done", pid)
    code, doc = race.preview()
    assert code == 200 and any("\u276f" in l for l in doc["lines"]), doc
    race.tmux.run("send-keys", "-t", pane, "-l", "x")  # the agent leaves; the shell takes the pane
    retry_until(lambda: race.records("shell-front"))
    race.tmux.run("send-keys", "-t", pane, "-l", "ls")  # the user works in the shell now
    retry_until(lambda: "user@host" in race.tmux.run("capture-pane", "-p", "-t", pane))
    assert race.thread()["pane"] == pane  # the exited thread keeps its pane: its preview must not show the shell
    code, doc = race.preview()
    assert code == 409 and "no preview" in doc["error"], doc
    assert "user@host" not in json.dumps(doc)


@requires_tmux
def test_a_forged_registry_naming_a_shell_gives_no_preview_of_the_shell(race, env, tmux):
    tmux.run("send-keys", "-t", "main", "-l", "echo SHELL-SCREEN")
    tmux.run("send-keys", "-t", "main", "Enter")
    shell_pid = int(tmux.run("display-message", "-p", "-t", "main", "#{pane_pid}").strip())
    reg = os.path.join(env.home, ".claude", "sessions")
    os.makedirs(reg, exist_ok=True)
    with open(os.path.join(reg, "%d.json" % shell_pid), "w") as f:
        json.dump({"pid": shell_pid, "sessionId": CLAUDE_ID, "cwd": env.home, "status": "busy"}, f)
    t = retry_until(lambda: (lambda t: t if t and t.get("link") == "pid" and t.get("pane") else None)(race.thread()),
                    timeout=10)
    code, doc = race.preview()
    assert code == 409 and "not claude" in doc["error"], doc
    assert "SHELL-SCREEN" not in json.dumps(doc)
    assert t["pid"] == shell_pid
