"""Usage (tokens, cost, context fill) per thread: the reducers against the real captures, next to
what the agents themselves report; /state via a server on a lab HOME; the CLI summary."""
import json
import os
import re
import shutil
import sqlite3

import pytest

import opensessions as os_
import shlex

from conftest import FIXTURES, PYTHON, SCRIPT, ServerProc, fake_agents, lab_home, retry_until

CLAUDE = os.path.join(FIXTURES, "claude")
CODEX = os.path.join(FIXTURES, "codex")
OPENCODE = os.path.join(FIXTURES, "opencode")


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def reduce_file(path, reducer, agent="claude"):
    state = os_.new_thread_state(agent, "x")
    for rec in records(path):
        reducer(state, rec)
    return state


def claude_reported(path):
    """What Claude Code itself recorded for the session: its last `cost-state` record."""
    cs = [r for r in records(path) if r.get("type") == "cost-state"][-1]
    tokens = {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0}
    for mu in cs["modelUsage"].values():
        tokens["input"] += mu["inputTokens"]
        tokens["output"] += mu["outputTokens"]
        tokens["cacheRead"] += mu["cacheReadInputTokens"]
        tokens["cacheWrite"] += mu["cacheCreationInputTokens"]
    return tokens, cs["totalCostUSD"]


# -- Claude ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["transcript-plain-print.jsonl", "transcript-tool-print.jsonl"])
def test_claude_usage_matches_claudes_own_cost_state(name):
    path = os.path.join(CLAUDE, name)
    st = reduce_file(path, os_.claude_reduce)
    u = os_.usage_json(st["usage"], st["model"])  # the messages' sum, priced by the table
    tokens, cost = claude_reported(path)
    assert {k: u[k] for k in tokens} == tokens
    assert u["cost"] == pytest.approx(cost, abs=1e-9)
    assert os_.usage_json(os_.claude_usage(st), st["model"]) == dict(u, cost=round(cost, 6))  # Claude's own figure
    assert u["contextPct"] == 0  # 12 tokens of a 1M window


def test_claude_tool_thread_matches_stream_json_result():
    """print-stream-json-tool.jsonl is the same run as transcript-tool-print.jsonl: its `result`."""
    result = [r for r in records(os.path.join(CLAUDE, "print-stream-json-tool.jsonl")) if r["type"] == "result"][0]
    st = reduce_file(os.path.join(CLAUDE, "transcript-tool-print.jsonl"), os_.claude_reduce)
    u = os_.usage_json(st["usage"], st["model"])
    assert (u["input"], u["output"]) == (result["usage"]["input_tokens"], result["usage"]["output_tokens"]) == (24, 10)
    assert u["cost"] == pytest.approx(result["total_cost_usd"], abs=1e-9)


def test_claude_error500_costs_nothing():
    doc = json.load(open(os.path.join(CLAUDE, "print-json-error500.json")))
    st = reduce_file(os.path.join(CLAUDE, "transcript-error500-print.jsonl"), os_.claude_reduce)
    assert doc["total_cost_usd"] == 0 and doc["usage"]["input_tokens"] == 0
    assert st["usage"] is None  # only a <synthetic> message: no tokens, no model to price
    assert os_.usage_json(st["usage"], st["model"]) is None


def test_claude_interrupted_message_takes_claudes_own_total():
    """The interrupted reply was written with its provisional count (output 1): the messages say
    36 in / 11 out, Claude's own cost-state (written at exit) 36 / 18 ($0.000504): that one wins."""
    path = os.path.join(CLAUDE, "transcript-interactive-permission-interrupt-rename.jsonl")
    st = reduce_file(path, os_.claude_reduce)
    u = os_.usage_json(st["usage"], st["model"])
    tokens, cost = claude_reported(path)
    assert (u["input"], u["output"]) == (36, 11)
    assert u["cost"] == pytest.approx(36 * 4e-6 + 11 * 20e-6) and u["cost"] < cost
    own = os_.usage_json(os_.claude_usage(st), st["model"])
    assert (own["input"], own["output"], own["cost"]) == (36, 18, 0.000504)


