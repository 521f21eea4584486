"""Gemini CLI, Qwen Code and Pi: parsers against real captures (tests/fixtures/<agent>/), process
classification, resume flags, hooks/extension install, watchers on a temp HOME, resurrect."""
import json
import os
import shutil
import subprocess

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, ServerProc, TmuxServer, fake_agents, retry_until

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "fixtures")
GEMINI_ID = "e74b1f0e-0000-4000-8000-000000000000"  # replaced below by the captured one
PI_ID = "01a21f0e-e5b8-73bf-b370-29620fbabbee"
QWEN_ID = "60a8d642-8592-4432-be89-8737ccdec561"


def records(agent):
    with open(os.path.join(FIX, agent, "session.jsonl"), "rb") as f:
        recs, bad = os_.parse_json_lines(f.read().split(b"\n"))
    assert bad == 0
    return recs


def statuses(agent, reducer):
    """The thread's status after each record (consecutive repeats folded)."""
    state = os_.new_thread_state(agent, None)
    seen = []
    for rec in records(agent):
        reducer(state, rec)
        if not seen or seen[-1] != state["status"]:
            seen.append(state["status"])
    return state, seen


def gemini_id():
    return records("gemini")[0]["sessionId"]


# ---- parsers ---------------------------------------------------------------------------------------

def test_pi_capture_states_title_usage():
    state, seen = statuses("pi", os_.pi_reduce)
    # hello -> done; FAKE_WRITE -> tool -> done; FAKE_SLOW + Esc -> interrupted; FAKE_ERR500 -> error
    assert seen == ["idle", "running", "done", "running", "done", "running", "interrupted", "running", "error"]
    assert state["id"] == PI_ID and state["cwd"] == "/home/dev/proj" and state["model"] == "fake-model"
    assert os_.thread_title(state) == "hello there"
    assert state["detail"] == "500 fake 500 error"
    # what Pi itself showed in its footer after the run: ↑36 ↓15 (3 answered requests of 12 in, 5 out)
    assert "↑36 ↓15" in open(os.path.join(FIX, "pi", "screens", "03-err500.txt")).read()
    u = state["usage"]
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"]) == (36, 15, 0, 0)
    assert u["cost"] == pytest.approx(3 * 0.000022)
    assert set(os_.usage_json(u)) == {"input", "output", "cacheRead", "cacheWrite", "cost", "contextPct"}


def test_pi_session_name_and_ids():
    state = os_.new_thread_state("pi", None)
    os_.pi_reduce(state, {"type": "session_info", "id": "k1", "name": "Refactor auth"})
    assert os_.thread_title(dict(state, firstPrompt="x")) == "Refactor auth"
    name = open(os.path.join(FIX, "pi", "session-filename.txt")).read().strip()
    assert os_.pi_id_from_path("/x/" + name) == PI_ID
    assert os_.pi_id_from_path("/x/notes.jsonl") is None
    assert os_.pi_cwd_dir_name("/tmp/oslab/cap-pi/proj") == "--tmp-oslab-cap-pi-proj--"


def test_gemini_capture_states_title_usage():
    state, seen = statuses("gemini", os_.gemini_reduce)
    # hello -> done; FAKE_WRITE: an empty answer, the tool call, its result -> done; FAKE_SLOW + Esc
    # -> "Request cancelled."; FAKE_ERR500 retried for 45 s, then Esc; FAKE_ERR400 -> an error line
    assert seen == ["idle", "running", "done", "running", "done", "running", "interrupted", "running",
                    "interrupted", "running", "error"]
    assert state["detail"].startswith("[API Error: ") and "fake 400 error" in state["detail"]
    assert state["id"] == gemini_id()
    assert os_.thread_title(state) == "hello there"
    assert state["model"].startswith("gemini-")
    # 3 answered requests, each usageMetadata {prompt 12 (2 cached), candidates 5}: the tool-call
    # message is written twice under one id and counted once
    u = state["usage"]
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"], u["cost"]) == (30, 15, 6, 0, None)
    name = open(os.path.join(FIX, "gemini", "session-filename.txt")).read().strip()
    assert os_.gemini_id_from_path(name) == gemini_id()[:8]


