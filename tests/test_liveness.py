"""An agent that dies is not "running": fake agents on a real tmux, killed with SIGKILL mid-turn
(their registry file, rollout or DB row stays behind, as after a crash)."""
import json
import os
import signal
import time

import opensessions as os_
from conftest import fake_agents, retry_until
from test_watchers import CODEX_ID, NEW, append, claude_records, labserver, run_in_pane, thread  # noqa: F401


def running_option(tmux):
    return tmux.run("show-options", "-gqv", "@opensessions-running").strip()


def killed(labserver, tmux, agent, tid, pid):
    """SIGKILL pid; -> (thread after it says so, seconds it took)."""
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t = retry_until(lambda: (lambda x: x if x and not x["alive"] and x["status"] != "running" else None)(
        thread(labserver.state(), agent, tid)), timeout=5)
    return t, time.monotonic() - t0


def test_claude_killed_mid_turn(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    cwd = os.path.join(labenv.home, "work", "claude")
    reg = os.path.join(labenv.home, ".claude", "sessions")
    transcript = os.path.join(labenv.home, ".claude", "projects", os_.claude_project_dir_name(cwd), NEW + ".jsonl")
    append(transcript, claude_records(cwd, NEW)[:1])  # a prompt, no answer yet: mid-turn
    pane = run_in_pane(tmux, "agent", cwd, os.path.join(bin_dir, "claude"),
                       {"FAKE_REGISTRY": reg, "FAKE_SESSION": NEW, "FAKE_STATUS": "busy"})
    t = retry_until(lambda: (lambda x: x if x and x["alive"] and x["pane"] == pane else None)(
        thread(labserver.state(), "claude", NEW)))
    assert t["status"] == "running"
    retry_until(lambda: running_option(tmux) == "1")
    t, took = killed(labserver, tmux, "claude", NEW, t["pid"])
    assert os.path.exists(os.path.join(reg, "%d.json" % t["pid"]))  # left behind, still says busy
    assert (t["status"], t["detail"], t["alive"]) == ("interrupted", "agent exited", False)
    assert t["_session"] == "agent" and took < 2.0
    retry_until(lambda: running_option(tmux) == "0")
    # the transcript still says running: a later record does not bring the dead thread back to life
    append(transcript, [dict(claude_records(cwd, NEW)[0], uuid="u2")])
    labserver.post("/log", {"session": "agent", "message": "sync"})  # handled after the append is read
    retry_until(lambda: labserver.session("agent")["metadata"]["logs"])
    assert thread(labserver.state(), "claude", NEW)["status"] == "interrupted"


def test_codex_killed_mid_turn(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    rollout = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(labenv.home, ".codex", "sessions"))
               for n in ns if CODEX_ID in n][0]
    pane = run_in_pane(tmux, "cx", os.path.join(labenv.home, "work", "codex"), os.path.join(bin_dir, "codex"),
                       {"FAKE_HOLD": rollout})
    t = retry_until(lambda: (lambda x: x if x and x["pane"] == pane else None)(thread(labserver.state(), "codex", CODEX_ID)))
    append(rollout, [{"timestamp": "2026-11-22T03:00:00.000Z", "type": "event_msg",
                      "payload": {"type": "task_started", "turn_id": "x"}}])
    t = retry_until(lambda: (lambda x: x if x["status"] == "running" else None)(thread(labserver.state(), "codex", CODEX_ID)))
    assert t["alive"] and t["pid"]
    t, took = killed(labserver, tmux, "codex", CODEX_ID, t["pid"])
    assert (t["status"], t["alive"], t["_session"]) == ("interrupted", False, "cx") and took < 2.0


def test_opencode_killed_while_waiting(labserver, labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    pane = run_in_pane(tmux, "oc", os.path.join(labenv.home, "work", "opencode"), os.path.join(bin_dir, "opencode"), {})
    shell = int(tmux.run("display-message", "-p", "-t", pane, "#{pane_pid}"))
    pid = retry_until(lambda: [p for p in os_.process_table().values() if p.comm == "opencode" and p.ppid == shell])[0].pid
    sid = "ses_dff0ffa93ffebtZJZGz5f4eDGC"
    for etype, props in (("session.status", {"status": {"type": "busy"}}),
                         ("permission.asked", {"permission": "bash", "patterns": ["make"]})):
        assert labserver.post("/api/opencode-event", {"type": etype, "pid": pid,
                                                      "properties": dict(props, sessionID=sid)})[0] == 204
    retry_until(lambda: (thread(labserver.state(), "opencode", sid) or {}).get("status") == "waiting")
    t, took = killed(labserver, tmux, "opencode", sid, pid)
    assert (t["status"], t["alive"]) == ("interrupted", False) and took < 2.0


def test_agent_that_died_while_the_server_was_down(labenv, tmux):
    """A thread saved as running whose process is gone when the server starts (a crash, a reboot)."""
    from conftest import ServerProc
    gone = 4194303  # above any pid_max in use here
    assert not os_._pid_alive(gone)
    s = ServerProc(labenv, tmux)
    s.stop()
    files = [os.path.join(dp, n) for dp, _, ns in os.walk(labenv.home) for n in ns if n.startswith("state-") and n.endswith(".json")]
    assert files, "the server saves its state"
    doc = json.load(open(files[0]))
    doc["threads"].append({"agent": "claude", "id": NEW, "title": "t", "status": "running", "pid": gone,
                           "alive": True, "updatedAt": int(time.time() * 1000), "session": "os"})
    os_.atomic_write(files[0], json.dumps(doc))
    s = ServerProc(labenv, tmux)
    try:
        t = thread(s.state(), "claude", NEW)
        assert (t["status"], t["alive"]) == ("interrupted", False)
    finally:
        s.stop()


def test_agent_started_right_after_a_process_read_is_linked(labserver, labenv, tmux):
    """A fake Claude whose registry file arrives before our next process-table read (its pane's
    current command stays `sh`, so tmux says nothing): still linked, alive, within moments; then
    killed, it says so. Several launches in a row, in the same pane."""
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    cwd = os.path.join(labenv.home, "work", "claude")
    reg = os.path.join(labenv.home, ".claude", "sessions")
    tmux.run("new-session", "-d", "-s", "again", "-c", cwd, "-x", "120", "-y", "30")
    pane = tmux.run("display-message", "-p", "-t", "=again:0.0", "#{pane_id}").strip()
    for i in range(4):
        sid = "7777777%d-7777-4777-8777-777777777777" % i
        tmux.run("send-keys", "-t", pane, "FAKE_REGISTRY=%s FAKE_SESSION=%s FAKE_STATUS=busy %s"
                 % (reg, sid, os.path.join(bin_dir, "claude")), "Enter")
        t = retry_until(lambda: (lambda x: x if x and x["alive"] and x["pane"] == pane else None)(
            thread(labserver.state(), "claude", sid)), message="launch %d not linked" % i)
        t, _ = killed(labserver, tmux, "claude", sid, t["pid"])
        assert t["status"] == "interrupted"
