"""Each agent is one AgentSpec (the Agents section of opensessions.py): the other sections loop over
AGENT_SPECS and name no agent."""
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
