"""Hostile input from files, names and directories: an odd record is skipped and counted,
never stops the server; user-controlled strings never reach tmux's format expansion; pane fields
cannot be split by their content; a huge line is skipped without being held; installs keep what
the user had."""
import json
import os
import sqlite3
import time

import pytest

import opensessions as os_
from conftest import ServerProc, lab_home, retry_until

U4 = "44444444-4444-4444-8444-444444444444"
ODD_CLAUDE = "66666666-6666-4666-8666-666666666666"
ODD_CODEX = "77777777-7777-4777-8777-777777777777"
ODD_AMP = "T-88888888-8888-4888-8888-888888888888"


def thread(state, agent, tid):
    for t in state["threads"] + [t for s in state["sessions"] for t in s["threads"]]:
        if t["agent"] == agent and t["id"] == tid:
            return t
    return None


def write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")




def plant_odd_records(home):
    """One odd record per agent format, each of which stopped the cold start before."""
    ts = "2026-11-22T01:46:19.452Z"
    project = os.path.join(home, ".claude", "projects", "-odd")
    write_jsonl(os.path.join(project, ODD_CLAUDE + ".jsonl"), [
        {"type": "user", "timestamp": ts, "message": {"role": "user", "content": "hi"}},
        {"type": "assistant", "timestamp": ts, "isApiErrorMessage": True, "error": 123,
         "message": {"role": "assistant", "content": []}},
        '{"type": "custom-title", "customTitle": "cut \\ud83d emoji"}',
        "[" * 60000,
    ])
    write_jsonl(os.path.join(home, ".codex", "sessions", "2026", "11", "22",
                             "rollout-2026-11-22T01-46-31-%s.jsonl" % ODD_CODEX), [
        {"timestamp": ts, "type": "session_meta", "payload": {"id": ODD_CODEX, "cwd": "/tmp"}},
        {"timestamp": ts, "type": "event_msg", "payload": {"type": "task_started"}},
        {"timestamp": ts, "type": "event_msg", "payload": {"type": "task_complete", "error": {"message": 5}}},
    ])
    with open(os.path.join(home, ".claude", "sessions", "%d.json" % os.getpid()), "w") as f:
        f.write('{"pid": %d, "sessionId": "%s", "cwd": "/tmp", "status": "busy", "procStart": 1e999,'
                ' "updatedAt": 1e999}' % (os.getpid(), U4))
    with open(os.path.join(home, ".claude", "sessions", "4000001.json"), "w") as f:
        f.write('{"pid": 100000000000000000000000, "sessionId": "%s"}' % U4)
    amp = os.path.join(home, ".local", "share", "amp", "threads")
    os.makedirs(amp)
    with open(os.path.join(amp, ODD_AMP + ".json"), "w") as f:
        f.write('{"id": "%s", "title": "amp odd", "created": 1e999, "messages": [{"role": "assistant",'
                ' "state": {"type": "error", "message": 7}}]}' % ODD_AMP)
    db = os.path.join(home, ".local", "share", "opencode", "opencode.db")
    conn = sqlite3.connect(db)
    sids = [r[0] for r in conn.execute("SELECT id FROM session ORDER BY id")]
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, '`data` text NOT NULL', '`data` text') "
                 "WHERE name = 'message'")
    conn.commit()
    conn.close()
    conn = sqlite3.connect(db)
    cols = [r[1] for r in conn.execute("PRAGMA table_info(session)")]
    sel = ", ".join("'ses_textTimeUpdated0000000000'" if c == "id" else
                    "'yesterday'" if c == "time_updated" else "`%s`" % c for c in cols)
    conn.execute("INSERT INTO session SELECT %s FROM session WHERE id = ?" % sel, (sids[0],))
    newest = conn.execute("SELECT id FROM message WHERE session_id = ? ORDER BY time_created DESC, id DESC",
                          (sids[1],)).fetchone()[0]
    conn.execute("UPDATE message SET data = NULL WHERE id = ?", (newest,))
    conn.commit()
    conn.close()
    return sids


