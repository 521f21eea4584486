"""A conversation resumed days later is live again.

The HOME here is made from the lab's captures and then aged: every file, and Codex's day
directory and state_5.sqlite rows, are a month old, past OPENSESSIONS_RECENT_DAYS (7). Codex
appends a resumed conversation to its ORIGINAL rollout in its original sessions/YYYY/MM/DD/, and
renames it in state_5.sqlite: both must reach /events, with inotify and by stat (the macOS path),
where what makes it quick is a sign that the agent runs (its lock file, its registry, its process)."""
import json
import os
import shutil
import sqlite3
import time

import pytest

import opensessions as os_
from conftest import ServerProc, fake_agents, lab_home, retry_until

CODEX_ID = "01a200ee-ed35-7443-92af-a58cf3c30a84"  # `codex exec "say hi"`, no name
U4 = "44444444-4444-4444-8444-444444444444"  # the interactive Claude session
MONTH = 30 * 86400


def iso_now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@pytest.fixture
def oldenv(env):
    """env whose HOME holds the lab's captures as they would be a month later."""
    shutil.rmtree(env.home)
    home = lab_home(env.home)
    then = time.time() - MONTH
    sessions = os.path.join(home, ".codex", "sessions")
    day = os.path.join(sessions, time.strftime("%Y/%m/%d", time.localtime(then)))
    src = os.path.join(sessions, "2026", "11", "22")
    moved = {}
    if os.path.abspath(src) != os.path.abspath(day):
        os.makedirs(day)
        for name in os.listdir(src):
            os.rename(os.path.join(src, name), os.path.join(day, name))
            moved[os.path.join(src, name)] = os.path.join(day, name)
        shutil.rmtree(os.path.join(sessions, "2026", "11", "22"))
    conn = sqlite3.connect(os.path.join(home, ".codex", "state_5.sqlite"))
    for tid, path in conn.execute("SELECT id, rollout_path FROM threads").fetchall():
        conn.execute("UPDATE threads SET rollout_path = ?, updated_at = ?, updated_at_ms = ? WHERE id = ?",
                     (moved.get(path, path), int(then), int(then * 1000), tid))
    conn.commit()
    conn.close()
    for dirpath, dirnames, names in os.walk(home):
        for n in names + dirnames:
            os.utime(os.path.join(dirpath, n), (then, then))
    env.vars.pop("OPENSESSIONS_RECENT_DAYS", None)  # the default window: 7 days
    env.vars["OPENSESSIONS_LIST_HOURS"] = "24"
    env.rollout = [os.path.join(day, n) for n in os.listdir(day) if CODEX_ID in n][0]
    return env


def codex_thread(data, tid=CODEX_ID):
    return next((t for t in [t for s in data["sessions"] for t in s["threads"]] + data["threads"]
                 if t["agent"] == "codex" and t["id"] == tid), None)


def append_codex_turn(rollout, text):
    """What Codex writes to a resumed rollout when the user sends a prompt."""
    with open(rollout, "a") as f:
        for rec in ({"timestamp": iso_now(), "type": "event_msg", "payload": {"type": "task_started", "turn_id": "t-resumed"}},
                    {"timestamp": iso_now(), "type": "event_msg", "payload": {"type": "user_message", "message": text}}):
            f.write(json.dumps(rec) + "\n")


def start(env, tmux, sse, poll=False):
    if poll:
        env.vars["OPENSESSIONS_WATCH"] = "poll"
    s = ServerProc(env, tmux)
    assert codex_thread(s.state()) is None  # older than the window: not read at cold start
    return s, sse(s.port)


def test_inotify_an_append_to_a_rollout_older_than_the_window_reaches_events(oldenv, tmux, sse):
    s, events = start(oldenv, tmux, sse)
    try:
        append_codex_turn(oldenv.rollout, "resumed after a month")
        events.wait_for(lambda d: (codex_thread(d) or {}).get("status") == "running")
    finally:
        s.stop()


def test_inotify_a_rename_in_state_5_of_an_old_thread_reaches_events(oldenv, tmux, sse):
    s, events = start(oldenv, tmux, sse)
    try:
        conn = sqlite3.connect(os.path.join(oldenv.home, ".codex", "state_5.sqlite"))
        conn.execute("UPDATE threads SET name = 'renamed after a month' WHERE id = ?", (CODEX_ID,))
        conn.commit()
        conn.close()
        events.wait_for(lambda d: (codex_thread(d) or {}).get("title") == "renamed after a month")
    finally:
        s.stop()


