"""The conversation history in a running server: /api/history (scope, words, agent, paging, errors),
/api/history/preview, POST /api/resume (a new window in the conversation's directory, an idle pane,
a live thread's pane, forks, gone directories, hostile directories), the CLI (`history`, `resume`),
and the index following what the watchers see and surviving a restart. Real tmux, fake agents that
record how they were started."""
import json
import os
import shutil
import time
import uuid

import pytest

from conftest import (FIXTURES, ServerProc, TmuxServer, fake_agents, requires_tmux, retry_until)
from test_history import claude_records, history_home, write_claude

import opensessions as o

pytestmark = requires_tmux
AGENTS = ("claude", "codex", "opencode", "pi", "qwen", "gemini")


class H(object):
    """A HOME with generated conversations, fake agents on PATH, a tmux server and our server."""

    def __init__(self, env, tmp_path, total=36):
        self.env = env
        self.bin = fake_agents(str(tmp_path / "bin"), AGENTS)
        self.log = str(tmp_path / "agents.log")
        env.vars.update(PATH=self.bin + ":" + env.vars["PATH"], FAKE_LOG=self.log, SHELL="/bin/sh")
        self.src = os.path.join(env.home, "src")
        self.dirs = [os.path.join(self.src, "app"), os.path.join(self.src, "app", "web"), os.path.join(self.src, "pay")]
        self.made = history_home().build(FIXTURES, env.home, total=total, seed=2, dirs=self.dirs, days=60)
        self.tmux = TmuxServer(env)
        self.tmux.new_session("main", cwd=env.home, command="/bin/sh")
        self.tmux.run("set-option", "-g", "default-command", "/bin/sh")
        self.server = None

    def start(self):
        self.server = ServerProc(self.env, self.tmux)
        retry_until(lambda: self.get("/api/history?limit=1")["complete"], timeout=20)
        return self.server

    def get(self, path):
        status, body = self.server.get(path)
        assert status == 200, body
        return json.loads(body.decode())

    def status(self, path):
        return self.server.get(path)[0]

    def resume(self, **body):
        status, content = self.server.client.request("POST", "/api/resume", body)
        return status, json.loads(content.decode()) if content.strip() else None

    def launched(self):
        try:
            with open(self.log) as f:
                return [l.rstrip("\n").split("\t") for l in f if l.strip()]
        except FileNotFoundError:
            return []

    def close(self):
        if self.server:
            self.server.stop()
        self.tmux.kill()


@pytest.fixture
def hist(env, tmp_path):
    h = H(env, tmp_path)
    yield h
    h.close()


def first(h, agent, cwd=None):
    return next(tid for tid, d, _, _ in h.made[agent] if cwd is None or d == cwd)


def test_history_api_scope_words_agent_paging_and_errors(hist):
    hist.start()
    doc = hist.get("/api/history?limit=500")
    assert doc["count"] == doc["total"] == 36 and doc["complete"]
    assert [t["updatedAt"] for t in doc["threads"]] == sorted((t["updatedAt"] for t in doc["threads"]), reverse=True)
    app = hist.get("/api/history?limit=500&dir=%s" % hist.dirs[0])
    assert app["total"] and {t["cwd"] for t in app["threads"]} <= {hist.dirs[0], hist.dirs[1]}  # and below
    assert hist.get("/api/history?limit=500&dir=%s&all=1" % hist.dirs[0])["total"] == 36
    codex = hist.get("/api/history?agent=codex&limit=500")
    assert codex["total"] == len(hist.made["codex"]) and {t["agent"] for t in codex["threads"]} == {"codex"}
    tid, _, prompt, _ = hist.made["pi"][0]
    words = prompt.split()[:2]
    found = hist.get("/api/history?q=%s+PI&limit=500" % "+".join(w.upper() for w in words))
    assert tid in [t["id"] for t in found["threads"]]
    page1 = hist.get("/api/history?limit=5")["threads"]
    page2 = hist.get("/api/history?limit=5&offset=5")["threads"]
    assert len(page1) == len(page2) == 5 and not {t["id"] for t in page1} & {t["id"] for t in page2}
    recent = hist.get("/api/history?since=2d&limit=500")
    assert recent["total"] < 36 and all(t["updatedAt"] > (time.time() - 2 * 86400) * 1000 for t in recent["threads"])
    t = doc["threads"][0]
    assert set(t) >= {"thread", "agent", "id", "title", "prompt", "cwd", "dirGone", "branch", "createdAt", "updatedAt",
                      "turns", "turnsExact", "usage", "live", "canFork"}
    for bad in ("limit=0", "limit=501", "offset=-1", "agent=vim", "dir=relative/path", "since=yesterday",
                "q=" + "x" * 1001, "limit=1&limit=2"):
        assert hist.status("/api/history?" + bad) == 400, bad
    pane = hist.tmux.run("display-message", "-p", "-t", "main", "#{pane_id}").strip()
    by_pane = hist.get("/api/history?limit=500&pane=" + pane.replace("%", "%25"))
    assert by_pane["dir"] == hist.env.home and by_pane["session"] == "main" and by_pane["total"] == 36
    assert hist.status("/api/history?pane=12") == 400
    health = hist.get("/health")["history"]
    assert health["conversations"] == 36 and health["complete"]


