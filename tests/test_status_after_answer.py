"""The status after an answer, replayed from the real CLIs' timelines (tests/fixtures/<agent>/deny,
err500-esc: every file write, DB row, plugin event and hook call, in order) through the server's own
watchers and apply step (in process, no tmux): OpenCode after a denial, Claude Code after a denial,
Qwen Code after an Esc during retries; and a dead thread that must not come back by directory."""
import json
import os
import re
import sqlite3

import pytest

import opensessions as os_
from test_server_state import StubTmux

FX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
LAB_HOME = "/home/dev"


def timeline(path):
    with open(os.path.join(FX, path), encoding="utf-8") as f:
        rows = [json.loads(l) for l in f if l.strip()]
    t0 = rows[0]["t"]
    return [dict(r, at=r["t"] - t0) for r in rows]


def mark_at(rows, text):
    return next(r["at"] for r in rows if r["kind"] == "mark" and r["text"].startswith(text))


def in_home(env, path):
    """A path of the lab's HOME in the test's."""
    return env.home + path[len(LAB_HOME):] if path.startswith(LAB_HOME + "/") else None


def server_with_watchers(env):
    srv = os_.Server(StubTmux(env.base), environ=env.vars)
    srv.watchers = os_.AgentWatchers(srv, env.vars, recent_days=100000)
    return srv


class Sequence(object):
    """The statuses a thread went through, each once, with the time (s) of the step that made it."""

    def __init__(self, srv, agent, tid):
        self.srv, self.key, self.seen = srv, (agent, tid), []

    def look(self, at):
        t = self.srv.store.threads.get(self.key)
        if t is not None and (not self.seen or self.seen[-1][1] != t.status):
            self.seen.append((round(at, 2), t.status))

    def after(self, at):
        return [s for t, s in self.seen if t >= at]


# -- (a) OpenCode after a denial: interrupted, not running forever ----------------------------------------

OC_SESSION = "ses_dc2d11f08ffeV3b70C0LfPp18T"


PLUGIN_TYPES = ("session.status", "session.idle", "session.error", "permission.asked", "permission.replied",
                "session.updated")
PLUGIN_KEYS = ("status", "error", "permission", "patterns", "reply")


def plugin_slim(props):
    """The properties our OpenCode plugin forwards (OPENCODE_PLUGIN's slim), from an event's."""
    out = {"sessionID": props.get("sessionID") or (props.get("info") or {}).get("id")}
    out.update((k, props[k]) for k in PLUGIN_KEYS if k in props)
    if isinstance(props.get("info"), dict):
        out.update(title=props["info"].get("title"), parentID=props["info"].get("parentID"),
                   directory=props["info"].get("directory"))
    return out


def test_the_plugin_forwards_what_the_replay_sends():
    for key in PLUGIN_KEYS:
        # (a denial is told by "reply"); each is forwarded as p.KEY, clipped or as it is
        slim = os_.OPENCODE_PLUGIN[os_.OPENCODE_PLUGIN.index("const out = {"):]
        slim = slim[:slim.index("};")]
        assert re.search(r"\b%s: " % key, slim) and re.search(r"\bp\.%s\b" % key, os_.OPENCODE_PLUGIN), key
    for etype in PLUGIN_TYPES:
        assert '"%s"' % etype in os_.OPENCODE_PLUGIN


def opencode_db(env):
    path = os.path.join(env.home, ".local", "share", "opencode", "opencode.db")
    os.makedirs(os.path.dirname(path))
    conn = sqlite3.connect(path)
    dump = open(os.path.join(FX, "opencode", "opencode-db-dump.sql"), encoding="utf-8").read()
    conn.executescript("\n".join(l for l in dump.split("\n") if not l.startswith("INSERT")))
    for line in open(os.path.join(FX, "opencode", "deny", "db-rows.sql"), encoding="utf-8"):
        if line.startswith("INSERT INTO session"):  # the session row as captured (its times are set per step)
            conn.execute(line)
    conn.commit()
    return conn


