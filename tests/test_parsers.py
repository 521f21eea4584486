"""Agent parsers against the real captured files in tests/fixtures/<agent>/ (pure, no I/O but reading)."""
import json
import os
import sqlite3

import pytest
from hypothesis import given, settings, strategies as st

import opensessions as os_
from conftest import FIXTURES, lab_home

CLAUDE = os.path.join(FIXTURES, "claude")
CODEX = os.path.join(FIXTURES, "codex")
OPENCODE = os.path.join(FIXTURES, "opencode")


def lines_of(path):
    with open(path, "rb") as f:
        return f.read().split(b"\n")


def replay(reducer, agent, path, tid="t"):
    """Feed a file record by record; -> (final state, list of distinct statuses in order)."""
    state = os_.new_thread_state(agent, tid)
    seq = []
    records, bad = os_.parse_json_lines(lines_of(path))
    assert bad == 0
    for rec in records:
        reducer(state, rec)
        if not seq or seq[-1] != state["status"]:
            seq.append(state["status"])
    return state, seq


@pytest.mark.parametrize("name,status,title", [
    ("transcript-plain-print.jsonl", "done", "say hi"),
    ("transcript-tool-print.jsonl", "done", "please FAKE_TOOL"),
    ("transcript-error500-print.jsonl", "error", "FAKE_ERR500 please"),
    ("transcript-interactive-permission-interrupt-rename.jsonl", "interrupted", "sample-title"),
])
def test_claude_transcripts_final_status(name, status, title):
    state, _ = replay(os_.claude_reduce, "claude", os.path.join(CLAUDE, name))
    assert state["status"] == status
    assert os_.thread_title(state) == title
    assert state["cwd"] == "/home/dev/work/claude"
    if status == "error":
        assert state["detail"].startswith("API Error: 500")
        assert state["model"] is None  # "<synthetic>" is not a model
    else:
        assert state["model"] == "claude-opus-5-5"


def test_claude_interactive_replay_sequence():
    _, seq = replay(os_.claude_reduce, "claude",
                    os.path.join(CLAUDE, "transcript-interactive-permission-interrupt-rename.jsonl"))
    # FAKE_WRITE (tool, permission granted) -> done; FAKE_SLOW -> Esc -> interrupted; /rename changes nothing
    assert seq == ["idle", "running", "done", "running", "interrupted"]


@pytest.mark.parametrize("name,status,detail", [
    ("sessions-PID-waiting.json", "waiting", "permission prompt"),
    ("sessions-PID-busy.json", "running", None),
    ("sessions-PID-idle.json", "done", None),
])
def test_claude_registry_snapshots(name, status, detail):
    with open(os.path.join(CLAUDE, name)) as f:
        entry = os_.claude_registry_entry(json.load(f))
    assert entry["sessionId"] == "44444444-4444-4444-8444-444444444444" and entry["pid"] == 25408
    assert entry["procStart"] == 72036
    assert os_.claude_live_status("running", entry["status"], entry["waitingFor"], turns=1) == (status, detail)


def test_claude_registry_idle_before_any_turn_and_transcript_wins_when_finished():
    assert os_.claude_live_status("idle", "idle", None, turns=0) == ("idle", None)
    assert os_.claude_live_status("error", "idle", None, turns=1) == ("error", None)
    assert os_.claude_live_status("interrupted", "idle", None, turns=2) == ("interrupted", None)
    assert os_.claude_live_status("done", None) == ("done", None)  # process gone: the transcript tells


def test_claude_registry_rejects_garbage():
    assert os_.claude_registry_entry({"pid": "1", "sessionId": "x"}) is None
    assert os_.claude_registry_entry([]) is None
    e = os_.claude_registry_entry({"pid": 5, "sessionId": "s", "status": "weird", "name": "n", "nameSource": "derived"})
    assert e["status"] is None and e["name"] is None


@pytest.mark.parametrize("name,status,first", [
    ("rollout-exec-plain.jsonl", "done", "say hi"),
    ("rollout-exec-json.jsonl", "done", "say hi"),
    ("rollout-exec-tool.jsonl", "done", "please FAKE_TOOL"),
    ("rollout-exec-error500.jsonl", "error", "FAKE_ERR500 now"),
    ("rollout-interactive.jsonl", "error", "hello codex"),
    # at the approval prompt the rollout shows a running turn: waiting is not on disk
    ("rollout-interactive-SNAPSHOT-while-waiting-approval.jsonl", "running", "hello codex"),
])
def test_codex_rollouts_final_status(name, status, first):
    state, _ = replay(os_.codex_reduce, "codex", os.path.join(CODEX, name))
    assert state["status"] == status
    assert state["firstPrompt"] == first
    assert state["model"] == "fake-model" and state["cwd"] == "/home/dev/work/codex"
    assert os_._UUID_RE.match(state["id"])
    if status == "error":
        assert "high demand" in state["detail"]


