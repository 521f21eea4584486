"""Agent watchers live: a real server, real tmux panes running fake agents, real file appends."""
import json
import os
import shutil
import subprocess
import time

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, ServerProc, fake_agents, lab_home, retry_until

U4 = "44444444-4444-4444-8444-444444444444"
NEW = "55555555-5555-4555-8555-555555555555"
CODEX_ID = "01a200ee-fa97-79d0-9e17-4806385eaaf9"


def thread(state, agent, tid):
    for s in state["sessions"]:
        for t in s["threads"]:
            if t["agent"] == agent and t["id"] == tid:
                return dict(t, _session=s["name"])
    for t in state["threads"]:
        if t["agent"] == agent and t["id"] == tid:
            return dict(t, _session=None)
    return None




@pytest.fixture
def labserver(labenv, tmux):
    s = ServerProc(labenv, tmux)
    yield s
    s.stop()


def test_cold_start_reads_every_agent(labserver):
    st = labserver.state()
    assert thread(st, "claude", U4)["status"] == "interrupted"  # the registry's pid is dead: transcript tells
    assert thread(st, "claude", U4)["title"] == "sample-title"
    assert thread(st, "claude", "33333333-3333-4333-8333-333333333333")["status"] == "error"
    assert thread(st, "claude", "11111111-1111-4111-8111-111111111111")["status"] == "done"
    cx = thread(st, "codex", CODEX_ID)
    assert cx["status"] == "error" and cx["title"] == "sample-name" and cx["model"] == "fake-model"
    oc = {t["id"]: t for t in st["threads"] if t["agent"] == "opencode"}
    assert sorted(t["status"] for t in oc.values()) == ["done", "done", "done", "error", "interrupted"]
    assert all(not t["unseen"] for t in st["threads"])  # found at start, not observed finishing
    assert all(t["alive"] is False for t in st["threads"])


def append(path, records):
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def claude_records(cwd, sid):
    ts = "2026-11-22T03:00:00.000Z"
    user = {"type": "user", "message": {"role": "user", "content": "refactor the parser"}, "timestamp": ts,
            "cwd": cwd, "sessionId": sid, "uuid": "u1"}
    assistant = {"type": "assistant", "message": {"model": "claude-opus-5-5", "stop_reason": "end_turn",
                                                  "content": [{"type": "text", "text": "ok"}]},
                 "timestamp": ts, "cwd": cwd, "sessionId": sid}
    done = {"type": "system", "subtype": "turn_duration", "durationMs": 5, "timestamp": ts, "sessionId": sid}
    return user, assistant, done


def test_appended_transcript_records_reach_events(labserver, labenv, sse):
    cwd = os.path.join(labenv.home, "work", "claude")
    path = os.path.join(labenv.home, ".claude", "projects", os_.claude_project_dir_name(cwd), NEW + ".jsonl")
    assert os.path.isdir(os.path.dirname(path))  # the same name make_homes.py (Claude's encoding) gave it
    events = sse(labserver.port)
    events.next()
    user, assistant, done = claude_records(cwd, NEW)
    t0 = time.monotonic()
    append(path, [user])
    ev = events.wait_for(lambda d: (thread(d, "claude", NEW) or {}).get("status") == "running", timeout=3)
    assert ev["received"] - t0 < 1.0
    assert thread(ev["data"], "claude", NEW)["title"] == "refactor the parser"
    # a partial line is held until it completes
    with open(path, "a") as f:
        f.write(json.dumps(assistant)[:20])
    with open(path, "a") as f:
        f.write(json.dumps(assistant)[20:] + "\n" + "{corrupt line\n" + json.dumps(done) + "\n")
    ev = events.wait_for(lambda d: (thread(d, "claude", NEW) or {}).get("status") == "done", timeout=3)
    t = thread(ev["data"], "claude", NEW)
    assert t["unseen"] is True and t["model"] == "claude-opus-5-5"
    health = json.loads(labserver.get("/health")[1])
    assert health["skippedRecords"] == 1 and health["inotify"] is True  # the corrupt line: skipped, counted