def test_claude_own_total_only_when_it_surely_covers_the_thread():
    path = os.path.join(CLAUDE, "transcript-tool-print.jsonl")
    recs = records(path)
    call = {"type": "assistant", "message": {"id": "later", "model": "claude-opus-5-5",
                                             "usage": {"input_tokens": 100, "output_tokens": 10}}}
    cs = [r for r in recs if r.get("type") == "cost-state"][-1]

    def usage_of(rs, partial=False):
        st = os_.new_thread_state("claude", "x")
        if partial:
            st["usagePartial"] = True
        for r in rs:
            os_.claude_reduce(st, r)
        return os_.usage_json(os_.claude_usage(st), st["model"])
    # a call after Claude's total (a resumed, live session): the messages' sum, priced by the table
    u = usage_of(recs + [call])
    assert (u["input"], u["output"], u["cost"]) == (124, 20, pytest.approx(124 * 4e-6 + 20 * 20e-6))
    # a second process's total (another startTime): not one total for the thread, the messages count
    u = usage_of(recs + [call, dict(cs, startTime=cs["startTime"] + 1000, totalCostUSD=0.0006,
                                     modelUsage={"claude-opus-5-5": {"inputTokens": 100, "outputTokens": 10}})])
    assert (u["input"], u["output"]) == (124, 20)
    # a total smaller than the messages (it missed a process that wrote none): the messages count
    u = usage_of(recs + [call, dict(cs, totalCostUSD=0.0006, modelUsage={"m": {"inputTokens": 100, "outputTokens": 10}})])
    assert (u["input"], u["output"]) == (124, 20)
    # only the tail read (cold start of a big file): tail messages, marked partial
    u = usage_of(recs, partial=True)
    assert u["partial"] is True and u["cost"] == pytest.approx(0.000296)


def test_claude_one_message_over_several_records_is_counted_once():
    """Claude writes one API message as a record per content block under the same message.id, the
    first with a provisional output count: the largest figures of that id count, once."""
    base = {"type": "assistant", "timestamp": "2026-11-22T03:00:00.000Z"}

    def rec(mid, out, content_type, cache=0):
        return dict(base, message={"id": mid, "model": "claude-sonnet-4-5-20250929", "content": [{"type": content_type}],
                                   "usage": {"input_tokens": 10, "output_tokens": out, "cache_read_input_tokens": cache,
                                             "cache_creation_input_tokens": 100}})
    st = os_.new_thread_state("claude", "x")
    for r in (rec("m1", 1, "thinking"), rec("m1", 1, "text"), rec("m1", 40, "tool_use"),
              rec("m2", 7, "text", cache=110)):
        os_.claude_reduce(st, r)
    u = os_.usage_json(st["usage"], st["model"])
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"]) == (20, 47, 110, 200)
    # sonnet: 3 / 15 / 0.3 / 3.75 per million
    assert u["cost"] == pytest.approx((20 * 3 + 47 * 15 + 110 * 0.3 + 200 * 3.75) / 1e6)
    assert u["contextPct"] == 0  # (10 + 110 + 100) of 200k rounds to 0
    st["usage"]["contextTokens"] = 150000
    assert os_.usage_json(st["usage"], st["model"])["contextPct"] == 75


def test_claude_sidechain_calls_count_but_do_not_set_the_context():
    st = os_.new_thread_state("claude", "x")
    main = {"type": "assistant", "message": {"id": "a", "model": "claude-opus-5-5",
                                             "usage": {"input_tokens": 100, "output_tokens": 1}}}
    side = {"type": "assistant", "isSidechain": True,
            "message": {"id": "b", "model": "claude-opus-5-5", "usage": {"input_tokens": 900, "output_tokens": 1}}}
    os_.claude_reduce(st, main)
    os_.claude_reduce(st, side)
    assert st["usage"]["input"] == 1000 and st["usage"]["contextTokens"] == 100


# -- Codex -------------------------------------------------------------------------------------

def codex_last_total(path):
    tcs = [r["payload"]["info"] for r in records(path)
           if r.get("type") == "event_msg" and r["payload"].get("type") == "token_count" and r["payload"].get("info")]
    return tcs[-1] if tcs else None