def test_odd_records_are_skipped_and_counted_at_cold_start_and_run_time(labenv, tmux):
    sids = plant_odd_records(labenv.home)
    server = ServerProc(labenv, tmux)
    try:
        st = server.state()
        assert thread(st, "claude", U4)["title"] == "sample-title"  # the good records are all read
        odd = thread(st, "claude", ODD_CLAUDE)
        assert odd["status"] == "error" and odd["detail"] == "123"
        assert odd["title"] == "cut \ufffd emoji"
        cx = thread(st, "codex", ODD_CODEX)
        assert cx["status"] == "error" and cx["detail"] == "5"
        amp = thread(st, "amp", ODD_AMP)
        assert amp["status"] == "error" and amp["detail"] == "7"
        oc = {t["id"] for t in st["threads"] if t["agent"] == "opencode"}
        assert set(sids) <= oc and "ses_textTimeUpdated0000000000" not in oc
        health = json.loads(server.get("/health")[1])
        assert health["skippedRecords"] >= 3  # the nested line, the NULL message, the TEXT time
        # at run time: odd records appended are skipped too, and what follows is still read
        path = os.path.join(labenv.home, ".claude", "projects", "-odd", ODD_CLAUDE + ".jsonl")
        with open(path, "a") as f:
            f.write("[" * 60000 + "\n")
            f.write(json.dumps({"type": "assistant", "isApiErrorMessage": True, "error": {"code": 9},
                                "message": {"content": []}}) + "\n")
            f.write(json.dumps({"type": "custom-title", "customTitle": "after"}) + "\n")
        retry_until(lambda: thread(server.state(), "claude", ODD_CLAUDE)["title"] == "after")
        assert thread(server.state(), "claude", ODD_CLAUDE)["detail"] == '{"code": 9}'
        assert json.loads(server.get("/health")[1])["skippedRecords"] > health["skippedRecords"]
    finally:
        server.stop()


class FakeStore(object):
    def __init__(self):
        self.threads = {}


class FakeLoop(object):
    def call_later(self, *a):
        pass

    def add_reader(self, *a):
        pass