def test_poll_codex_lock_file_makes_an_old_rollouts_append_quick(oldenv, tmux, sse):
    """By stat, a rollout idle for a month is looked at every STAT_IDLE_MAX (120 s); Codex's lock
    file (there while it has the thread loaded) holds it at a look a second."""
    s, events = start(oldenv, tmux, sse, poll=True)
    try:
        locks = os.path.join(oldenv.home, ".codex", "thread-writer-locks")
        os.makedirs(locks)
        held = json.loads(s.get("/health")[1])["watch"]["held"]  # the databases, always
        open(os.path.join(locks, CODEX_ID + ".lock"), "w").close()
        retry_until(lambda: json.loads(s.get("/health")[1])["watch"]["held"] == held + 1)
        append_codex_turn(oldenv.rollout, "resumed, by stat")
        events.wait_for(lambda d: (codex_thread(d) or {}).get("status") == "running", timeout=5)
    finally:
        s.stop()


def test_poll_codex_state_5_update_reads_a_rollout_resumed_in_an_old_day(oldenv, tmux, sse):
    """Codex updates its thread row as it writes: the row's updated_at points at the rollout."""
    s, events = start(oldenv, tmux, sse, poll=True)
    try:
        append_codex_turn(oldenv.rollout, "resumed, seen through state_5")
        conn = sqlite3.connect(os.path.join(oldenv.home, ".codex", "state_5.sqlite"))
        conn.execute("UPDATE threads SET updated_at = ?, updated_at_ms = ? WHERE id = ?",
                     (int(time.time()), int(time.time() * 1000), CODEX_ID))
        conn.commit()
        conn.close()
        events.wait_for(lambda d: (codex_thread(d) or {}).get("status") == "running", timeout=5)
    finally:
        s.stop()


def test_poll_claude_resumed_after_a_month_its_registry_holds_the_transcript(oldenv, tmux, sse):
    """`claude --resume <id>` on a month-old conversation: its registry names the session, the
    thread is read and linked, and its transcript is looked at each second from then on."""
    s, events = start(oldenv, tmux, sse, poll=True)
    try:
        bin_dir = fake_agents(os.path.join(oldenv.base, "bin"))
        cwd = os.path.join(oldenv.home, "work", "claude")
        reg = os.path.join(oldenv.home, ".claude", "sessions")
        os.makedirs(cwd, exist_ok=True)  # (the captures' directory is only named in them)
        tmux.run("new-session", "-d", "-s", "agent", "-c", cwd)
        tmux.run("send-keys", "-t", "=agent:0.0", "cd %s && env FAKE_REGISTRY=%s FAKE_SESSION=%s %s --resume %s"
                 % (cwd, reg, U4, os.path.join(bin_dir, "claude"), U4), "Enter")
        events.wait_for(lambda d: any(t["id"] == U4 and t["alive"] for s_ in d["sessions"] for t in s_["threads"]),
                        timeout=10)
        transcript = os.path.join(oldenv.home, ".claude", "projects", os_.claude_project_dir_name(cwd), U4 + ".jsonl")
        with open(transcript, "a") as f:
            f.write(json.dumps({"type": "custom-title", "customTitle": "back after a month", "sessionId": U4}) + "\n")
        events.wait_for(lambda d: any(t["id"] == U4 and t["title"] == "back after a month"
                                      for s_ in d["sessions"] for t in s_["threads"]), timeout=5)
    finally:
        s.stop()