@pytest.mark.parametrize("name,expect", [("rollout-exec-plain.jsonl", (12, 5)), ("rollout-exec-tool.jsonl", (24, 10)),
                                         ("rollout-interactive.jsonl", (36, 15))])
def test_codex_usage_is_codexs_own_running_total(name, expect):
    path = os.path.join(CODEX, name)
    st = reduce_file(path, os_.codex_reduce, "codex")
    info = codex_last_total(path)
    u = os_.usage_json(st["usage"], st["model"])
    total = info["total_token_usage"]
    assert (u["input"] + u["cacheRead"], u["output"]) == (total["input_tokens"], total["output_tokens"]) == expect
    assert u["cost"] is None  # fake-model: no price, tokens only
    last = info["last_token_usage"]["total_tokens"]
    assert u["contextPct"] == round(100.0 * last / info["model_context_window"])  # 17 of 258400 -> 0


def test_codex_cached_input_is_split_out_and_priced():
    info = {"total_token_usage": {"input_tokens": 100000, "cached_input_tokens": 80000, "output_tokens": 2000,
                                  "cache_write_input_tokens": 0, "total_tokens": 102000},
            "last_token_usage": {"input_tokens": 60000, "cached_input_tokens": 50000, "output_tokens": 500,
                                 "total_tokens": 60500},
            "model_context_window": 121000}
    st = os_.new_thread_state("codex", "x")
    os_.codex_reduce(st, {"type": "turn_context", "payload": {"model": "gpt-5-codex"}})
    os_.codex_reduce(st, {"type": "event_msg", "payload": {"type": "token_count", "info": info}})
    os_.codex_reduce(st, {"type": "event_msg", "payload": {"type": "token_count", "info": None}})  # rate limits only
    u = os_.usage_json(st["usage"], st["model"])
    assert (u["input"], u["cacheRead"], u["output"]) == (20000, 80000, 2000)
    assert u["cost"] == pytest.approx((20000 * 1.25 + 80000 * 0.125 + 2000 * 10) / 1e6)
    assert u["contextPct"] == 50


def test_codex_error500_thread_has_no_usage():
    st = reduce_file(os.path.join(CODEX, "rollout-exec-error500.jsonl"), os_.codex_reduce, "codex")
    assert codex_last_total(os.path.join(CODEX, "rollout-exec-error500.jsonl")) is None
    assert st["usage"] is None


# -- OpenCode ----------------------------------------------------------------------------------

@pytest.fixture
def oc_db(tmp_path):
    path = str(tmp_path / "opencode.db")
    conn = sqlite3.connect(path)
    conn.executescript(open(os.path.join(OPENCODE, "opencode-db-dump.sql")).read())
    conn.commit()
    conn.close()
    return path


def test_opencode_usage_is_its_session_totals_and_equals_its_messages(oc_db):
    conn = os_.sqlite_ro(oc_db)
    try:
        sessions = conn.execute("SELECT * FROM session").fetchall()
        assert len(sessions) == 5
        for s in sessions:
            msgs = [json.loads(r["data"]) for r in conn.execute(
                "SELECT data FROM message WHERE session_id = ? ORDER BY time_created, id", (s["id"],))]
            newest = msgs[-1]
            u = os_.usage_json(os_.opencode_usage(s, newest), "fake-model")
            assistants = [m for m in msgs if m["role"] == "assistant"]
            # the session row's totals are OpenCode's own sums of its messages' tokens and cost
            assert u["input"] == sum(m["tokens"]["input"] for m in assistants)
            assert u["output"] == sum(m["tokens"]["output"] for m in assistants)
            assert u["cacheRead"] == sum(m["tokens"]["cache"]["read"] for m in assistants) == 0
            assert u["cost"] == sum(m["cost"] for m in assistants) == 0  # the agent's figure, fake-model
            assert u["contextPct"] is None  # OpenCode records no window; fake-model has no table entry
        totals = sorted((s["tokens_input"], s["tokens_output"]) for s in sessions)
        assert totals == [(0, 0), (12, 5), (12, 5), (24, 10), (24, 10)]
    finally:
        conn.close()


def test_opencode_older_schema_gives_no_usage():
    class Row(dict):
        pass
    assert os_.opencode_usage(Row(id="s", title="t")) is None