def test_gemini_history_rewrite_counts_nothing_twice():
    recs = records("gemini")
    state = os_.new_thread_state("gemini", None)
    for rec in recs:
        os_.gemini_reduce(state, rec)
    again = os_.new_thread_state("gemini", None)
    for rec in recs + [r for r in recs if "$set" in r]:  # the history rewrites once more
        os_.gemini_reduce(again, rec)
    assert again["usage"] == state["usage"] and again["turns"] == state["turns"] and again["status"] == state["status"]


def test_qwen_capture_states_title_usage():
    state, seen = statuses("qwen", os_.qwen_reduce)
    # hello -> done; FAKE_WRITE: tool call, result, done; FAKE_SLOW + Esc: an answer without usage;
    # FAKE_ERR500: one api_error record per retry
    assert seen == ["running", "done", "running", "done", "running", "interrupted", "running", "retry"]
    assert state["id"] is None or state["id"] == QWEN_ID
    assert state["attempt"] >= 2 and "500" in state["detail"]
    assert os_.thread_title(state) == "hello there"
    u = state["usage"]
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"]) == (36, 15, 0, 0)


def hooks(agent):
    with open(os.path.join(FIX, agent, "hooks.jsonl")) as f:
        return [json.loads(l)["stdin"] for l in f if l.strip()]


def test_gemini_hooks_map_to_states():
    got = []
    for payload in hooks("gemini"):
        body = os_.hook_event("gemini", payload, environ={"TMUX_PANE": "%7"})
        if body:
            got.append((payload["hook_event_name"], body["status"], body.get("detail")))
            assert body["threadId"] == gemini_id() and body["paneId"] == "%7"
    names = [g[0] for g in got]
    assert ("Notification", "waiting", "Tool Confirm Shell Command requires execution") in got
    assert names[0] == "SessionStart" and names[-1] == "SessionEnd"
    assert ("BeforeAgent", "running", None) in got and ("AfterAgent", "idle", None) in got


def test_qwen_hooks_use_claude_names():
    got = []
    for payload in hooks("qwen"):
        body = os_.hook_event("qwen", payload, environ={})
        got.append(body and (payload["hook_event_name"], body["status"]))
    assert ("PermissionRequest", "waiting") in got and ("Notification", "waiting") in got
    assert ("Stop", "idle") in got and ("UserPromptSubmit", "running") in got
    # "Qwen Code is waiting for your input" (idle_prompt): at its prompt; the server ends only a turn
    # still under way with it (an Esc during retries: tests/test_status_after_answer.py)
    idle = [p for p in hooks("qwen") if p.get("notification_type") == "idle_prompt"]
    assert idle and all(os_.hook_event("qwen", p, environ={})["idlePrompt"] is True for p in idle)


# ---- processes, resume, resurrect flags ------------------------------------------------------------

def test_classify_processes_as_captured():
    c = os_.classify_agent_process
    # Gemini: node wrapper and its relaunched child (--max-old-space-size); -p is a one-shot
    assert c("node", ["node", "/n/.bin/gemini"]) == "gemini"
    assert c("node", ["/usr/bin/node", "--max-old-space-size=12052", "/n/.bin/gemini"]) == "gemini"
    assert c("node", ["node", "/n/.bin/gemini", "-p", "hi"]) is None
    # Qwen: node …/.bin/qwen, then node --expose-gc …/qwen-code/cli.js twice
    assert c("node", ["node", "/n/.bin/qwen", "--auth-type", "openai"]) == "qwen"
    assert c("node", ["/usr/bin/node", "--expose-gc", "/n/@qwen-code/qwen-code/cli.js"]) == "qwen"
    # Pi sets its process title: comm and argv are just `pi`
    assert c("pi", ["pi"]) == "pi"
    assert c("node", ["node", "/n/other.js"]) is None
    # the files the .bin links point at, run directly
    assert c("node", ["node", "/n/@google/gemini-cli/bundle/gemini.js"]) == "gemini"
    assert c("node", ["node", "/n/@qwen-code/qwen-code/cli-entry.js"]) == "qwen"
    assert c("node", ["node", "/n/@mariozechner/pi-coding-agent/dist/cli.js"]) == "pi"
    assert c("node", ["node", "/n/some-other-tool/dist/cli.js"]) is None