def test_truncated_or_replaced_transcript_starts_over(tmp_path):
    p = str(tmp_path / "t.jsonl")
    with open(p, "w") as f:
        f.write('{"a":1}\n{"b":2}\n')
    tail = os_.FileTail(p)
    assert tail.read()[0] == [b'{"a":1}', b'{"b":2}']
    with open(p, "a") as f:
        f.write('{"c":3}\n')
    assert tail.read() == ([b'{"c":3}'], False)
    with open(p, "w") as f:
        f.write('{"d":4}\n')
    assert tail.read() == ([b'{"d":4}'], True)  # truncated: start over
    os.replace(str(tmp_path / "t.jsonl"), str(tmp_path / "old"))
    with open(p, "w") as f:
        f.write('{"e":5}\n{"f":6}\n')
    assert tail.read() == ([b'{"e":5}', b'{"f":6}'], True)  # replaced (new inode)
    assert tail.read() == ([], False)


def test_cold_start_reads_only_the_tail_of_big_files(tmp_path):
    p = str(tmp_path / "big.jsonl")
    line = json.dumps({"type": "progress", "data": "x" * 1000}) + "\n"
    with open(p, "w") as f:
        for _ in range(2000):
            f.write(line)
    tail = os_.FileTail(p)
    lines, _ = tail.read(cold_tail=os_.TAIL_BYTES)
    assert tail.bytes_read <= os_.TAIL_BYTES and all(l.startswith(b"{") for l in lines)
    before = tail.bytes_read
    with open(p, "a") as f:
        f.write(line)
    assert len(tail.read()[0]) == 1 and tail.bytes_read - before == len(line)


def run_in_pane(tmux, session, cwd, command, env_vars):
    exports = " ".join("%s=%s" % (k, json.dumps(v)) for k, v in env_vars.items())
    tmux.run("new-session", "-d", "-s", session, "-c", cwd, "-x", "120", "-y", "30")
    tmux.run("send-keys", "-t", "=%s:0.0" % session, "env %s %s" % (exports, command), "Enter")
    return tmux.run("display-message", "-p", "-t", "=%s:0.0" % session, "#{pane_id}").strip()