def test_preview_of_a_conversation(hist):
    hist.start()
    tid = first(hist, "claude")
    doc = hist.get("/api/history/preview?thread=claude:%s&n=2" % tid)
    assert doc["thread"] == "claude:" + tid and len(doc["messages"]) == 2
    assert all(m["role"] in ("user", "assistant") for m in doc["messages"])
    assert hist.status("/api/history/preview?thread=claude:%s" % uuid.uuid4()) == 404
    assert hist.status("/api/history/preview?thread=claude:..%2Fetc") == 400
    assert hist.status("/api/history/preview?thread=claude:%s&n=99" % tid) == 400


def test_enter_resumes_in_a_new_window_in_its_directory(hist):
    hist.start()
    tid = first(hist, "claude", hist.dirs[2])
    status, doc = hist.resume(thread="claude:" + tid, session="main")
    assert status == 200 and doc["action"] == "resumed", doc
    assert doc["command"] == "cd %s && command claude --resume %s" % (hist.dirs[2], tid)
    line = retry_until(lambda: [l for l in hist.launched() if l[3] == "--resume " + tid], timeout=10)[0]
    assert line[0] == doc["pane"] and line[1] == hist.dirs[2] and line[2] == "claude"
    windows = hist.tmux.run("list-panes", "-s", "-t", "main", "-F", "#{pane_id}").split()
    assert doc["pane"] in windows and len(windows) == 2


@pytest.mark.parametrize("agent,words", [("claude", "--resume %s --fork-session"), ("codex", "fork %s"),
                                         ("qwen", "--resume %s --fork-session"), ("pi", "--fork %s")])
def test_f_forks_where_the_cli_has_a_fork(hist, agent, words):
    hist.start()
    tid = first(hist, agent)
    status, doc = hist.resume(thread="%s:%s" % (agent, tid), fork=True)
    assert status == 200 and doc["action"] == "forked", doc
    retry_until(lambda: [l for l in hist.launched() if l[2] == agent and l[3] == words % tid], timeout=10)


def test_no_fork_where_the_cli_has_none(hist):
    hist.start()
    status, doc = hist.resume(thread="gemini:" + first(hist, "gemini"), fork=True)
    assert status == 409 and "no fork" in doc["error"]


def test_p_resumes_in_an_idle_pane_and_never_types_into_a_busy_one(hist):
    hist.start()
    idle = hist.tmux.run("display-message", "-p", "-t", "main", "#{pane_id}").strip()
    retry_until(lambda: hist.tmux.run("display-message", "-p", "-t", idle, "#{pane_current_command}").strip() == "sh")
    tid = first(hist, "codex")
    status, doc = hist.resume(thread="codex:" + tid, target=idle)
    assert status == 200 and doc["pane"] == idle
    retry_until(lambda: [l for l in hist.launched() if l[0] == idle and l[3] == "resume " + tid], timeout=10)
    # that pane now runs an agent (under its shell): typing into it again is refused
    status, doc = hist.resume(thread="pi:" + first(hist, "pi"), target=idle)
    assert status == 409 and "busy with codex" in doc["error"], doc
    assert hist.resume(thread="pi:" + first(hist, "pi"), target="%999")[0] == 404