def test_resume_ids_flags_and_commands():
    gid = "4fc6198e-176f-4163-aac4-8bb4abbad101"
    assert os_.agent_resume_id_from_args("gemini", ["node", "/n/gemini", "--resume", gid]) == gid
    assert os_.agent_resume_id_from_args("gemini", ["node", "/n/gemini", "--resume", "latest"]) is None
    assert os_.agent_resume_id_from_args("qwen", ["node", "/n/qwen", "-r", QWEN_ID]) == QWEN_ID
    assert os_.agent_resume_id_from_args("pi", ["pi", "--session", PI_ID]) == PI_ID
    assert os_.launch_flags("gemini", ["gemini", "--yolo", "-m", "gemini-3.8-flash", "--resume", gid, "fix it"]) == \
        (["--yolo", "-m", "gemini-3.8-flash"], ["--resume", gid, "fix it"])
    assert os_.launch_flags("pi", ["pi", "--provider", "fake", "-c"]) == (["--provider", "fake"], ["-c"])
    assert os_.launch_flags("qwen", ["qwen", "--approval-mode", "default", "-r", QWEN_ID]) == \
        (["--approval-mode", "default"], ["-r", QWEN_ID])
    rc = os_.resume_command
    assert rc({"agent": "gemini", "id": gid, "cwd": "/w", "flags": ["--yolo"]}) == \
        "cd /w && command gemini --yolo --resume " + gid
    assert rc({"agent": "qwen", "id": QWEN_ID, "flags": []}) == "command qwen --resume " + QWEN_ID
    assert rc({"agent": "pi", "id": PI_ID, "program": "/opt/pi"}) == "/opt/pi --session " + PI_ID
    assert os_.AGENT_SPECS["pi"].resumes_anywhere and not os_.AGENT_SPECS["gemini"].resumes_anywhere


def test_qwen_registry_gives_the_exact_id(tmp_path):
    d = tmp_path / ".qwen" / "sessions"
    d.mkdir(parents=True)
    shutil.copy(os.path.join(FIX, "qwen", "registry-13869.json"), str(d / "13869.json"))
    assert os_.qwen_registry_id(str(tmp_path / ".qwen"), [1, 13869]) == "40981356-5251-4e7c-b608-47630fb499d8"
    assert os_.qwen_registry_id(str(tmp_path / ".qwen"), [13870]) is None


# ---- install ---------------------------------------------------------------------------------------

def ours(done):
    return [d for d in done if any(w in d for w in ("gemini", "qwen", "Pi extension"))]


def test_install_and_uninstall_only_for_agents_set_up(tmp_path):
    home = str(tmp_path)
    env = {"HOME": home, "XDG_STATE_HOME": os.path.join(home, ".local", "state")}
    assert ours(os_.install_agents("opensessions", env)) == []  # none of the three here: nothing created
    assert not os.path.exists(os.path.join(home, ".gemini")) and not os.path.exists(os.path.join(home, ".pi"))
    os_.install_agents("opensessions", env, uninstall=True)
    os.makedirs(os.path.join(home, ".gemini"))
    os.makedirs(os.path.join(home, ".qwen"))
    os.makedirs(os.path.join(home, ".pi", "agent"))
    theirs = {"security": {"auth": {"selectedType": "gemini-api-key"}},
              "hooks": {"AfterAgent": [{"hooks": [{"type": "command", "command": "my-own-hook"}]}]}}
    with open(os.path.join(home, ".gemini", "settings.json"), "w") as f:
        json.dump(theirs, f)
    done = ours(os_.install_agents("opensessions", env))
    assert len(done) == 3, done
    g = json.load(open(os.path.join(home, ".gemini", "settings.json")))
    assert g["security"] == theirs["security"]
    after = g["hooks"]["AfterAgent"]
    assert after[0]["hooks"][0]["command"] == "my-own-hook"
    assert after[1]["hooks"][0] == {"type": "command", "command": "opensessions hook gemini", "timeout": 5000,
                                    "name": "opensessions"}
    assert set(g["hooks"]) == {"SessionStart", "SessionEnd", "BeforeAgent", "AfterAgent", "Notification"}
    q = json.load(open(os.path.join(home, ".qwen", "settings.json")))
    assert q["hooks"]["PermissionRequest"][0]["hooks"][0] == {"type": "command", "command": "opensessions hook qwen"}
    ext = os.path.join(home, ".pi", "agent", "extensions", "opensessions.ts")
    assert open(ext).read() == os_.PI_EXTENSION
    assert ours(os_.install_agents("opensessions", env)) == []  # idempotent
    removed = ours(os_.install_agents("opensessions", env, uninstall=True))
    assert len(removed) >= 3 and not os.path.exists(ext), removed
    assert json.load(open(os.path.join(home, ".gemini", "settings.json"))) == theirs
    assert not os.path.exists(os.path.join(home, ".qwen", "settings.json")) or \
        "hooks" not in json.load(open(os.path.join(home, ".qwen", "settings.json")))