def test_claude_registry_links_pid_to_pane_and_tracks_status(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    cwd = os.path.join(labenv.home, "work", "claude")
    reg = os.path.join(labenv.home, ".claude", "sessions")
    pane = run_in_pane(tmux, "agent", cwd, os.path.join(bin_dir, "claude") + " --session-id " + U4,
                       {"FAKE_REGISTRY": reg, "FAKE_SESSION": U4, "FAKE_STATUS": "busy"})
    # linked (alive) and the registry's status read: two steps, eventually both
    t = retry_until(lambda: (lambda x: x if x and x["alive"] and x["status"] == "running" else None)(
        thread(labserver.state(), "claude", U4)), timeout=5)
    assert t["pane"] == pane and t["_session"] == "agent" and t["status"] == "running" and t["pid"]
    # the registry says waiting for a permission answer
    regfile = os.path.join(reg, "%d.json" % t["pid"])
    data = json.load(open(regfile))
    data.update(status="waiting", waitingFor="permission prompt")
    os_.atomic_write(regfile, json.dumps(data))
    t = retry_until(lambda: (lambda x: x if x["status"] == "waiting" else None)(thread(labserver.state(), "claude", U4)))
    assert t["detail"] == "permission prompt" and t["unseen"] is True
    st = labserver.state()
    agent_session = next(s for s in st["sessions"] if s["name"] == "agent")
    assert agent_session["state"] == "waiting"
    # exit: the registry file goes away, the thread stays in its session, no longer alive
    tmux.run("send-keys", "-t", pane, "C-c", "")
    t = retry_until(lambda: (lambda x: x if not x["alive"] else None)(thread(labserver.state(), "claude", U4)))
    assert t["_session"] == "agent"


def test_codex_open_rollout_links_pane(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    rollout = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(labenv.home, ".codex", "sessions"))
               for n in ns if CODEX_ID in n][0]
    pane = run_in_pane(tmux, "cx", os.path.join(labenv.home, "work", "codex"), os.path.join(bin_dir, "codex"),
                       {"FAKE_HOLD": rollout})
    t = retry_until(lambda: (lambda x: x if x and x["pane"] == pane else None)(thread(labserver.state(), "codex", CODEX_ID)),
                    timeout=5)
    assert t["alive"] and t["_session"] == "cx"
    # a new turn starts, then the PermissionRequest hook says waiting: the rollout cannot tell
    append(rollout, [{"timestamp": "2026-11-22T03:00:00.000Z", "type": "event_msg",
                      "payload": {"type": "task_started", "turn_id": "x"}}])
    retry_until(lambda: thread(labserver.state(), "codex", CODEX_ID)["status"] == "running")
    payload = {"session_id": CODEX_ID, "hook_event_name": "PermissionRequest", "tool_name": "Bash",
               "cwd": os.path.join(labenv.home, "work", "codex")}
    r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "hook", "codex"], input=json.dumps(payload).encode(),
                       env=labserver.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""
    t = retry_until(lambda: (lambda x: x if x["status"] == "waiting" else None)(thread(labserver.state(), "codex", CODEX_ID)))
    assert t["detail"] == "permission: Bash"
    # a record that does not move the turn on (token accounting) changes neither status nor detail
    append(rollout, [{"timestamp": "2026-11-22T03:00:00.500Z", "type": "event_msg",
                      "payload": {"type": "token_count", "info": None}}])
    # the append is read before this later request is handled (the loop serves ready files first)
    labserver.post("/log", {"session": "cx", "message": "sync"})
    retry_until(lambda: labserver.session("cx")["metadata"]["logs"])
    t = thread(labserver.state(), "codex", CODEX_ID)
    assert (t["status"], t["detail"]) == ("waiting", "permission: Bash")
    # the answer arrives: the tool output lands in the rollout, then the turn completes
    append(rollout, [{"timestamp": "2026-11-22T03:00:01.000Z", "type": "response_item",
                      "payload": {"type": "function_call_output", "call_id": "c"}}])
    retry_until(lambda: thread(labserver.state(), "codex", CODEX_ID)["status"] == "running")
    append(rollout, [{"timestamp": "2026-11-22T03:00:02.000Z", "type": "event_msg",
                      "payload": {"type": "task_complete", "turn_id": "x"}}])
    retry_until(lambda: thread(labserver.state(), "codex", CODEX_ID)["status"] == "done")


