"""Hooks read their whole payload: a permission request for a 100 KB write, a
Gemini permission with a 100 KB diff, an end of turn with a long answer are read whole (up to 8 MB);
past that, the fields we need are kept from the payload's start, and the rest is read and dropped
(the agent writing it never meets a closed pipe)."""
import json
import subprocess

import opensessions as os_
from conftest import PYTHON, SCRIPT, retry_until

SID = "55555555-5555-4555-8555-555555555555"


def hook(server, tmux, env, agent, payload):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    proc = subprocess.Popen([PYTHON, SCRIPT, "-S", tmux.socket, "hook", agent], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env.vars)
    proc.stdin.write(data)  # as an agent writes it: a BrokenPipeError here is an agent's failed write
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert proc.stderr.read() == b""


def thread(server, agent):
    for t in [t for s in server.state()["sessions"] for t in s["threads"]] + server.state()["threads"]:
        if t["agent"] == agent and t["id"] == SID:
            return t
    return None


def status_is(server, agent, status):
    return retry_until(lambda: (lambda t: t if t and t["status"] == status else None)(thread(server, agent)), timeout=10)


def test_a_permission_request_for_a_100_kb_write_shows_waiting(server, tmux, env):
    hook(server, tmux, env, "claude", {"session_id": SID, "hook_event_name": "UserPromptSubmit", "prompt": "go",
                                       "cwd": env.home})
    status_is(server, "claude", "running")
    hook(server, tmux, env, "claude", {
        "session_id": SID, "transcript_path": "/x", "cwd": env.home, "permission_mode": "default",
        "hook_event_name": "PermissionRequest", "tool_name": "Write",
        "tool_input": {"file_path": "/w/big.txt", "content": "x" * 100000}})
    assert status_is(server, "claude", "waiting")["detail"] == "permission: Write"


def test_a_gemini_permission_with_a_100_kb_diff_shows_waiting(server, tmux, env):
    hook(server, tmux, env, "gemini", {"session_id": SID, "hook_event_name": "BeforeAgent", "prompt": "go",
                                       "cwd": env.home})
    status_is(server, "gemini", "running")
    hook(server, tmux, env, "gemini", {
        "session_id": SID, "cwd": env.home, "hook_event_name": "Notification", "notification_type": "ToolPermission",
        "message": "Tool Edit requires editing", "details": {"type": "edit", "fileDiff": "+" * 100000}})
    assert status_is(server, "gemini", "waiting")["detail"] == "Tool Edit requires editing"


def test_an_end_of_turn_with_a_long_answer_ends_the_turn(server, tmux, env):
    hook(server, tmux, env, "claude", {"session_id": SID, "hook_event_name": "UserPromptSubmit", "prompt": "go",
                                       "cwd": env.home})
    status_is(server, "claude", "running")
    hook(server, tmux, env, "claude", {"session_id": SID, "hook_event_name": "Stop", "cwd": env.home,
                                       "last_assistant_message": "a long answer " * 20000})
    status_is(server, "claude", "done")


def test_past_the_cap_the_fields_before_it_are_kept_and_the_rest_is_drained(server, tmux, env):
    hook(server, tmux, env, "claude", {"session_id": SID, "hook_event_name": "UserPromptSubmit", "prompt": "go",
                                       "cwd": env.home})
    status_is(server, "claude", "running")
    huge = json.dumps({"session_id": SID, "cwd": env.home, "hook_event_name": "PermissionRequest",
                       "tool_name": "Write", "tool_input": {"content": "y" * (os_.HOOK_STDIN_MAX + 4 * 1024 * 1024)}})
    hook(server, tmux, env, "claude", huge.encode())
    assert status_is(server, "claude", "waiting")["detail"] == "permission: Write"


def test_json_object_prefix_keeps_whole_members_and_the_start_of_a_cut_string():
    full = json.dumps({"session_id": SID, "hook_event_name": "StopFailure", "n": [1, {"a": None}],
                       "last_assistant_message": "caf\u00e9 \"quoted\" " * 100})
    for cut in range(len(full) - 200, len(full) - 100):
        got = os_.json_object_prefix(full[:cut].encode())
        assert got["session_id"] == SID and got["n"] == [1, {"a": None}]
        assert ("caf\u00e9 \"quoted\" " * 100).startswith(got["last_assistant_message"])
    assert os_.json_object_prefix(b"[1, 2") == {} and os_.json_object_prefix(b"") == {}
    assert os_.json_object_prefix(b'{"a": {"b": [1, 2') == {}  # a cut object: nothing of it
    assert os_.hook_event("claude", os_.json_object_prefix(full[:120].encode()))["status"] == "error"