def test_pi_extension_only_reports_to_our_private_runtime_file():
    ext = os_.PI_EXTENSION
    assert "/api/agent-event" in ext and 'agent: "pi"' in ext and "127.0.0.1" in ext
    assert "st.mode & 0o077" in ext and "isSymbolicLink" in ext
    for event in ("session_start", "agent_start", "agent_end", "session_shutdown"):
        assert 'pi.on("%s"' % event in ext


# ---- watchers on a temp HOME ------------------------------------------------------------------------

def place_fixtures(home):
    """The three captures where each agent keeps them, under a temp HOME."""
    gdir = os.path.join(home, ".gemini", "tmp", "proj", "chats")
    os.makedirs(gdir)
    shutil.copy(os.path.join(FIX, "gemini", "projects.json"), os.path.join(home, ".gemini", "projects.json"))
    gname = open(os.path.join(FIX, "gemini", "session-filename.txt")).read().strip()
    pdir = os.path.join(home, ".pi", "agent", "sessions", os_.pi_cwd_dir_name("/home/dev/proj"))
    os.makedirs(pdir)
    pname = open(os.path.join(FIX, "pi", "session-filename.txt")).read().strip()
    qdir = os.path.join(home, ".qwen", "projects", os_.claude_project_dir_name("/home/dev/proj"), "chats")
    os.makedirs(qdir)
    return {"gemini": (os.path.join(FIX, "gemini", "session.jsonl"), os.path.join(gdir, gname)),
            "pi": (os.path.join(FIX, "pi", "session.jsonl"), os.path.join(pdir, pname)),
            "qwen": (os.path.join(FIX, "qwen", "session.jsonl"), os.path.join(qdir, QWEN_ID + ".jsonl"))}


def find_thread(state, agent, tid):
    for t in state["threads"]:
        if t["agent"] == agent and t["id"] == tid:
            return t
    for s in state["sessions"]:
        for t in s["threads"]:
            if t["agent"] == agent and t["id"] == tid:
                return t
    return None


@pytest.fixture
def moreenv(env):
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    return env


def test_watchers_follow_appends_of_each_agent(moreenv, tmux):
    files = place_fixtures(moreenv.home)
    lines = {a: open(src, "rb").read().split(b"\n") for a, (src, _) in files.items()}
    cut = {"gemini": 4, "pi": 4, "qwen": 4}  # a turn under way
    for agent, (_, dst) in files.items():
        with open(dst, "wb") as f:
            f.write(b"\n".join(lines[agent][:cut[agent]]) + b"\n")
    server = ServerProc(moreenv, tmux)
    try:
        ids = {"gemini": gemini_id(), "pi": PI_ID, "qwen": QWEN_ID}
        for agent, tid in ids.items():
            t = retry_until(lambda: find_thread(server.state(), agent, tid), message=agent)
            assert t["status"] == "running", (agent, t)
            assert t["title"] == "hello there"
        for agent, (_, dst) in files.items():  # the rest arrives
            with open(dst, "ab") as f:
                f.write(b"\n".join(lines[agent][cut[agent]:]))
        want = {"gemini": "error", "pi": "error", "qwen": "retry"}
        for agent, tid in ids.items():
            t = retry_until(lambda: (lambda t: t if t and t["status"] == want[agent] else None)(
                find_thread(server.state(), agent, tid)), message=agent)
            assert t["usage"]["output"] == 15 and t["cwd"] == "/home/dev/proj"
        assert find_thread(server.state(), "pi", PI_ID)["usage"]["cost"] == pytest.approx(0.000066)
    finally:
        server.stop()