def test_codex_interactive_replay_sequence_and_name():
    state, seq = replay(os_.codex_reduce, "codex", os.path.join(CODEX, "rollout-interactive.jsonl"))
    assert seq == ["idle", "running", "done", "running", "done", "running", "interrupted", "running", "error"]
    with open(os.path.join(CODEX, "session_index.jsonl"), "rb") as f:
        names = os_.parse_codex_session_index(os_.parse_json_lines(f.read().split(b"\n"))[0])
    assert os_.thread_title(state, names.get(state["id"])) == "sample-name"


def test_codex_turn_rows_agree_with_rollout_statuses():
    """thread_history_1.sqlite's turn statuses (inProgress/completed/interrupted/failed) say the same."""
    db = sqlite3.connect(":memory:")
    with open(os.path.join(CODEX, "sqlite-threads-and-turns.sql")) as f:
        db.executescript(f.read())
    rows = dict(db.execute("SELECT thread_id, status FROM thread_turns t1 WHERE started_at = "
                           "(SELECT max(started_at) FROM thread_turns t2 WHERE t2.thread_id = t1.thread_id)"))
    mapping = {k: os_.codex_turn_status(k)[0] for k in ("completed", "failed", "interrupted", "inProgress")}
    assert mapping == {"completed": "done", "failed": "error", "interrupted": "interrupted", "inProgress": "running"}
    err = db.execute("SELECT error_json FROM thread_turns WHERE status = 'failed'").fetchone()[0]
    assert os_.codex_turn_status("failed", err) == ("error", "We’re currently experiencing high demand, which may "
                                                             "cause temporary errors.")
    assert os_.codex_turn_status("weird") == (None, None)
    for name in ("rollout-exec-plain.jsonl", "rollout-exec-tool.jsonl", "rollout-exec-error500.jsonl",
                 "rollout-interactive.jsonl"):
        state, _ = replay(os_.codex_reduce, "codex", os.path.join(CODEX, name))
        if state["id"] in rows:
            assert mapping[rows[state["id"]]] == state["status"], name


def test_codex_id_from_rollout_path():
    assert os_.codex_id_from_path("/x/rollout-2026-11-22T01-46-31-01a200ee-fa97-79d0-9e17-4806385eaaf9.jsonl") == \
        "01a200ee-fa97-79d0-9e17-4806385eaaf9"
    assert os_.codex_id_from_path("/x/rollout-garbage.jsonl") is None
    assert os_.codex_id_from_path("/x/other.jsonl") is None


@pytest.fixture(scope="module")
def oc_db(tmp_path_factory):
    home = lab_home(str(tmp_path_factory.mktemp("lab") / "home"))
    return sqlite3.connect(os.path.join(home, ".local/share/opencode/opencode.db"))


@pytest.mark.parametrize("slug,status", [
    ("glowing-wolf", "done"), ("witty-canyon", "done"), ("misty-eagle", "done"),
    ("calm-orchid", "error"), ("proud-orchid", "interrupted"),
])
def test_opencode_db_statuses(oc_db, slug, status):
    sid = oc_db.execute("SELECT id FROM session WHERE slug = ?", (slug,)).fetchone()[0]
    assert os_.valid_thread_id("opencode", sid)
    mid, data = oc_db.execute("SELECT id, data FROM message WHERE session_id = ? ORDER BY time_created DESC, id DESC",
                              (sid,)).fetchone()
    got, detail = os_.opencode_status(json.loads(data))
    assert got == status
    if status == "error":
        assert detail == "fake 400 error"


def test_opencode_permission_snapshot_looks_running():
    with open(os.path.join(OPENCODE, "db-parts-SNAPSHOT-while-permission.json")) as f:
        parts = json.load(f)
    rows = parts if isinstance(parts, list) else parts.get("parts", parts.get("rows", []))
    running = any('"running"' in (r.get("data") if isinstance(r.get("data"), str) else json.dumps(r.get("data")))
                  for r in rows if isinstance(r, dict))
    assert running
    assert os_.opencode_status({"role": "assistant", "time": {"created": 1}}, running_tool=True) == ("running", None)