class FakeServer(object):
    """What AgentWatchers needs of the server: thread updates are recorded."""

    def __init__(self):
        self.store = FakeStore()
        self.loop = FakeLoop()
        self.updates = {}

    def apply_thread_update(self, agent, tid, **fields):
        self.updates[(agent, tid)] = fields

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def test_unreadable_codex_directory_is_skipped_and_counted(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    lab_home(home)
    day = os.path.join(home, ".codex", "sessions", "2026", "11", "22")
    locked = os.path.join(home, ".codex", "sessions", "2026", "10")  # as left by `sudo codex`
    os.makedirs(os.path.join(locked, "01"))
    os.chmod(locked, 0)
    real_listdir = os.listdir

    def listdir(path="."):
        if os.geteuid() == 0 and os.fspath(path).rstrip("/") == locked:
            raise PermissionError(13, "Permission denied", path)  # root reads anything: as a user would see it
        return real_listdir(path)
    monkeypatch.setattr(os, "listdir", listdir)
    fake = FakeServer()
    w = os_.AgentWatchers(fake, environ={"HOME": home, "XDG_DATA_HOME": os.path.join(home, ".local/share"),
                                         "XDG_CONFIG_HOME": os.path.join(home, ".config"),
                                         "OPENSESSIONS_WATCH": "poll"}, recent_days=100000)
    try:
        w.start()
    finally:
        os.chmod(locked, 0o755)
    assert w.bad_records >= 1
    codex = {tid for agent, tid in fake.updates if agent == "codex"}
    names = [n for n in real_listdir(day) if n.endswith(".jsonl")]
    assert len(codex) == len(names) and names  # every rollout of the readable days was read


# -- tmux: formats in names, thread ids in options, fields that cannot be split ------------------

def test_tmux_arguments_are_escaped():
    assert os_.tmux_literal("#(touch x) #[fg=red]") == "##(touch x) ##[fg=red]"
    assert os_.tmux_arg("name;") == "name\\;" and os_.tmux_arg(";") == ";" and os_.tmux_arg("a;b") == "a;b"
    me = "'/opt/#(touch x)/opensessions.py'"
    assert all("#(touch" not in part.replace("##", "") for b in os_.tmux_bindings(me, {}) for part in b)


def test_names_with_formats_reach_tmux_literally(tmux, env):
    """new-session -s/-c and display-message expand formats: escaped, they run nothing."""
    evil = "#(cd;touch PWNED) #{pid};"
    d = os.path.join(env.base, evil)
    os.makedirs(d)
    tmux.tmux.run("new-session", "-d", "-s", os_.tmux_literal(evil), "-c", os_.tmux_literal(d))
    retry_until(lambda: [evil, d] in [r.split(os_.FS) for r in tmux.run(
        "list-panes", "-a", "-F", "#{session_name}%s#{pane_current_path}" % os_.FS).splitlines()])
    out = tmux.tmux.run("display-message", "-p", os_.tmux_literal("note " + evil))
    assert out.rstrip("\n") == "note " + evil
    assert not os.path.exists(os.path.join(env.home, "PWNED"))


def test_sidebar_in_a_directory_named_like_a_format_runs_nothing(server, tmux, env):
    d = os.path.join(env.base, "#(cd;touch PWNED)")
    os.makedirs(d)
    tmux.new_session("evil", cwd=os_.tmux_literal(d))
    retry_until(lambda: server.session("evil") and server.session("evil")["dir"] == d)
    assert server.cli("toggle").returncode == 0

    def sidebar_paths():
        rows = tmux.run("list-panes", "-s", "-t", "=evil", "-F", "#{@opensessions-sidebar}%s#{pane_current_path}"
                        % os_.FS).splitlines()
        return [r.split(os_.FS)[1] for r in rows if r.startswith("1")]
    assert retry_until(sidebar_paths) == [d]
    # the sidebar window of a session left with only a sidebar gets a work pane in the session's dir
    work = [p for p in server.session("evil")["windows"][0]["panes"] if not p["sidebar"]]
    tmux.run("kill-pane", "-t", work[0]["id"])
    retry_until(lambda: len([p for p in (server.session("evil") or {"windows": [{"panes": []}]})["windows"][0]["panes"]
                             if not p["sidebar"]]) == 1, timeout=10)
    assert not os.path.exists(os.path.join(env.home, "PWNED"))


def test_thread_ids_that_are_not_ids_never_reach_tmux_options():
    state = {"sessions": [{"windows": [{"id": "@1", "panes": [{"id": "%1"}]}], "threads": [
        {"agent": "claude", "id": "#[fg=red]x", "status": "waiting", "pane": "%1", "alive": True}]}]}
    assert os_.status_summary(state)["windows"] == {}
    for bad in ("a;b", "x y", "x\ny", "é", "a" * 129):
        state["sessions"][0]["threads"][0]["id"] = bad
        assert os_.status_summary(state)["windows"] == {}
    state["sessions"][0]["threads"][0]["id"] = U4
    assert os_.status_summary(state)["windows"]["@1"]["@agent_session"] == "claude:" + U4
    st = os_.codex_reduce(os_.new_thread_state("codex", ODD_CODEX),
                          {"type": "session_meta", "payload": {"id": "#[fg=red]"}})
    assert st["id"] == ODD_CODEX
    assert os_.amp_thread_state({"id": "#[bg=red]"}) is None


def test_notification_text_reaches_tmux_literally(server, tmux, env, attach):
    attach("=main")
    retry_until(lambda: server.state()["clients"])
    assert server.post("/ui", {"notify": ["tmux"]})[0] == 204
    text = "#(cd;touch PWNED) #[fg=red] ends;"
    assert server.post("/notify", {"session": "main", "message": text})[0] == 204
    shown = text.replace("#[", "##[")  # kept doubled until drawn, where it shows as '#[': no style
    retry_until(lambda: any(line.endswith(" message: opensessions: main: " + shown)
                            for line in tmux.run("show-messages").splitlines()), message=tmux.run("show-messages"))
    assert not os.path.exists(os.path.join(env.home, "PWNED"))


FORGED = "\n".join(["x", "P" + os_.FS.join(["$99", "forged", "0", "@99", "0", "w", "1", "%99", "0", "1", "", "",
                                             "sh", "t", "1", "80", "24", "", "80", "", "0", "0", "24"]), "y\x1fz"])


def test_snapshot_fields_cannot_be_split_by_their_content(tmux, env):
    d = os.path.join(env.base, FORGED)
    os.makedirs(d)
    tmux.run("new-session", "-d", "-s", "nl", "-c", d, "bash", "-c", "exec -a $'evil\\ncmd\\x1f' sleep 1000")
    sessions, _ = retry_until(lambda: (lambda r: r if any(
        p["command"].startswith("evil") for s in r[0] for w in s["windows"] for p in w["panes"]) else None)(
        tmux.tmux.snapshot()))
    assert sorted(s["name"] for s in sessions) == ["main", "nl"]
    panes = [p for s in sessions for w in s["windows"] for p in w["panes"]]
    assert all(p["pid"] > 1 for p in panes) and not any(p["id"] == "%99" for p in panes)
    nl = next(s for s in sessions if s["name"] == "nl")
    assert nl["dir"] == d and nl["windows"][0]["panes"][0]["command"].startswith("evil\ncmd")


def test_state_keeps_a_session_whose_cwd_holds_a_newline(server, tmux, env):
    d = os.path.join(env.base, FORGED)
    os.makedirs(d)
    tmux.new_session("nl", cwd=d)
    retry_until(lambda: (server.session("nl") or {}).get("dir") == d)
    assert sorted(x["name"] for x in server.state()["sessions"]) == ["main", "nl"]
    # a cwd change to such a directory is seen through the control-mode subscription
    other = os.path.join(env.base, "b\nc\x01")
    os.makedirs(other)
    tmux.run("send-keys", "-t", "=main:", "-l", "cd \"$(printf '%s/b\\nc\\001')\"" % env.base)
    tmux.run("send-keys", "-t", "=main:", "Enter")
    retry_until(lambda: server.session("main")["dir"] == other)


# -- size: a line over the cap is skipped without being held; reads are bounded per turn ----------

def test_line_buffer_skips_long_lines_without_holding_them():
    buf = os_.LineBuffer(max_line=10)
    assert buf.feed(b"short\nabc") == [b"short"]
    assert buf.feed(b"defghijk") == [] and buf.skipped == 1 and buf.size == 0  # over 10: dropped at once
    for _ in range(100):
        assert buf.feed(b"x" * 1000) == [] and buf.size == 0
    assert buf.feed(b"tail\nok\n") == [b"ok"] and buf.skipped == 1
    assert buf.feed(b"0123456789abc\n0123456789\n") == [b"0123456789"] and buf.skipped == 2
    assert buf.feed(b"12345") == [] and buf.feed(b"67890") == [] and buf.feed(b"\n") == [b"1234567890"]


def test_file_tail_reads_a_bounded_amount_per_call(tmp_path):
    path = str(tmp_path / "t.jsonl")
    with open(path, "wb") as f:
        f.write(b"a\n" + b"x" * 5000 + b"\nb\n")
    tail = os_.FileTail(path, max_line=1000, budget=1024)
    got, calls = [], 0
    while True:
        lines, _ = tail.read()
        got += lines
        calls += 1
        if not tail.more:
            break
    assert got == [b"a", b"b"] and tail.skipped_lines == 1 and calls >= 5
    assert len(tail.buf.partial) == 0


def test_a_line_over_the_cap_is_skipped_and_counted_and_what_follows_is_read(labenv, tmux):
    server = ServerProc(labenv, tmux)
    try:
        path = os.path.join(labenv.home, ".claude", "projects", "-odd", ODD_CLAUDE + ".jsonl")
        write_jsonl(path, [{"type": "user", "message": {"role": "user", "content": "hi"}}])
        retry_until(lambda: thread(server.state(), "claude", ODD_CLAUDE))
        with open(path, "ab") as f:
            block = b"y" * (1 << 20)
            f.write(b'{"type": "custom-title", "customTitle": "')
            for _ in range((os_.MAX_LINE_BYTES >> 20) + 2):
                f.write(block)
            f.write(b'"}\n' + json.dumps({"type": "custom-title", "customTitle": "after"}).encode() + b"\n")
        retry_until(lambda: thread(server.state(), "claude", ODD_CLAUDE)["title"] == "after", timeout=20)
        health = json.loads(server.get("/health")[1])
        assert health["skippedLongLines"] == 1 and health["skippedRecords"] >= 1
    finally:
        server.stop()


# -- files we edit: install / uninstall ------------------------------------------------------------

def _cli(env, *args):
    import subprocess
    from conftest import PYTHON, SCRIPT
    return subprocess.run([PYTHON, SCRIPT] + list(args), env=env.vars, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=20)


USER_SETTINGS = {"model": "opus", "hooks": {
    "Stop": [],  # the user's empty array, on an event we hook
    "SubagentStop": [],
    "Notification": [{"hooks": [{"type": "command", "command": "notify-send opensessions hook claude"}]}],
    "PreToolUse": [{"matcher": "Bash", "hooks": [
        {"type": "command", "command": "/home/u/bin/my-opensessions-wrapper hook claude"}]}]}}


def test_install_keeps_mode_symlink_empty_arrays_and_hooks_that_mention_us(env):
    claude = os.path.join(env.home, ".claude")
    dotfiles = os.path.join(env.home, "dotfiles")
    os.makedirs(claude)
    os.makedirs(dotfiles)
    target = os.path.join(dotfiles, "claude-settings.json")
    with open(target, "w") as f:
        json.dump(USER_SETTINGS, f)
    os.chmod(target, 0o600)
    link = os.path.join(claude, "settings.json")
    os.symlink(target, link)
    r = _cli(env, "install")
    assert r.returncode == 0, r.stderr
    assert os.path.islink(link) and os.readlink(link) == target
    assert os.stat(target).st_mode & 0o7777 == 0o600
    cfg = json.load(open(target))
    assert len(cfg["hooks"]["Stop"]) == 1 and cfg["hooks"]["SubagentStop"] == []
    assert cfg["hooks"]["PreToolUse"] == USER_SETTINGS["hooks"]["PreToolUse"]
    codex = os.path.join(env.home, ".codex", "hooks.json")
    assert os.path.exists(codex)
    r = _cli(env, "uninstall")
    assert r.returncode == 0, r.stderr
    assert json.load(open(target)) == USER_SETTINGS  # exactly the user's, empty arrays included
    assert os.path.islink(link) and os.stat(target).st_mode & 0o7777 == 0o600
    assert not os.path.exists(codex)  # install created it; uninstall leaves no empty file behind


def test_uninstall_keeps_a_hooks_file_the_user_had(env):
    codex = os.path.join(env.home, ".codex")
    os.makedirs(codex)
    with open(os.path.join(codex, "hooks.json"), "w") as f:
        f.write("{}")
    assert _cli(env, "install").returncode == 0
    assert _cli(env, "uninstall").returncode == 0
    assert json.load(open(os.path.join(codex, "hooks.json"))) == {}


def test_a_failing_later_step_says_exactly_what_was_changed(env):
    codex = os.path.join(env.home, ".codex")
    os.makedirs(codex)
    with open(os.path.join(codex, "hooks.json"), "w") as f:
        f.write("{not json")
    r = _cli(env, "install")
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err
    settings = os.path.join(env.home, ".claude", "settings.json")
    assert "installed claude hooks in %s" % settings in err  # changed before the failure
    assert "hooks.json is not valid JSON" in err and "not done: the OpenCode plugin" in err
    assert os.path.exists(settings)
    assert open(os.path.join(codex, "hooks.json")).read() == "{not json"


def test_our_hook_is_recognised_by_its_exact_shape():
    ours = ["/usr/bin/python3 -S /home/u/.tmux/plugins/opensessions/opensessions.py hook claude",
            "'/opt/my python/bin/python3.12' -S '/x y/opensessions.pyz' hook claude", "opensessions hook claude"]
    theirs = ["notify-send opensessions hook claude", "/home/u/bin/my-opensessions-wrapper hook claude",
              "python3 -c 'print(1)' /x/opensessions.py hook claude", "opensessions hook codex", "sh -c 'opensessions hook claude'"]
    assert all(os_._is_our_hook({"command": c}, "claude") for c in ours)
    assert not any(os_._is_our_hook({"command": c}, "claude") for c in theirs)


# -- parsers are type-robust: any JSON value in any field ------------------------------------------

from hypothesis import given, settings, strategies as hst  # noqa: E402

_KEYS = ["type", "timestamp", "cwd", "isSidechain", "customTitle", "lastPrompt", "isMeta", "message", "content",
         "role", "model", "isApiErrorMessage", "error", "isAbortedMidStream", "stop_reason", "subtype", "payload",
         "id", "originator", "message", "time", "completed", "finish", "data", "name", "status", "attempt",
         "pid", "sessionId", "procStart", "updatedAt", "statusUpdatedAt", "created", "title", "env", "initial",
         "trees", "uri", "messages", "state", "stopReason", "usage", "text", "tool_result", "task_complete",
         "task_started", "user", "assistant", "event_msg", "session_meta", "turn_context", "response_item"]
_SCALARS = hst.one_of(hst.none(), hst.booleans(), hst.integers(-2 ** 70, 2 ** 70), hst.floats(),
                      hst.text(max_size=8), hst.sampled_from(_KEYS))
_JSON = hst.recursive(_SCALARS, lambda c: hst.lists(c, max_size=4) | hst.dictionaries(hst.sampled_from(_KEYS), c, max_size=5),
                      max_leaves=20)


@settings(max_examples=100, deadline=None)  # (300: 4 s a run, the nested values cost most)
@given(hst.dictionaries(hst.sampled_from(_KEYS), _JSON, max_size=8))
def test_parsers_take_any_json_value_in_any_field(rec):
    os_.claude_reduce(os_.new_thread_state("claude", U4), rec)
    os_.codex_reduce(os_.new_thread_state("codex", ODD_CODEX), rec)
    os_.codex_moved_on(rec)
    os_.claude_registry_entry(rec)
    os_.opencode_status(rec, False)
    os_.opencode_plugin_status("session.status", rec)
    os_.opencode_plugin_status("session.error", rec)
    os_.opencode_plugin_status("permission.asked", rec)
    os_.amp_thread_state(dict(rec, id=ODD_AMP), 0)
    os_.hook_event("claude", dict(rec, hook_event_name="StopFailure", session_id=U4), {})
    os_.parse_codex_session_index([rec])
    os_.codex_turn_status("failed", json.dumps(rec, allow_nan=True))


def test_save_logs_the_panes_it_skips(tmux, env):
    d = os.path.join(env.base, "cr\rvt\x0bls\u2028end")
    os.makedirs(d)
    tmux.new_session("odd", cwd=d)
    retry_until(lambda: d in tmux.run("list-panes", "-a", "-F", "#{pane_current_path}"))
    lines = []
    r = os_.Resurrect(tmux.tmux, environ=env.vars, log=lines.append)
    panes = r.panes()
    assert any(p["session"] == "main" for p in panes)
    assert any("skipped a pane line" in l for l in lines)