def test_opencode_cost_is_the_agents_even_for_a_priced_model():
    row = {"cost": 0.5, "tokens_input": 10, "tokens_output": 10, "tokens_cache_read": 0, "tokens_cache_write": 0}
    u = os_.usage_json(os_.opencode_usage(row), "claude-sonnet-4-5")
    assert u["cost"] == 0.5


# -- Amp (unverified: no capture; the documented shape) ----------------------------------------------

def test_amp_usage_from_the_documented_message_usage():
    doc = {"id": "T-019b9d03-62e3-772f-9780-3e637f90eaec", "created": 1, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [], "state": {"type": "complete", "stopReason": "end_turn"},
         "usage": {"model": "claude-sonnet-4-20250514", "inputTokens": 10, "outputTokens": 200,
                   "cacheReadInputTokens": 30000, "cacheCreationInputTokens": 4000, "maxInputTokens": 168000}}]}
    st = os_.amp_thread_state(doc)
    u = os_.usage_json(st["usage"], st["model"])
    assert (u["input"], u["output"], u["cacheRead"], u["cacheWrite"]) == (10, 200, 30000, 4000)
    assert u["contextPct"] == 20 and u["cost"] == pytest.approx((10 * 3 + 200 * 15 + 30000 * 0.3 + 4000 * 3.75) / 1e6)
    assert os_.amp_thread_state({"id": "T-019b9d03-62e3-772f-9780-3e637f90eaed", "messages": []})["usage"] is None


# -- prices --------------------------------------------------------------------------------------

def test_prices_longest_prefix_user_override_and_unknown():
    assert os_.model_price("claude-opus-4-5-20251101")["input"] == 5.0  # not claude-opus-4's 15
    assert os_.model_price("claude-opus-4-1-20250805")["input"] == 15.0
    assert os_.model_price("gpt-5-mini-2025")["output"] == 2.0
    assert os_.model_price("fake-model") is None
    mine = os_.validate_prices({"fake-model": {"input": 1, "output": 2}, "claude-opus-4-5": {"input": 1}})
    assert os_.model_price("fake-model", mine) == {"input": 1, "output": 2}
    assert os_.model_price("claude-opus-4-5", mine)["output"] == 25.0  # a partial override keeps the rest
    raw = dict(os_.new_usage(), input=1000000, output=1000000)
    assert os_.usage_json(raw, "fake-model")["cost"] is None
    assert os_.usage_json(raw, "fake-model", mine)["cost"] == 3.0
    for bad in ([], {"m": {"input": -1}}, {"m": {"input": "x"}}, {"m": 3}, {"": {}}):
        with pytest.raises(os_.ApiError):
            os_.validate_prices(bad)


def test_session_total_and_texts():
    a = {"input": 1000, "output": 10, "cacheRead": 0, "cacheWrite": 0, "cost": 0.25, "contextPct": 40}
    b = {"input": 500, "output": 5, "cacheRead": 2000, "cacheWrite": 0, "cost": None, "contextPct": None}
    t = os_.usage_total([a, b])
    assert (t["input"], t["output"], t["cacheRead"], t["cost"], t["partial"]) == (1500, 15, 2000, 0.25, True)
    assert "partial" not in os_.usage_total([a])
    assert os_.usage_text(a) == "$0.25 ctx 40% 1.0k in 10 out"
    assert os_.cost_text(0, row=True) == "" and os_.cost_text(0.004, row=True) == "<$0.01"
    assert os_.cost_text(0.000296) == "$0.0003" and os_.cost_text(123.4) == "$123"


# -- the server ------------------------------------------------------------------------------------

U4 = "44444444-4444-4444-8444-444444444444"


def find(state, agent, tid):
    for s in state["sessions"]:
        for t in s["threads"]:
            if t["agent"] == agent and t["id"] == tid:
                return t
    return next((t for t in state["threads"] if t["agent"] == agent and t["id"] == tid), None)