def test_gemini_waiting_from_the_hook_holds_until_the_file_moves_on(moreenv, tmux):
    files = place_fixtures(moreenv.home)
    src, dst = files["gemini"]
    lines = open(src, "rb").read().split(b"\n")
    # up to the permission prompt: the answer with the tool call is written empty, then lastUpdated
    upto = next(i for i, l in enumerate(lines) if b"FAKE_WRITE" in l) + 3
    with open(dst, "wb") as f:
        f.write(b"\n".join(lines[:upto]) + b"\n")
    server = ServerProc(moreenv, tmux)
    try:
        tid = gemini_id()
        retry_until(lambda: (find_thread(server.state(), "gemini", tid) or {}).get("status") == "running")
        note = [p for p in hooks("gemini") if p.get("notification_type") == "ToolPermission"][0]
        r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "--port", str(server.port), "hook", "gemini"],
                           input=json.dumps(note).encode(), env=moreenv.vars, timeout=20)
        assert r.returncode == 0
        retry_until(lambda: (find_thread(server.state(), "gemini", tid) or {}).get("status") == "waiting")
        with open(dst, "ab") as f:
            f.write(b'{"$set":{"lastUpdated":"2026-11-27T22:09:00.000Z"}}\n')  # only a patch
        moved = next(i for i, l in enumerate(lines[upto:]) if b"toolCalls" in l) + upto
        with open(dst, "ab") as f:
            f.write(lines[moved] + b"\n")
        retry_until(lambda: (find_thread(server.state(), "gemini", tid) or {}).get("status") == "running")
    finally:
        server.stop()


# ---- resurrect with a fake agent on real tmux -----------------------------------------------------------