def test_a_live_thread_is_never_resumed_twice(hist):
    hist.start()
    tid = first(hist, "claude", hist.dirs[0])
    hist.tmux.run("new-window", "-t", "main", "-c", hist.dirs[0],
                  "env FAKE_REGISTRY=%s FAKE_SESSION=%s FAKE_STATUS=idle claude" % (
                      os.path.join(hist.env.home, ".claude", "sessions"), tid))
    pane = retry_until(lambda: [l[0] for l in hist.launched() if l[2] == "claude" and l[3] == ""], timeout=10)[0]
    live = retry_until(lambda: [t for t in hist.get("/api/history?limit=500")["threads"]
                                if t["id"] == tid and t["live"] and t["live"]["pane"]], timeout=10)[0]
    assert live["live"] == {"session": "main", "pane": pane, "status": live["live"]["status"]}
    status, doc = hist.resume(thread="claude:" + tid)
    assert status == 200 and doc["action"] == "jumped" and doc["pane"] == pane and doc["session"] == "main"
    assert not [l for l in hist.launched() if "--resume" in l[3]]  # nothing started
    status, doc = hist.resume(thread="claude:" + tid, fork=True)  # a fork is a new conversation: allowed
    assert status == 200 and doc["action"] == "forked"


def test_a_gone_directory_follows_restores_rule(hist):
    hist.start()
    shutil.rmtree(hist.dirs[2])
    claude = first(hist, "claude", hist.dirs[2])
    status, doc = hist.resume(thread="claude:" + claude)
    assert status == 409 and "is gone" in doc["error"] and "only from its project directory" in doc["error"]
    shown = [t for t in hist.get("/api/history?limit=500")["threads"] if t["cwd"] == hist.dirs[2]]
    assert shown and all(t["dirGone"] for t in shown)
    codex = first(hist, "codex", hist.dirs[2])
    status, doc = hist.resume(thread="codex:" + codex, session="main")
    assert status == 200 and doc["command"] == "command codex resume %s" % codex and "is gone" in doc["notes"][0]
    line = retry_until(lambda: [l for l in hist.launched() if l[3] == "resume " + codex], timeout=10)[0]
    assert line[1] == hist.env.home  # a new window where the directory was: home


def test_hostile_directories_reach_the_shell_quoted(hist, tmp_path):
    hist.start()
    sentinel = tmp_path / "PWNED"
    evil = os.path.join(str(tmp_path), "x $(touch %s);#(touch %s)`id`" % (sentinel, sentinel))
    os.makedirs(evil)
    sid = str(uuid.uuid4())
    write_claude(hist.env.home, sid, evil, "zebracorn; $(touch %s) #(x)\x1b]0;title\x07" % sentinel)
    retry_until(lambda: hist.status("/api/history/preview?thread=claude:" + sid) == 200, timeout=10)
    shown = hist.get("/api/history?limit=500&q=zebracorn")["threads"][0]
    assert shown["cwd"] == evil and "\x1b" not in shown["prompt"] and "\x07" not in shown["prompt"]
    status, doc = hist.resume(thread="claude:" + sid, session="main")
    assert status == 200, doc
    line = retry_until(lambda: [l for l in hist.launched() if l[3] == "--resume " + sid], timeout=10)[0]
    assert line[1] == evil
    time.sleep(0.2)  # (what a shell would have run is already done when the agent logs its start)
    assert not sentinel.exists()


def test_a_bad_resume_body_says_what_is_wrong_with_it():
    """{"thread": 7} was answered "'thread' … is required": it is there, of the wrong type."""
    for body, reason in (({}, "'thread' (AGENT:ID, as /api/history lists it) is required"),
                         ({"thread": ""}, "is required"),
                         ({"thread": 7}, "'thread' must be a string, AGENT:ID as /api/history lists it (got int)"),
                         ({"thread": "x" * 201}, "(got 201 characters)"),
                         ({"thread": "claude:x", "fork": "yes"}, "'fork' must be true or false")):
        with pytest.raises(o.ApiError) as e:
            o.history_resume_request(body)
        assert e.value.status == 400 and reason in e.value.message, (body, e.value.message)