def replay_opencode(env, until=None):
    """The plugin events of opencode/deny (each carries its message or part whole) posted to the API,
    and the same message and part written as OpenCode writes its rows, the watcher reading the DB."""
    rows = timeline("opencode/deny/timeline.jsonl")
    conn = opencode_db(env)
    srv = server_with_watchers(env)
    seq = Sequence(srv, "opencode", OC_SESSION)
    for r in rows:
        if r["kind"] != "append" or "opencode-events" not in r["path"] or (until and r["at"] > until):
            continue
        for line in r["lines"]:
            ev = json.loads(line)
            if ev.get("kind") != "event" or ev["event"]["properties"].get("sessionID") != OC_SESSION:
                continue
            etype, props = ev["type"], ev["event"]["properties"]
            if etype == "message.updated":
                info = dict(props["info"])
                mid = info.pop("id")
                info.pop("sessionID", None)
                conn.execute("INSERT OR REPLACE INTO message (id, session_id, time_created, time_updated, data) "
                             "VALUES (?, ?, ?, ?, ?)", (mid, OC_SESSION, info["time"]["created"], ev["ts"],
                                                        json.dumps(info)))
            elif etype == "message.part.updated":
                part = dict(props["part"])
                pid, mid = part.pop("id"), part.pop("messageID")
                part.pop("sessionID", None)
                conn.execute("INSERT OR REPLACE INTO part (id, message_id, session_id, time_created, time_updated, "
                             "data) VALUES (?, ?, ?, ?, ?, ?)", (pid, mid, OC_SESSION, ev["ts"], ev["ts"], json.dumps(part)))
            conn.execute("UPDATE session SET time_updated = ? WHERE id = ?", (ev["ts"], OC_SESSION))
            conn.commit()
            srv.watchers.opencode._query_opencode()  # what its next DB read sees
            seq.look(r["at"])
            # what our plugin sends (its slim(): only these properties), without the lab's pid (no
            # such process runs here, and the linker would call it exited)
            if etype in PLUGIN_TYPES:
                srv.api.api_plugin_event({"type": etype, "properties": plugin_slim(props)}, "opencode")
            seq.look(r["at"])
    conn.close()
    return rows, seq


def test_opencode_denial_settles_on_interrupted(env):
    rows, seq = replay_opencode(env, until=None)
    esc = mark_at(rows, "keys Escape")
    reject = mark_at(rows, "keys Enter")  # the Reject button
    after_esc = [s for t, s in seq.seen if esc <= t < mark_at(rows, "type 'say hi after esc'")]
    assert after_esc == ["interrupted"], seq.seen  # permission.replied "reject", held until the next turn
    after_reject = [s for t, s in seq.seen if reject <= t < mark_at(rows, "type 'say hi after reject'")]
    assert after_reject == ["interrupted"], seq.seen
    assert seq.seen[-1][1] == "done"  # the turn typed after it ran and finished
    assert os_.reply_status_refusal("OpenCode", "text", "interrupted") is None  # text goes through now


def test_opencode_denial_before_the_fix_stayed_running(env, monkeypatch):
    monkeypatch.setattr(os_, "opencode_tool_rejected", lambda parts: False)
    real = os_.OPENCODE.plugin.status
    monkeypatch.setattr(os_.OPENCODE.plugin, "status", lambda etype, props: (
        ("running", None, None) if etype == "permission.replied" else real(etype, props)))
    rows, seq = replay_opencode(env, until=mark_at(rows_of("opencode/deny/timeline.jsonl"), "type 'say hi after esc'"))
    assert seq.seen[-1][1] == "running", seq.seen  # what the real CLI's timeline showed: text refused as "running"


def rows_of(path):
    return timeline(path)


def test_a_rejected_call_is_the_last_part_not_any_error():
    rejected = {"type": "tool", "state": {"status": "error", "error": "The user rejected permission to use this "
                                                                       "specific tool call."}}
    finish = {"type": "step-finish", "reason": "tool-calls"}
    assert os_.opencode_tool_rejected([finish, rejected])
    assert not os_.opencode_tool_rejected([{"type": "text", "text": "after"}, rejected])  # it went on
    assert not os_.opencode_tool_rejected([{"type": "tool", "state": {"status": "error", "error": "exit 1"}}])
    msg = {"role": "assistant", "finish": "tool-calls", "time": {"created": 1, "completed": 2}}
    assert os_.opencode_status(msg, False, True) == ("interrupted", None)
    assert os_.opencode_status(msg, False, False) == ("running", None)  # mid-turn, between tool calls


# -- (b) Claude Code after a denial: interrupted without a "done" on the way ----------------------------

CLAUDE_SESSION = "66deee13-1738-4591-81a2-3b2f7042ee8f"


def replay_claude(env, monkeypatch):
    monkeypatch.setattr(os_, "claude_registry_alive", lambda entry, proc_root="/proc": True)  # the lab's pid
    rows = timeline("claude/deny/timeline.jsonl")
    srv = server_with_watchers(env)
    seq = Sequence(srv, "claude", CLAUDE_SESSION)
    w = srv.watchers.claude
    for r in rows:
        path = in_home(env, r.get("path", ""))
        if r["kind"] not in ("file", "append") or path is None:
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if r["kind"] == "file":
            os_.atomic_write(path, r["text"])
            w._read_registry_file(path)
            w._apply(CLAUDE_SESSION)
        else:
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(l + "\n" for l in r["lines"]))
            w._read_transcript(path)
        seq.look(r["at"])
    return rows, seq