def test_save_and_restore_gemini_qwen_pi(env):
    home = env.home
    bin_dir = fake_agents(os.path.join(env.base, "bin"), names=("gemini", "qwen", "pi"))
    log = os.path.join(env.base, "agents.log")
    env.vars["PATH"] = bin_dir + os.pathsep + env.vars["PATH"]
    env.vars["FAKE_LOG"] = log
    rdir = os.path.join(env.base, "resurrect")
    os.makedirs(rdir)
    work = os.path.join(home, "work")
    os.makedirs(work)
    # Pi's conversation for this cwd, found by the last-resort cwd guess (Pi hides its argv)
    pdir = os.path.join(home, ".pi", "agent", "sessions", os_.pi_cwd_dir_name(work))
    os.makedirs(pdir)
    shutil.copy(os.path.join(FIX, "pi", "session.jsonl"),
                os.path.join(pdir, open(os.path.join(FIX, "pi", "session-filename.txt")).read().strip()))
    gid = "4fc6198e-176f-4163-aac4-8bb4abbad101"
    gdir = os.path.join(home, ".gemini", "tmp", "work", "chats")
    os.makedirs(gdir)
    with open(os.path.join(gdir, "session-2026-11-27T22-08-4fc6198e.jsonl"), "w") as f:
        f.write(json.dumps({"sessionId": gid, "startTime": "2026-11-27T22:08:38.889Z", "kind": "main"}) + "\n")
    qdir = os.path.join(home, ".qwen", "projects", os_.claude_project_dir_name(work), "chats")
    os.makedirs(qdir)
    shutil.copy(os.path.join(FIX, "qwen", "session.jsonl"), os.path.join(qdir, QWEN_ID + ".jsonl"))
    paths = os_.agent_paths({"HOME": home})
    exists = os_.conversation_exists
    assert exists("gemini", gid, paths["gemini"]) and exists("pi", PI_ID, paths["pi"])
    assert exists("qwen", QWEN_ID, paths["qwen"])
    assert not exists("gemini", gid[:-1] + "0", paths["gemini"])
    assert not exists("pi", QWEN_ID, paths["pi"])
    t = TmuxServer(env, "more")
    try:
        t.new_session("seed", cwd=home)
        t.run("set-option", "-g", "default-command", "bash --norc --noprofile")
        t.run("set-option", "-g", "@resurrect-dir", rdir)
        for name, cmd in (("g", "gemini --yolo --resume " + gid), ("q", "qwen --approval-mode default -r " + QWEN_ID),
                          ("p", "pi --provider fake")):
            t.run("new-session", "-d", "-s", name, "-c", work, "-x", "150", "-y", "40")
            retry_until(lambda: t.run("display-message", "-p", "-t", "=%s:0.0" % name,
                                      "#{pane_current_command}").strip() in os_.SHELLS)
            t.run("send-keys", "-t", "=%s:0.0" % name, "-l", cmd)
            t.run("send-keys", "-t", "=%s:0.0" % name, "Enter")
        retry_until(lambda: os.path.exists(log) and len(open(log).read().splitlines()) == 3, timeout=10)
        cli = lambda *a: subprocess.run([PYTHON, SCRIPT, "-S", t.socket] + list(a), env=env.vars,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        r = cli("save")
        assert r.returncode == 0, r.stderr
        sidecar = [n for n in os.listdir(rdir) if n.startswith("opensessions_") and n.endswith(".json")
                   and n != "opensessions_last"][0]
        recs = {r["session"]: r for r in json.load(open(os.path.join(rdir, sidecar)))["records"]}
        assert (recs["g"]["agent"], recs["g"]["id"], recs["g"]["flags"], recs["g"]["idSource"]) == \
            ("gemini", gid, ["--yolo"], "argv")
        assert (recs["q"]["id"], recs["q"]["flags"]) == (QWEN_ID, ["--approval-mode", "default"])
        assert (recs["p"]["id"], recs["p"]["idSource"]) == (PI_ID, "cwd-guess")
        before = len(open(log).read().splitlines())
        for name in ("g", "q", "p"):
            t.run("kill-session", "-t", "=" + name)
            t.run("new-session", "-d", "-s", name, "-c", work, "-x", "150", "-y", "40")
        r = cli("restore")
        assert r.returncode == 0, r.stderr
        started = retry_until(lambda: (lambda l: l if len(l) == 3 else None)(open(log).read().splitlines()[before:]),
                              timeout=15)
        got = sorted(tuple(l.split("\t")[2:]) for l in started)
        assert got == [("gemini", "--yolo --resume " + gid), ("pi", "--provider fake --session " + PI_ID),
                       ("qwen", "--approval-mode default --resume " + QWEN_ID)]
    finally:
        t.kill()


def test_qwen_registry_links_the_thread_to_its_pane(moreenv, tmux):
    """~/.qwen/sessions/<pid>.json names the pid of a conversation: its pane, without any hook."""
    files = place_fixtures(moreenv.home)
    src, dst = files["qwen"]
    shutil.copy(src, dst)
    bin_dir = fake_agents(os.path.join(moreenv.base, "bin"), names=("qwen",))
    server = ServerProc(moreenv, tmux)
    try:
        tmux.run("new-session", "-d", "-s", "q", "-c", moreenv.home, os.path.join(bin_dir, "qwen"))
        pane = tmux.run("display-message", "-p", "-t", "=q:0.0", "#{pane_id}").strip()
        pid = int(tmux.run("display-message", "-p", "-t", "=q:0.0", "#{pane_pid}").strip())
        reg = os.path.join(moreenv.home, ".qwen", "sessions")
        os.makedirs(reg)
        doc = json.load(open(os.path.join(FIX, "qwen", "registry-13869.json")))
        doc.update(pid=pid, sessionId=QWEN_ID)
        with open(os.path.join(reg, "%d.tmp" % pid), "w") as f:
            json.dump(doc, f)
        os.rename(os.path.join(reg, "%d.tmp" % pid), os.path.join(reg, "%d.json" % pid))
        t = retry_until(lambda: (lambda t: t if t and t["pane"] == pane else None)(
            find_thread(server.state(), "qwen", QWEN_ID)))
        assert t["link"] == "pid" and t["alive"] and t["status"] == "retry"
        tmux.run("kill-session", "-t", "=q")
        os.unlink(os.path.join(reg, "%d.json" % pid))
        retry_until(lambda: find_thread(server.state(), "qwen", QWEN_ID)["alive"] is False)
    finally:
        server.stop()