def test_opencode_plugin_event_sequence():
    seq = []
    with open(os.path.join(OPENCODE, "plugin-events.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") != "event":
                continue
            props = rec["event"].get("properties", {})
            if props.get("sessionID") != "ses_dff0ffa93ffebtZJZGz5f4eDGC":
                continue
            mapped = os_.opencode_plugin_status(rec["type"], props)
            if mapped is None:
                continue
            status = mapped[0]
            if status == "idle":
                status = os_.settle_idle(seq[-1][0] if seq else None)
            if not seq or seq[-1][0] != status:
                seq.append((status, mapped[1]))
    statuses = [s for s, _ in seq]
    # FAKE_WRITE: busy -> permission asked -> replied -> idle (done); FAKE_SLOW: busy -> Esc (aborted)
    assert statuses[:4] == ["running", "waiting", "running", "done"]
    assert "interrupted" in statuses[4:]
    assert dict(seq)["waiting"] == "bash: echo hi > hi.txt"


def test_opencode_retry_event():
    assert os_.opencode_plugin_status("session.status", {"status": {"type": "retry", "attempt": 3,
                                                                    "message": "overloaded"}}) == \
        ("retry", "overloaded", 3)


def test_settle_idle():
    assert os_.settle_idle("running") == "done"
    assert os_.settle_idle("waiting") == "done"
    assert os_.settle_idle("error") == "error"
    assert os_.settle_idle(None) == "idle"


def test_claude_hook_payloads_map_to_events():
    seen = {}
    for path in ("hook-payloads.jsonl", "hook-payloads-extra-notification-stopfailure.jsonl"):
        with open(os.path.join(CLAUDE, path)) as f:
            for line in f:
                rec = json.loads(line)
                env = dict(rec.get("env_CLAUDE_vars") or {}, TMUX_PANE="%4")
                body = os_.hook_event("claude", rec["stdin"], env)
                if body is not None:
                    seen.setdefault(rec["event"], body)
    assert seen["UserPromptSubmit"]["status"] == "running" and seen["UserPromptSubmit"]["prompt"]
    assert seen["Stop"]["status"] == "idle"
    assert seen["StopFailure"]["status"] == "error" and seen["StopFailure"]["detail"].startswith("API Error: ")
    assert seen["Notification"]["status"] == "waiting" and "permission" in seen["Notification"]["detail"]
    assert seen["SessionEnd"]["alive"] is False
    assert seen["SessionStart"]["pid"] and seen["SessionStart"]["paneId"] == "%4"
    for body in seen.values():
        os_.validate_agent_event(body)  # what the hook sends, the server accepts


def test_codex_hook_payloads_map_to_events():
    seen = {}
    with open(os.path.join(CODEX, "hook-payloads.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            body = os_.hook_event("codex", rec["stdin"], {})
            if body is not None:
                seen.setdefault(rec["event"], body)
    assert seen["PermissionRequest"]["status"] == "waiting" and seen["PermissionRequest"]["detail"] == "permission: Bash"
    assert seen["UserPromptSubmit"]["status"] == "running"
    assert "pid" not in seen["SessionStart"]


def test_process_classification_from_captured_ps():
    def rows(name):
        out = []
        with open(name) as f:
            for line in f:
                parts = line.split(None, 3)
                if parts and parts[0].isdigit():
                    out.append((parts[2], parts[3].split()))
        return out
    got = [os_.classify_agent_process(c, a) for c, a in rows(os.path.join(CLAUDE, "claude-ps.txt"))]
    assert got == ["claude"]
    got = [os_.classify_agent_process(c, a) for c, a in rows(os.path.join(CODEX, "codex-ps.txt"))]
    assert got == ["codex", "codex"]  # the node wrapper and its native child
    got = [os_.classify_agent_process(c, a) for c, a in rows(os.path.join(OPENCODE, "oc-ps.txt"))]
    assert "opencode" in got
    assert os_.classify_agent_process("claude", ["claude", "-p", "hi"]) is None
    assert os_.classify_agent_process("opencode", ["opencode", "run", "x"]) is None
    assert os_.classify_agent_process("codex", ["codex", "app-server", "--listen"]) is None
    assert os_.classify_agent_process("node", ["node", "/x/typescript-language-server"]) is None


def test_resume_ids_from_args():
    u = "44444444-4444-4444-8444-444444444444"
    assert os_.agent_resume_id_from_args("claude", ["claude", "--permission-mode", "default", "--resume", u]) == u
    assert os_.agent_resume_id_from_args("claude", ["claude", "--session-id", u]) == u
    assert os_.agent_resume_id_from_args("claude", ["claude", "--resume", "; rm -rf /"]) is None
    assert os_.agent_resume_id_from_args("codex", ["node", "/x/.bin/codex", "resume", u]) == u
    assert os_.agent_resume_id_from_args("opencode", ["opencode", "-s", "ses_dff0ffa93ffebtZJZGz5f4eDGC"]) == \
        "ses_dff0ffa93ffebtZJZGz5f4eDGC"


AMP_DOC = {"id": "T-019b9d03-62e3-772f-9780-3e637f90eaec", "title": "Thread title", "created": 1767865803494,
           "env": {"initial": {"trees": [{"uri": "file:///home/u/my%20proj"}]}},
           "messages": [{"role": "user", "content": [{"type": "text", "text": "fix it"}]},
                        {"role": "assistant", "content": [], "state": {"type": "complete", "stopReason": "end_turn"},
                         "usage": {"model": "claude-x"}}]}


def test_amp_documented_shape():
    state = os_.amp_thread_state(AMP_DOC)
    assert state["status"] == "done" and state["cwd"] == "/home/u/my proj" and state["model"] == "claude-x"
    assert os_.thread_title(state) == "Thread title"
    doc = json.loads(json.dumps(AMP_DOC))
    doc["messages"][1]["state"] = {"type": "cancelled"}
    assert os_.amp_thread_state(doc)["status"] == "interrupted"
    doc["messages"][1]["state"] = {"type": "running"}
    assert os_.amp_thread_state(doc)["status"] == "running"
    assert os_.amp_thread_state({"no": "id"}) is None


def test_line_buffer_holds_partial_lines():
    buf = os_.LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert buf.feed(b':2}\n') == [b'{"b":2}']
    assert buf.feed(b"") == [] and buf.partial == b""


def test_iso_times():
    assert os_.parse_iso_ms("2026-11-22T01:46:19.452Z") == 1795311979452
    assert os_.parse_iso_ms("2026-11-22T01:46:19Z") == 1795311979000
    assert os_.parse_iso_ms("yesterday") is None and os_.parse_iso_ms(None) is None


ALL_JSONL = [os.path.join(d, n) for d in (CLAUDE, CODEX) for n in sorted(os.listdir(d)) if n.endswith(".jsonl")]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_parsers_survive_cut_and_corrupt_lines(data):
    """Random cuts, random bytes and random splits never crash a parser; bad lines are counted."""
    path = data.draw(st.sampled_from(ALL_JSONL))
    with open(path, "rb") as f:
        raw = f.read()
    cut = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(max_size=200))
    blob = raw[:cut] + junk + raw[cut:cut + 3000]
    buf = os_.LineBuffer()
    pieces = data.draw(st.lists(st.integers(1, 5000), max_size=10))
    lines, pos = [], 0
    for n in pieces + [len(blob)]:
        lines.extend(buf.feed(blob[pos:pos + n]))
        pos += n
    records, bad = os_.parse_json_lines(lines)
    assert bad >= 0
    for reducer, agent in ((os_.claude_reduce, "claude"), (os_.codex_reduce, "codex")):
        state = os_.new_thread_state(agent, "x")
        for rec in records:
            reducer(state, rec)
        assert state["status"] in os_.STATUSES


@settings(max_examples=100, deadline=None)  # (200: 1.9 s a run)
@given(rec=st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
                        lambda c: st.one_of(st.lists(c, max_size=3),
                                            st.dictionaries(st.sampled_from(
                                                ["type", "message", "content", "payload", "timestamp", "role",
                                                 "stop_reason", "isApiErrorMessage", "error", "state", "text",
                                                 "status", "id", "messages", "time", "completed", "cwd"]),
                                                c, max_size=5)), max_leaves=20))
def test_reducers_accept_any_json_shape(rec):
    if isinstance(rec, dict):
        os_.claude_reduce(os_.new_thread_state("claude", "x"), rec)
        os_.codex_reduce(os_.new_thread_state("codex", "x"), rec)
        os_.opencode_status(rec)
        os_.amp_thread_state(rec)
        os_.claude_registry_entry(rec)
        os_.hook_event("claude", rec, {})
        if isinstance(rec.get("properties"), dict):
            os_.opencode_plugin_status(rec.get("type"), rec["properties"])