def test_opencode_plugin_events_and_pid_link(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    pane = run_in_pane(tmux, "oc", os.path.join(labenv.home, "work", "opencode"), os.path.join(bin_dir, "opencode"), {})
    shell = int(tmux.run("display-message", "-p", "-t", pane, "#{pane_pid}"))  # not another tmux's opencode
    table = retry_until(lambda: [p for p in os_.process_table().values() if p.comm == "opencode" and p.ppid == shell])
    pid = table[0].pid
    sid = "ses_dff0ffa93ffebtZJZGz5f4eDGC"

    def post(etype, props):
        return labserver.post("/api/opencode-event", {"type": etype, "properties": dict(props, sessionID=sid),
                                                       "pid": pid, "directory": "/x"})
    # 202 when the server has not read the new process yet (kept, linked once it has), else 204
    assert post("session.status", {"status": {"type": "busy"}})[0] in (202, 204)
    t = retry_until(lambda: (lambda x: x if x["pane"] else None)(thread(labserver.state(), "opencode", sid)))
    assert t["status"] == "running" and t["pane"] == pane and t["_session"] == "oc"
    assert post("permission.asked", {"permission": "bash", "patterns": ["rm -rf build"]})[0] == 204
    t = thread(labserver.state(), "opencode", sid)
    assert t["status"] == "waiting" and t["detail"] == "bash: rm -rf build"
    assert post("permission.replied", {"reply": "once"})[0] == 204
    assert post("session.status", {"status": {"type": "retry", "attempt": 2, "message": "overloaded"}})[0] == 204
    t = thread(labserver.state(), "opencode", sid)
    assert (t["status"], t["attempt"]) == ("retry", 2)
    assert post("session.status", {"status": {"type": "idle"}})[0] == 204
    assert thread(labserver.state(), "opencode", sid)["status"] == "done"
    assert labserver.post("/api/opencode-event", {"type": "session.status", "properties": {"sessionID": "bad"}})[0] == 400


def test_cwd_fallback_never_gives_one_thread_to_two_panes(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    proj = os.path.join(labenv.base, "proj")
    os.makedirs(proj)
    amp_dir = os.path.join(labenv.home, ".local", "share", "amp", "threads")
    os.makedirs(amp_dir, exist_ok=True)
    tid = "T-019b9d03-62e3-772f-9780-3e637f90eaec"
    doc = {"id": tid, "title": "amp work", "created": int(time.time() * 1000),
           "env": {"initial": {"trees": [{"uri": "file://" + proj}]}},
           "messages": [{"role": "user", "content": [{"type": "text", "text": "go"}]}]}
    os_.atomic_write(os.path.join(amp_dir, tid + ".json"), json.dumps(doc))
    p1 = run_in_pane(tmux, "a1", proj, os.path.join(bin_dir, "amp"), {})
    p2 = run_in_pane(tmux, "a2", proj, os.path.join(bin_dir, "amp"), {})
    t = retry_until(lambda: (lambda x: x if x and x["pane"] else None)(thread(labserver.state(), "amp", tid)), timeout=5)
    assert t["pane"] in (p1, p2) and t["status"] == "running" and t["title"] == "amp work"
    st = labserver.state()
    owners = [s["name"] for s in st["sessions"] for th in s["threads"] if th["id"] == tid]
    assert len(owners) == 1


def test_hook_command_never_fails_the_agent(labserver, tmux):
    for stdin in (b"", b"not json", b'{"hook_event_name": "Stop"}', b"\xff" * 10):
        r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "hook", "claude"], input=stdin,
                           env=labserver.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    labserver.stop()
    payload = json.dumps({"session_id": U4, "hook_event_name": "Stop"}).encode()
    t0 = time.monotonic()
    r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "hook", "claude"], input=payload,
                       env=labserver.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    assert r.returncode == 0 and time.monotonic() - t0 < 3


def test_unseen_only_when_nobody_looks(labserver, labenv, tmux, attach):
    pane = tmux.run("display-message", "-p", "-t", "=main:0.0", "#{pane_id}").strip()
    attach("=main")
    retry_until(lambda: labserver.state()["clients"], message="the server never saw the attached client")
    labserver.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": NEW, "paneId": pane})
    labserver.post("/api/agent-event", {"agent": "claude", "status": "done", "threadId": NEW, "paneId": pane})
    t = thread(labserver.state(), "claude", NEW)
    assert t["status"] == "done" and t["unseen"] is False  # the attached client looks at that window
    tmux.run("new-window", "-t", "=main")  # the client now looks at another window
    retry_until(lambda: labserver.state()["clients"][0]["window"] != "@0")
    labserver.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": NEW, "paneId": pane})
    labserver.post("/api/agent-event", {"agent": "claude", "status": "done", "threadId": NEW, "paneId": pane})
    assert thread(labserver.state(), "claude", NEW)["unseen"] is True
    tmux.run("select-window", "-t", "=main:0")  # visiting clears it
    retry_until(lambda: thread(labserver.state(), "claude", NEW)["unseen"] is False)


def test_unseen_survives_restart(labserver, labenv, tmux):
    labserver.post("/api/agent-event", {"agent": "codex", "status": "running", "threadId": CODEX_ID, "tmuxSession": "main"})
    labserver.post("/api/agent-event", {"agent": "codex", "status": "error", "threadId": CODEX_ID, "tmuxSession": "main",
                                        "detail": "boom"})
    assert thread(labserver.state(), "codex", CODEX_ID)["unseen"] is True
    labserver.stop()
    again = ServerProc(labenv, tmux)
    try:
        t = thread(again.state(), "codex", CODEX_ID)
        assert t["unseen"] is True
    finally:
        again.stop()