def test_state_carries_usage_for_every_agent_and_session_totals(labenv, tmux):
    srv = ServerProc(labenv, tmux)
    try:
        st = retry_until(lambda: (lambda s: s if find(s, "claude", "22222222-2222-4222-8222-222222222222")
                                  and len([t for t in s["threads"] if t["agent"] == "opencode"]) == 5
                                  and any(t["agent"] == "codex" and t["usage"] for t in s["threads"]) else None)(srv.state()),
                         timeout=10)
        claude = find(st, "claude", "22222222-2222-4222-8222-222222222222")
        assert claude["usage"] == {"input": 24, "output": 10, "cacheRead": 0, "cacheWrite": 0,
                                   "cost": 0.000296, "contextPct": 0}
        assert find(st, "claude", "33333333-3333-4333-8333-333333333333")["usage"] is None
        codex = [t for t in st["threads"] if t["agent"] == "codex"]
        assert any(t["usage"] and t["usage"]["output"] > 0 and t["usage"]["cost"] is None for t in codex)
        oc = [t for t in st["threads"] if t["agent"] == "opencode"]
        assert sorted((t["usage"]["input"], t["usage"]["cost"]) for t in oc) == [(0, 0), (12, 0), (12, 0), (24, 0), (24, 0)]
        # the user's prices: fake-model gets a price, every agent's thread is priced again at once
        status, _ = srv.post("/ui", {"prices": {"fake-model": {"input": 1000, "output": 2000}}})
        assert status == 204 or status == 200
        st = srv.state()
        priced = [t for t in st["threads"] if t["agent"] == "codex" and t["usage"] and t["usage"]["output"]]
        assert priced and all(t["usage"]["cost"] == pytest.approx((t["usage"]["input"] * 1000 + t["usage"]["output"] * 2000) / 1e6)
                              for t in priced)
        assert all(t["usage"]["cost"] == 0 for t in st["threads"] if t["agent"] == "opencode")  # its own figure wins
        assert st["ui"]["prices"] == {"fake-model": {"input": 1000, "output": 2000}}
        assert srv.post("/ui", {"prices": {"m": {"input": -1}}})[0] == 400
    finally:
        srv.stop()


U1, U2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def agent_pane(tmux, session, cwd, command, env, split=False):
    if split:
        tmux.run("split-window", "-t", "=%s:0" % session, "-c", cwd)
        target = "=%s:0.1" % session
    else:
        tmux.run("new-session", "-d", "-s", session, "-c", cwd, "-x", "150", "-y", "40")
        target = "=%s:0.0" % session
    exports = " ".join("%s=%s" % (k, shlex.quote(v)) for k, v in env.items())
    retry_until(lambda: tmux.run("display-message", "-p", "-t", target, "#{pane_current_command}").strip() in os_.SHELLS)
    tmux.run("send-keys", "-t", target, "-l", "env %s %s" % (exports, command))
    tmux.run("send-keys", "-t", target, "Enter")