def test_resume_requests_are_validated(hist):
    hist.start()
    tid = first(hist, "claude")
    for body, code in (({}, 400), ({"thread": 7}, 400), ({"thread": "claude:../../x"}, 400),
                       ({"thread": "claude:" + tid, "fork": "yes"}, 400),
                       ({"thread": "claude:" + tid, "target": "pane 1"}, 400),
                       ({"thread": "claude:" + tid, "target": "%1; rm -rf ~"}, 400),
                       ({"thread": "claude:" + tid, "session": "a\nb"}, 400),
                       ({"thread": "claude:" + str(uuid.uuid4())}, 404),
                       ({"thread": "claude:" + tid, "session": "nope"}, 404)):
        status, doc = hist.resume(**body)
        assert status == code, (body, status, doc)
    status, doc = hist.resume(thread="claude:" + tid, target="command")
    assert status == 200 and doc["action"] == "command" and doc["command"].endswith("--resume " + tid)
    import socket
    s = socket.create_connection(("127.0.0.1", hist.server.port))
    body = json.dumps({"thread": "claude:" + tid}).encode()
    s.sendall(b"POST /api/resume HTTP/1.0\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert s.recv(100).split(b" ")[1] == b"403"  # a web page cannot resume anything
    s.close()
    assert not hist.launched()


def test_the_index_follows_the_watchers_and_survives_a_restart(hist):
    hist.start()
    cwd = hist.dirs[0]
    sid = str(uuid.uuid4())
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    path = write_claude(hist.env.home, sid, cwd, "a brand new conversation", ts=now)
    t = retry_until(lambda: [t for t in hist.get("/api/history?q=brand+new")["threads"] if t["id"] == sid], timeout=10)[0]
    assert t["turns"] == 1 and t["cwd"] == cwd
    with open(path, "a") as f:
        for r in claude_records(sid, cwd, "and a second prompt", ts=now):
            f.write(json.dumps(r) + "\n")
    retry_until(lambda: [t for t in hist.get("/api/history?q=brand+new")["threads"] if t["turns"] == 2], timeout=10)
    hist.server.stop()
    saved = os.path.join(hist.env.home, ".local", "state", "opensessions", o.HISTORY_FILE)
    assert os.path.exists(saved)
    with open(path, "a") as f:  # changed while no server ran
        for r in claude_records(sid, cwd, "third, while down", ts=now):
            f.write(json.dumps(r) + "\n")
    hist.start()
    assert [t["turns"] for t in hist.get("/api/history?q=brand+new")["threads"]] == [3]
    line = [l for l in hist.server.log().splitlines() if "history:" in l and "conversations" in l][-1]
    assert "37 conversations (37 saved" in line and ", 1 read" in line


def test_cli_history_and_resume(hist):
    hist.start()
    out = hist.server.cli("history", "--all", "--limit", "500")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().splitlines()
    assert lines[0].split()[:3] == ["THREAD", "ACTIVE", "TURNS"] and len(lines) == 37
    tid, cwd, prompt, _ = hist.made["qwen"][0]
    out = hist.server.cli("history", "--dir", cwd, "--agent", "qwen", prompt.split()[0], "--json")
    doc = json.loads(out.stdout.decode())
    assert tid in [t["id"] for t in doc["threads"]] and all(t["agent"] == "qwen" for t in doc["threads"])
    out = hist.server.cli("history", "--dir", os.path.join(cwd, "nothing-here"))  # said, not a bare header
    assert out.returncode == 0 and out.stdout.decode().startswith("no conversation found in "), out.stdout
    out = hist.server.cli("history", "--all", "--dir", cwd)  # all won silently over --dir
    assert out.returncode == 1 and b"--dir and --all" in out.stderr
    for args, said in ((("--limit", "1000"), b"opensessions: --limit 1000: give 1 to 500\n"),
                       (("--since", "7"), b"opensessions: --since 7: give a duration such as 7d, 12h, 30m or 2w\n")):
        out = hist.server.cli("history", *args)  # the flag by its name ('limit' must be …: the API's words)
        assert out.returncode == 1 and out.stderr == said, out.stderr
    out = hist.server.cli("resume", "qwen:" + tid)
    assert out.returncode == 0 and b"resumed qwen:" in out.stdout, out.stderr
    retry_until(lambda: [l for l in hist.launched() if l[3] == "--resume " + tid and l[1] == cwd], timeout=10)
    out = hist.server.cli("resume", tid, "--fork", "--here")  # the bare id, run in this terminal
    assert out.returncode == 0, out.stderr
    assert [l for l in hist.launched() if l[3] == "--resume %s --fork-session" % tid and l[0] == ""]
    out = hist.server.cli("resume", "claude:" + str(uuid.uuid4()))
    assert out.returncode == 1 and b"no claude conversation" in out.stderr