def test_locked_opencode_db_is_survived(labserver, labenv):
    import sqlite3
    db = os.path.join(labenv.home, ".local", "share", "opencode", "opencode.db")
    conn = sqlite3.connect(db, timeout=1)
    conn.execute("PRAGMA cache_size=1")  # the transaction spills its pages into the -wal before it commits
    conn.execute("BEGIN EXCLUSIVE")
    try:
        conn.execute("UPDATE session SET title = 'renamed', time_updated = time_updated + 100000000 "
                     "WHERE slug = 'glowing-wolf'")
        conn.execute("UPDATE part SET data = data")  # pages enough to spill: the -wal is written under the lock
        assert os.path.getsize(db + "-wal") > 0  # so the watcher has a write to react to, while the lock is held
        # that event was queued before these requests, and the server's one loop handles every ready
        # file each round: by its second answer it has handled the event, and it did not block on it
        assert labserver.get("/")[0] == 200 and labserver.get("/")[0] == 200
    finally:
        conn.commit()
        conn.close()
    retry_until(lambda: any(t["title"] == "renamed" for t in labserver.state()["threads"]), timeout=5)


def test_codex_long_turn_status_comes_from_thread_history(labenv, tmux):
    """A rollout whose 128 KB tail holds no task event: the turn table tells the status."""
    rollout = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(labenv.home, ".codex", "sessions"))
               for n in ns if CODEX_ID in n][0]
    head = open(rollout).readline()
    filler = json.dumps({"timestamp": "2026-11-22T01:47:00.000Z", "type": "response_item",
                         "payload": {"type": "reasoning", "summary": [], "content": "x" * 2000}}) + "\n"
    with open(rollout, "w") as f:
        f.write(head)
        for _ in range(200):
            f.write(filler)
    s = ServerProc(labenv, tmux)
    try:
        t = thread(s.state(), "codex", CODEX_ID)
        assert t["status"] == "error" and "high demand" in t["detail"]
    finally:
        s.stop()


def test_codex_daemon_holding_the_rollout(labserver, labenv, tmux):
    """Daemon mode: the app-server (in no pane) holds the rollout; the TUI runs `codex resume <id>`."""
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    rollout = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(labenv.home, ".codex", "sessions"))
               for n in ns if CODEX_ID in n][0]
    daemon = subprocess.Popen([os.path.join(bin_dir, "codex"), "app-server", "--listen", "unix://"],
                              env=dict(labenv.vars, FAKE_HOLD=rollout), stdin=subprocess.PIPE,
                              start_new_session=True)
    try:
        pane = run_in_pane(tmux, "cxd", labenv.home, os.path.join(bin_dir, "codex") + " resume " + CODEX_ID, {})
        t = retry_until(lambda: (lambda x: x if x and x["pane"] == pane else None)(
            thread(labserver.state(), "codex", CODEX_ID)), timeout=5)
        assert t["alive"] and t["_session"] == "cxd" and t["link"] == "pid"
    finally:
        daemon.kill()
        daemon.wait()


def test_stat_polling_fallback_follows_appends(labenv, tmux):
    """Where inotify is missing (macOS) or its watches ran out: a cheap stat scan, once a second."""
    labenv.vars["OPENSESSIONS_WATCH"] = "poll"
    s = ServerProc(labenv, tmux)
    try:
        assert "watching agent files by stat" in s.log()
        cwd = os.path.join(labenv.home, "work", "claude")
        path = os.path.join(labenv.home, ".claude", "projects", os_.claude_project_dir_name(cwd), NEW + ".jsonl")
        user, assistant, done = claude_records(cwd, NEW)
        append(path, [user])
        retry_until(lambda: (thread(s.state(), "claude", NEW) or {}).get("status") == "running", timeout=5)
        append(path, [assistant, done])
        retry_until(lambda: thread(s.state(), "claude", NEW)["status"] == "done", timeout=5)
    finally:
        s.stop()