def test_session_total_in_state_status_and_usage_cli(labenv, tmux):
    bin_dir = fake_agents(os.path.join(labenv.base, "bin"))
    labenv.vars["PATH"] = bin_dir + os.pathsep + labenv.vars["PATH"]
    tmux.run("set-option", "-g", "default-command", "bash --norc --noprofile")
    registry = os.path.join(labenv.home, ".claude", "sessions")
    # not the lab's work/claude: no dead lab thread of that directory can be guessed into the session
    # for a moment and then stay there (that made the session's thread count differ between reads)
    cwd = os.path.join(labenv.home, "work", "usage-proj")
    os.makedirs(cwd, exist_ok=True)
    srv = ServerProc(labenv, tmux)
    try:
        agent_pane(tmux, "proj", cwd, "claude", {"FAKE_REGISTRY": registry, "FAKE_SESSION": U1,
                                                 "PATH": labenv.vars["PATH"]})
        agent_pane(tmux, "proj", cwd, "claude", {"FAKE_REGISTRY": registry, "FAKE_SESSION": U2,
                                                 "PATH": labenv.vars["PATH"]}, split=True)
        want = {U1, U2}
        proj = retry_until(lambda: (lambda s: s if s and want <= {t["id"] for t in s["threads"]} else None)(srv.session("proj")),
                           timeout=15, message="both Claude threads linked to the session")
        usages = {t["id"]: t["usage"] for t in proj["threads"]}
        assert (usages[U1]["input"], usages[U1]["cost"], usages[U2]["input"], usages[U2]["cost"]) == \
            (12, 0.000148, 24, 0.000296)
        # the session's total is its threads' sum (the lab's dead U4, same directory, may be guessed in too)
        assert proj["usage"] == dict(os_.usage_total(list(usages.values())), cost=pytest.approx(proj["usage"]["cost"]))
        assert proj["usage"]["input"] >= 36 and proj["usage"]["cost"] >= 0.000444 - 1e-9
        assert proj["usage"]["contextPct"] is None
        assert srv.session("main")["usage"] is None
        n_proj = len(proj["threads"])
        proj_cost = os_.cost_text(proj["usage"]["cost"])

        out = srv.cli("status").stdout.decode()
        header = out.splitlines()[0].split()
        assert "COST" in header
        proj_line = next(l for l in out.splitlines() if l.startswith("proj"))
        assert proj_cost in proj_line
        assert sum(1 for l in out.splitlines() if "$0.0001" in l or "$0.0003" in l) >= 2  # 0.000148, 0.000296

        # the fixture threads are dated 2026-11-22 (the lab's clock): --since far enough to take them
        res = srv.cli("usage", "--since", "100000d", "--json")
        assert res.returncode == 0, res.stderr
        report = json.loads(res.stdout.decode())
        assert report["sessions"]["proj"]["threads"] == n_proj
        assert report["sessions"]["proj"]["cost"] == pytest.approx(proj["usage"]["cost"])
        assert report["agents"]["claude"]["input"] >= 36 + 36  # the orphan interactive thread too
        assert report["agents"]["opencode"]["input"] == 72 and report["agents"]["opencode"]["cost"] == 0
        assert report["agents"]["codex"]["cost"] is None
        assert sum(d["threads"] for d in report["days"].values()) == report["threads"]
        text = srv.cli("usage", "--since", "100000d").stdout.decode()
        assert re.search(r"^  proj\s+%d\s+%d\s+%d\s+0\s+%s" % (n_proj, proj["usage"]["input"], proj["usage"]["output"],
                                                                 re.escape(proj_cost)), text, re.M), text
        assert re.search(r"^  opencode\s+5\s+72\s+30", text, re.M), text
        assert "+?" in text  # codex's fake-model has no price
        # the last day: the threads /state shows as active since then (live ones; the fixtures are older)
        day = json.loads(srv.cli("usage", "--json").stdout.decode())
        recent = [t for t in os_.usage_threads(srv.state()) if t["updatedAt"] >= day["since"]]
        assert 0 < day["threads"] == len(recent) < report["threads"]
        assert day["total"]["input"] == sum(t["usage"]["input"] for t in recent)
        # threads the server forgot come from its usage history
        hist = os.path.join(labenv.vars["XDG_STATE_HOME"], "opensessions", "usage-%s.json" % os_.socket_key(tmux.socket))
        os.makedirs(os.path.dirname(hist), exist_ok=True)
        with open(hist, "w") as f:
            json.dump({"threads": [{"agent": "codex", "id": "gone", "session": "old", "updatedAt": report["since"] + 86400000,
                                    "usage": {"input": 5, "output": 5, "cacheRead": 0, "cacheWrite": 0,
                                              "cost": 1.5, "contextPct": None}}]}, f)
        again = json.loads(srv.cli("usage", "--since", "100000d", "--json").stdout.decode())
        assert again["sessions"].get("old", {}).get("cost") == 1.5 and again["threads"] == report["threads"] + 1, (os.listdir(os.path.dirname(hist)), hist, again)
        bad = srv.cli("usage", "--since", "yesterday")
        assert bad.returncode != 0 and b"--since" in bad.stderr
    finally:
        srv.stop()


# -- the sidebar ---------------------------------------------------------------------------------