class _Stub(object):
    def __init__(self):
        import types
        self.loop = types.SimpleNamespace(call_later=lambda *a: (lambda: None), add_reader=lambda *a: None,
                                          remove_reader=lambda *a: None)

    def apply_thread_update(self, agent, tid, **fields):
        pass

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def test_every_agent_names_the_files_a_live_conversation_can_change(tmp_path):
    """By stat, what a live agent maps to is held (a look a second): for each agent, from the
    captured file names, the conversation's own file when it can be named, else the directory its
    agent writes in. A month-old chat of each, none read at cold start."""
    fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    home = str(tmp_path / "home")
    cwd = "/home/dev/proj"
    then = time.time() - MONTH

    def place(agent, directory):
        name = open(os.path.join(fixtures, agent, "session-filename.txt")).read().strip()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        shutil.copy(os.path.join(fixtures, agent, "session.jsonl"), path)
        os.utime(path, (then, then))
        return path
    gemini = place("gemini", os.path.join(home, ".gemini", "tmp", "proj", "chats"))
    shutil.copy(os.path.join(fixtures, "gemini", "projects.json"), os.path.join(home, ".gemini", "projects.json"))
    qwen = place("qwen", os.path.join(home, ".qwen", "projects", os_.claude_project_dir_name(cwd), "chats"))
    pi = place("pi", os.path.join(home, ".pi", "agent", "sessions", os_.pi_cwd_dir_name(cwd)))
    claude = os.path.join(home, ".claude", "projects", os_.claude_project_dir_name(cwd), U4 + ".jsonl")
    w = os_.AgentWatchers(_Stub(), {"HOME": home, "OPENSESSIONS_WATCH": "poll"})
    w.start()
    try:
        assert not w.tails  # a month old: nothing read at cold start
        ids = {"gemini": "96a28b5e-e5ee-46ee-aaf6-4635d3250404", "qwen": "60a8d642-8592-4432-be89-8737ccdec561",
               "pi": "01a21f0e-e5b8-73bf-b370-29620fbabbee", "claude": U4}
        w.hold_threads([(agent, tid, cwd) for agent, tid in ids.items()])
        held = set(w.core.poller.held)
        assert {gemini, qwen, pi, claude} <= held
        # an agent in a pane on a conversation we cannot name: the directory it writes in
        w.hold_threads([], [("pi", cwd), ("gemini", cwd), ("claude", cwd), ("codex", cwd)])
        held = set(w.core.poller.held)
        assert {os.path.dirname(pi), os.path.dirname(gemini), os.path.dirname(claude)} <= held
        assert os.path.join(home, ".codex", "sessions", time.strftime("%Y/%m/%d")) in held
        assert gemini not in held  # let go
    finally:
        w.close()


def test_gemini_resume_stub_never_speaks_over_the_original(tmp_path):
    """Gemini CLI 0.61.0 resuming a 10-day-old chat (lab capture): it appends to the original file
    and leaves a stub `session-<now>-<same 8>.jsonl` with the same sessionId (a header and the
    session context only). In either reading order the thread's status is the original's."""
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "gemini", "history", "chats")
    original, stub = "session-2026-11-23T18-24-3cd2468e.jsonl", "session-2026-12-03T18-24-3cd2468e.jsonl"
    sid = "3cd2468e-a58d-43dd-97cd-5fc492a63bd5"
    for order in ((original, stub), (stub, original)):
        home = str(tmp_path / ("home-" + order[0][8:18]))
        chats = os.path.join(home, ".gemini", "tmp", "proj", "chats")
        os.makedirs(chats)
        seen = []

        class Server(_Stub):
            def apply_thread_update(self, agent, tid, **fields):
                seen.append((agent, tid, fields.get("status")))
        w = os_.AgentWatchers(Server(), {"HOME": home, "OPENSESSIONS_WATCH": "poll"})
        w.start()
        try:
            for name in order:
                shutil.copy(os.path.join(src, name), os.path.join(chats, name))
                w.gemini._read_chat(os.path.join(chats, name))
            assert seen and seen[-1] == ("gemini", sid, "done"), (order, seen)
        finally:
            w.close()


def test_poll_a_hook_naming_an_old_conversation_holds_its_file(oldenv, tmux, sse):
    """Codex's hook (UserPromptSubmit of a resumed thread) names it: its month-old rollout, found
    through state_5.sqlite, is looked at each second from then on."""
    s, events = start(oldenv, tmux, sse, poll=True)
    try:
        held = json.loads(s.get("/health")[1])["watch"]["held"]  # the databases, always
        status, _ = s.post("/api/agent-event", {"agent": "codex", "threadId": CODEX_ID, "status": "running",
                                                "source": "hook"})
        assert status in (200, 202) and codex_thread(s.state())["title"] == ""  # the hook named it; unread
        assert json.loads(s.get("/health")[1])["watch"]["held"] == held + 1
        append_codex_turn(oldenv.rollout, "resumed, a hook said so")
        # the rollout is read: its first prompt becomes the title
        events.wait_for(lambda d: (codex_thread(d) or {}).get("title") == "say hi", timeout=5)
    finally:
        s.stop()
