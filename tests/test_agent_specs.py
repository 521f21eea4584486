"""Each agent is one AgentSpec (the Agents section of opensessions.py): the other sections loop over
AGENT_SPECS and name no agent."""
import json
import os

import pytest

import opensessions as os_

U = "44444444-4444-4444-8444-444444444444"
OC = "ses_dff0ffa93ffebtZJZGz5f4eDGC"
AMP = "T-019b9d03-62e3-772f-9780-3e637f90eaec"


def test_resume_and_fork_arguments_come_from_the_spec():
    ca = os_.conversation_args
    assert ca("claude", U, ["--model", "opus"]) == ["--model", "opus", "--resume", U]
    assert ca("claude", U, fork=True) == ["--resume", U, "--fork-session"]
    assert ca("codex", U, ["--full-auto"], fork=True) == ["--full-auto", "fork", U]
    assert ca("opencode", OC, fork=True) == ["-s", OC, "--fork"]
    assert ca("pi", U, fork=True) == ["--fork", U]
    assert ca("gemini", U, fork=True) is None and ca("amp", AMP, fork=True) is None  # no fork form known
    assert ca("amp", AMP, ["--dangerously-allow-all"]) == ["threads", "continue", AMP]  # flags not typed
    assert ca("nope", U) is None


def test_process_helpers_and_one_shots_are_the_specs_own():
    c = os_.classify_agent_process
    assert c("node", ["node", "/x/.bin/codex", "mcp-server"]) is None  # a helper, run by node or not
    assert c("node", ["node", "--inspect", "/x/.bin/codex"]) == "codex"  # node's own flags skipped
    assert c("node", ["node", "/x/.bin/opencode"]) is None  # OpenCode is never a node script
    assert c("gemini", ["gemini", "mcp", "list"]) is None


# ---- a new agent is one spec --------------------------------------------------------------------
# "kite" is a made-up agent (its chat format is this test's own): registered at run time, it is
# recognised, hooked, installed, watched, resumed and priced by the sections' loops over AGENT_SPECS.

def kite_reduce(state, rec):
    if rec.get("type") == "user":
        state["firstPrompt"] = state["firstPrompt"] or rec.get("text")
        state.update(status="running", cwd=rec.get("cwd") or state["cwd"])
        state["turns"] += 1
    elif rec.get("type") == "answer":
        state.update(status="done", model=rec.get("model"))
    return state


def kite_spec():
    return os_.AgentSpec(
        name="kite", title="Kite", id_pattern=os_._UUID_RE,
        paths=lambda env: {"home": os.path.join(os_.home_dir(env), ".kite")},
        watch=os_.ChatFiles(projects="projects", reducer=kite_reduce, name_id=os_.qwen_id_from_name,
                            project_of=os_.claude_project_dir_name),
        process=os_.Process(names=("kite",), one_shot=("-p",)), id_flags=("--resume",),
        hooks=os_.Hooks(states=os_.CLAUDE_HOOK_STATES, notifications=os_.CLAUDE_NOTIFICATIONS),
        install=os_.HookInstall(file="settings.json", events=("SessionStart", "Stop"), only_if_set_up=True),
        resume_args=("{flags}", "--resume", "{id}"), session_flags=("--resume",),
        prices={"kite-1": (1.0, 2.0, 0.1, 0.0, 100000)})


class _Loop(object):
    def call_later(self, *a):
        pass


class _Server(object):
    loop = _Loop()

    def __init__(self):
        self.updates = []

    def apply_thread_update(self, agent, tid, **fields):
        self.updates.append((agent, tid, fields))

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def test_a_new_agent_is_one_spec(tmp_path, monkeypatch):
    monkeypatch.setitem(os_.AGENT_SPECS, "kite", kite_spec())
    home = str(tmp_path)
    env = {"HOME": home, "XDG_STATE_HOME": os.path.join(home, "state"), "OPENSESSIONS_WATCH": "poll"}
    # its process, its command line, its hooks
    assert os_.classify_agent_process("kite", ["kite", "--resume", U]) == "kite" and "kite" in os_.agent_comms()
    assert os_.classify_agent_process("kite", ["kite", "-p", "hi"]) is None
    assert os_.agent_resume_id_from_args("kite", ["kite", "--resume", U]) == U
    assert "kite" in os_.hook_agents()
    assert os_.hook_event("kite", {"hook_event_name": "Stop", "session_id": U}, environ={})["status"] == "idle"
    # its install: only where it is set up, and only ours removed
    assert not any("kite" in d for d in os_.install_agents("opensessions", env))
    os.makedirs(os.path.join(home, ".kite", "projects", "-w"))
    assert "installed kite hooks in %s/.kite/settings.json" % home in os_.install_agents("opensessions", env)
    with open(os.path.join(home, ".kite", "settings.json")) as f:
        assert set(json.load(f)["hooks"]) == {"SessionStart", "Stop"}
    assert any("kite" in d for d in os_.install_agents("opensessions", env, uninstall=True))
    # its files: watched by the chat-files kind, told to the server; a restore finds them
    chat = os.path.join(home, ".kite", "projects", "-w", U + ".jsonl")
    with open(chat, "w") as f:
        f.write(json.dumps({"type": "user", "text": "fly", "cwd": "/w"}) + "\n")
        f.write(json.dumps({"type": "answer", "model": "kite-1-fast"}) + "\n")
    server = _Server()
    w = os_.AgentWatchers(server, env, recent_days=100000)
    w.start()
    told = [f for agent, tid, f in server.updates if (agent, tid) == ("kite", U)]
    assert told and (told[-1]["status"], told[-1]["title"], told[-1]["cwd"]) == ("done", "fly", "/w")
    paths = os_.agent_paths(env)["kite"]
    assert os_.conversation_exists("kite", U, paths) and not os_.conversation_exists("kite", U[:-1] + "0", paths)
    spec, files = os_.agent_files("kite")
    assert [tid for _, tid in files.cwd_candidates(spec, paths, "/w")] == [U]
    # its resume, its replies (not learned), its prices
    assert os_.resume_command({"agent": "kite", "id": U, "flags": ["--fast"]}) == "command kite --fast --resume " + U
    with pytest.raises(os_.ReplyRefused, match="not supported"):
        os_.reply_plan("kite", "approve", "")
    assert os_.model_price("kite-1-fast")["input"] == 1.0


def test_a_plugins_events_come_through_its_spec():
    """OpenCode's plugin posts to the route its spec names; session.updated changes the title (a
    parent makes the session a subagent), the others are statuses."""
    assert os_.ROUTES["/api/opencode-event"] == ("api_plugin_event", "opencode")
    thread = os_.AGENT_SPECS["opencode"].plugin.thread
    assert thread("session.updated", {"title": "fix it", "parentID": "ses_x"}) == {"title": "fix it", "subagent": True}
    assert thread("session.updated", {}) == {} and thread("session.idle", {}) is None