def test_claude_denial_settles_on_interrupted_without_done(env, monkeypatch):
    rows, seq = replay_claude(env, monkeypatch)
    denied = mark_at(rows, "keys 4")
    assert seq.after(denied - 1.0)[:2] == ["waiting", "interrupted"], seq.seen
    assert "done" not in [s for t, s in seq.seen if denied <= t < mark_at(rows, "type 'say hi after no'")]
    esc = mark_at(rows, "keys Escape")
    assert [s for t, s in seq.seen if esc <= t < esc + 3] == ["interrupted"], seq.seen


def test_claude_denial_before_the_fix_showed_done_first(env, monkeypatch):
    real = os_.claude_live_status
    monkeypatch.setattr(os_, "claude_live_status", lambda t, r, w=None, n=1, pending=False: real(t, r, w, n))
    rows, seq = replay_claude(env, monkeypatch)
    denied = mark_at(rows, "keys 4")
    assert [s for t, s in seq.seen if denied <= t < denied + 3] == ["done", "interrupted"], seq.seen


# -- (c) Qwen Code: Esc during HTTP 500 retries ----------------------------------------------------------

QWEN_SESSION = "7209c3b8-e6cc-410a-bd38-e7379e670dcd"


def replay_qwen(env, hooks=True):
    rows = timeline("qwen/err500-esc/timeline.jsonl")
    srv = server_with_watchers(env)
    seq = Sequence(srv, "qwen", QWEN_SESSION)
    for r in rows:
        if r["kind"] == "append" and "hooks-qwen" in r["path"]:
            for line in r["lines"]:
                body = os_.hook_event("qwen", json.loads(line)["stdin"], environ={})
                if body and hooks:
                    srv.api.api_agent_event(body)
        elif r["kind"] == "append" and in_home(env, r["path"]) and "/chats/" in r["path"]:
            path = in_home(env, r["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write("".join(l + "\n" for l in r["lines"]))
            srv.watchers.qwen._read_chat(path)
        else:
            continue
        seq.look(r["at"])
    return rows, seq


def test_qwen_esc_during_retries_ends_the_retry(env):
    rows, seq = replay_qwen(env)
    esc = mark_at(rows, "keys Escape")
    before_esc = [s for t, s in seq.seen if t < esc]
    assert before_esc[-1] == "retry", seq.seen
    assert [s for t, s in seq.seen if esc <= t < mark_at(rows, "type 'say hi after esc'")] == ["interrupted"], seq.seen


def test_qwen_idle_prompt_after_a_finished_turn_changes_nothing(env):
    rows, seq = replay_qwen(env)
    idle_prompts = [round(r["at"], 2) for r in rows if r["kind"] == "append" and "hooks-qwen" in r["path"]
                    and any('"idle_prompt"' in l for l in r["lines"])]
    assert len(idle_prompts) == 3  # after the first turn's Stop, after the Esc, at /quit (retrying again)
    assert idle_prompts[0] not in [t for t, s in seq.seen], seq.seen  # a finished turn stays done
    for at in idle_prompts[1:]:  # each stopped a retry
        i = [t for t, s in seq.seen].index(at)
        assert seq.seen[i - 1][1] == "retry" and seq.seen[i][1] == "interrupted", seq.seen


def test_qwen_idle_prompt_hook_says_so():
    body = os_.hook_event("qwen", {"hook_event_name": "Notification", "session_id": QWEN_SESSION,
                                   "notification_type": "idle_prompt",
                                   "message": "Qwen Code is waiting for your input"}, environ={})
    assert body["status"] == "idle" and body["idlePrompt"] is True
    # Claude's idle reminders still change nothing (its spec has no idle notification)
    assert os_.hook_event("claude", {"hook_event_name": "Notification", "session_id": QWEN_SESSION,
                                     "notification_type": "idle_prompt"}, environ={}) is None


# -- (d) a dead thread does not come back by directory ----------------------------------------------------

def test_a_killed_run_stays_dead_when_a_new_one_starts_in_its_directory():
    old = os_.Thread("codex", "019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5b", cwd="/src/api", pid=110, alive=True,
                     updated_at=5)
    panes = {"%1": ("api", "/src/api")}
    # the run was killed (pid 110 gone); a new codex (pid 120) starts in the same pane and directory
    table = {100: os_.Proc(100, 1, "zsh"), 120: os_.Proc(120, 100, "codex", start=7)}
    p = os_.Processes(table, {100: "%1", 120: "%1"}, {"%1": ("codex", 120, ["codex"])}, {}, True)
    links, _ = os_.link_threads([old], panes, p)
    assert links == [(old.key, 110, False, None, None)]
    assert os_.guess_threads_by_cwd([old], panes, p, links) == []  # it was: (old, 120, True, "%1", "cwd")
    # its own id seen live again (codex resume <id>): alive, by pid
    p = os_.Processes(table, {100: "%1", 120: "%1"}, {"%1": ("codex", 120, ["codex", "resume", old.id])}, {}, True)
    links, _ = os_.link_threads([old], panes, p)
    assert links == [(old.key, 120, True, "%1", "pid")]
    # Codex: the TUI killed, its app-server (the process holding the rollout, the thread's pid) lives on
    # outside any pane: the thread is that process's, never guessed for the new TUI (seen in the lab)
    daemon = os_.Thread("codex", "019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5d", cwd="/src/api", pid=130, alive=True,
                        updated_at=9)
    table_d = dict(table)
    table_d[130] = os_.Proc(130, 1, "codex", start=3)
    p = os_.Processes(table_d, {100: "%1", 120: "%1"}, {"%1": ("codex", 120, ["codex"])},
                      {130: ("codex", daemon.id)}, True)
    links, _ = os_.link_threads([daemon], panes, p)
    assert links == [(daemon.key, 130, True, None, None)]
    assert os_.guess_threads_by_cwd([daemon], panes, p, links) == []
    # ... and the thread's pid is the TUI in the pane, not its app-server (a child holding the rollout):
    # the TUI killed, the thread is dead though the orphaned app-server still holds its file
    t = os_.Thread("codex", "019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5e", cwd="/src/api", updated_at=9)
    live = {100: os_.Proc(100, 1, "zsh"), 140: os_.Proc(140, 100, "codex", start=4),
            141: os_.Proc(141, 140, "codex", start=4)}
    p = os_.Processes(live, {100: "%1", 140: "%1", 141: "%1"}, {"%1": ("codex", 140, ["codex"])},
                      {141: ("codex", t.id)}, True)
    links, _ = os_.link_threads([t], panes, p)
    assert links == [(t.key, 140, True, "%1", "pid")]
    t.pid = 140
    orphan = {100: os_.Proc(100, 1, "zsh"), 141: os_.Proc(141, 1, "codex", start=4)}
    p = os_.Processes(orphan, {100: "%1"}, {}, {141: ("codex", t.id)}, True)
    assert os_.link_threads([t], panes, p)[0] == [(t.key, 140, False, None, None)]
    # a thread never seen with a process can still be guessed (a picker resume): the old behaviour
    never = os_.Thread("codex", "019a2b3c-4d5e-7f60-8a9b-0c1d2e3f4a5c", cwd="/src/api", alive=False, updated_at=4)
    p = os_.Processes(table, {100: "%1", 120: "%1"}, {"%1": ("codex", 120, ["codex"])}, {}, True)
    links, _ = os_.link_threads([old, never], panes, p)
    assert os_.guess_threads_by_cwd([old, never], panes, p, links) == [(never.key, 120, True, "%1", "cwd")]


# -- (e) Gemini CLI after a denial: interrupted, not done (found checking the real CLI) --------------------

GEMINI_SESSION = "5b192ac3-0dda-4f03-8a82-c4aab9463113"


def replay_gemini(env):
    """gemini/replies: its hook calls, and its chat file as written (the header, then each append)."""
    rows = timeline("gemini/replies/timeline.jsonl")
    srv = server_with_watchers(env)
    seq = Sequence(srv, "gemini", GEMINI_SESSION)
    for r in rows:
        path = in_home(env, r.get("path", ""))
        if r["kind"] == "append" and "hooks-gemini" in r["path"]:
            for line in r["lines"]:
                body = os_.hook_event("gemini", json.loads(line)["stdin"], environ={})
                if body:
                    srv.api.api_agent_event(body)
        elif r["kind"] in ("file", "append") and path and "/chats/" in path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w" if r["kind"] == "file" else "a", encoding="utf-8") as f:
                f.write(r["text"] if r["kind"] == "file" else "".join(l + "\n" for l in r["lines"]))
            srv.watchers.gemini._read_chat(path)
        else:
            continue
        seq.look(r["at"])
    return rows, seq


def test_gemini_denial_settles_on_interrupted(env):
    rows, seq = replay_gemini(env)
    keys = [r["at"] for r in rows if r["kind"] == "mark" and r["text"] in ("keys Escape", "keys 3")]
    assert len(keys) == 3  # Esc twice (touch, ls), then the "No" digit (date)
    for at in keys:
        after = [s for t, s in seq.seen if at <= t < at + 2.5]
        assert after == ["interrupted"], (at, seq.seen)  # not "done" (Gemini writes its history again)


def test_gemini_denial_before_the_fix_read_as_done(env, monkeypatch):
    monkeypatch.setattr(os_, "GEMINI_REPLAY_MS", 0)
    rows, seq = replay_gemini(env)
    at = [r["at"] for r in rows if r["kind"] == "mark" and r["text"] == "keys 3"][0]
    assert [s for t, s in seq.seen if at <= t < at + 2.5][-1] == "done", seq.seen