def test_sidebar_shows_session_cost_on_its_row_and_usage_in_the_detail():
    from test_sidebar import snapshot, texts, th
    u1 = {"input": 12000, "output": 3100, "cacheRead": 40000, "cacheWrite": 0, "cost": 0.42, "contextPct": 45}
    u2 = {"input": 500, "output": 20, "cacheRead": 0, "cacheWrite": 0, "cost": None, "contextPct": None}
    a, b = dict(th("claude", "a", "done"), usage=u1), dict(th("codex", "b", "running"), usage=u2)
    doc = snapshot(("api", [a, b]), ("web", [th("opencode", "c", "idle")]))
    doc["sessions"][0]["usage"] = os_.usage_total([u1, u2])
    doc["sessions"][1]["usage"] = None
    for width in (20, 32, 60):
        m = os_.SidebarModel(own_session="api")
        m.set_state(doc)
        lines = texts(os_.render(m, width, 30, now=0))
        assert all(os_.display_width(l) <= width for l in lines)
        row = next(l for l in lines if l.startswith("❯1 api ◂"))
        if width >= 32:
            assert row.rstrip().endswith("$0.42 ✓⠋")  # the total, then the badges
        assert "$0.42 ctx 45% 12.0k in 3.1k out 40.0k cache" in "\n".join(lines) or width < 40
        assert not any("$" in l for l in lines if l.startswith(" 2 web"))  # no usage: nothing shown
    m = os_.SidebarModel(own_session="api")
    m.set_state(doc)
    lines = texts(os_.render(m, 60, 30, now=0))
    assert "  $0.42 ctx 45% 12.0k in 3.1k out 40.0k cache" in lines
    assert "  500 in 20 out" in lines  # unknown price: tokens only
    assert "total $0.42 12.5k in 3.1k out 40.0k cache (partial)" in lines


# -- the usage history (threads the server forgot) ----------------------------------------------------

class _FakeServer(object):
    record_usage_history = os_.Server.record_usage_history

    def __init__(self, path, now):
        self.usage_path = path
        self.clock = lambda: now


def test_forgotten_threads_usage_is_kept_once_per_thread_for_90_days(tmp_path):
    now = 1795312000.0
    srv = _FakeServer(str(tmp_path / "state" / "usage-x.json"), now)
    u = {"input": 10, "output": 1, "cacheRead": 0, "cacheWrite": 0, "cost": 0.5, "contextPct": None}

    def thread(tid, days_ago, cost):
        t = os_.Thread("claude", tid, session="api", model="m", updated_at=int((now - days_ago * 86400) * 1000))
        t.usage = dict(u, cost=cost)
        return t
    srv.record_usage_history([thread("a", 1, 0.5), thread("old", 91, 9.0)])
    srv.record_usage_history([thread("a", 0.5, 0.75), thread("b", 2, 0.25)])  # a again: replaced, not added
    data = json.load(open(srv.usage_path))
    assert [(e["id"], e["usage"]["cost"]) for e in data["threads"]] == [("b", 0.25), ("a", 0.75)]
    rep = os_.usage_report(os_.usage_threads({"sessions": [], "threads": []}, None, data),
                           int((now - 7 * 86400) * 1000), int(now * 1000))
    assert rep["threads"] == 2 and rep["total"]["cost"] == 1.0 and rep["sessions"]["api"]["threads"] == 2
    # /state's figure for a thread wins over the history's
    state = {"sessions": [{"name": "web", "threads": [dict(data["threads"][1], usage=dict(u, cost=2.0))]}], "threads": []}
    rep = os_.usage_report(os_.usage_threads(state, None, data), 0, int(now * 1000))
    assert rep["total"]["cost"] == 2.25 and rep["sessions"]["web"]["threads"] == 1
    # a corrupt file is replaced, not fatal
    open(srv.usage_path, "w").write("{nope")
    srv.record_usage_history([thread("c", 1, 0.1)])
    assert [e["id"] for e in json.load(open(srv.usage_path))["threads"]] == ["c"]


def test_opencode_usage_columns_follow_the_schema(oc_db, tmp_path):
    conn = os_.sqlite_ro(oc_db)
    try:
        assert os_.opencode_usage_columns(conn) == ", cost, tokens_input, tokens_output, tokens_cache_read, tokens_cache_write"
    finally:
        conn.close()
    old = str(tmp_path / "old.db")
    c = sqlite3.connect(old)
    c.execute("CREATE TABLE session (id text, parent_id text, directory text, title text, time_updated integer, model text)")
    c.commit()
    c.close()
    conn = os_.sqlite_ro(old)
    try:
        assert os_.opencode_usage_columns(conn) == ""
    finally:
        conn.close()
