"""The conversation index (History): every agent's past conversations read from the captured formats
with bounded reads, what is exact and what is estimated, incremental re-reads, the saved index in
our state dir (never replaced by an emptier one by accident), search, and the resume/fork commands.
No server here: the index is driven directly (tests/test_history_api.py runs it in the server)."""
import importlib.util
import json
import os
import shlex
import shutil
import time

import pytest
from hypothesis import given, settings, strategies as st

from conftest import FIXTURES, lab_home

import opensessions as o

HERE = os.path.dirname(os.path.abspath(__file__))


def history_home():
    spec = importlib.util.spec_from_file_location("history_home", os.path.join(HERE, "fixtures", "tools",
                                                                               "history_home.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def env_for(home, base):
    return {"HOME": home, "XDG_STATE_HOME": os.path.join(base, "state"), "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
            "XDG_CONFIG_HOME": os.path.join(home, ".config")}


def built(env):
    h = o.History(env)
    h.load()
    h.scan()
    return h


def claude_records(sid, cwd, prompt, ts="2026-11-20T10:00:00.000Z", branch="main"):
    """A first turn in Claude Code 2.1.330's shapes (the captured interactive transcript's user and
    assistant records, re-pointed)."""
    with open(os.path.join(FIXTURES, "claude", "transcript-interactive-permission-interrupt-rename.jsonl")) as f:
        recs = [json.loads(l) for l in f if l.strip()]
    user = next(r for r in recs if r.get("type") == "user" and r.get("promptId"))
    answer = next(r for r in recs if r.get("type") == "assistant")
    out = []
    for r in (user, answer):
        r = json.loads(json.dumps(r))
        r.update(sessionId=sid, cwd=cwd, timestamp=ts, gitBranch=branch)
        out.append(r)
    out[0]["message"]["content"] = prompt
    return out


def write_claude(home, sid, cwd, prompt, extra=(), **kw):
    d = os.path.join(home, ".claude", "projects", o.claude_project_dir_name(cwd))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, sid + ".jsonl")
    with open(path, "w") as f:
        for r in claude_records(sid, cwd, prompt, **kw) + list(extra):
            f.write(json.dumps(r) + "\n")
    return path


SID = "5a1e0000-0000-4000-8000-%012d"


# -- reading each agent ------------------------------------------------------------------------------

def test_every_agent_of_a_generated_home_is_indexed(tmp_path):
    home = str(tmp_path / "home")
    made = history_home().build(FIXTURES, home, total=120, seed=3)
    h = built(env_for(home, str(tmp_path)))
    assert h.stats["errors"] == 0
    for agent, convs in made.items():
        assert convs, agent
        for tid, cwd, prompt, last in convs:
            e = h.entry(agent, tid)
            assert e is not None, (agent, tid)
            assert e.cwd == cwd and e.prompt == prompt, (agent, e.cwd, e.prompt)
            assert e.exact & o.EXACT_TURNS and e.turns >= 1, (agent, e.turns)
            assert abs(e.updated / 1000.0 - last) < 2, (agent, e.updated, last)
    named = [e for e in h.entries.values() if e.agent == "codex" and e.title]
    assert named and all(e.title.startswith("named ") for e in named)  # session_index.jsonl names
    assert sum(len(v) for v in made.values()) == len(h.entries) == 120


def test_the_lab_captures_read_as_each_agent_wrote_them(tmp_path):
    home = lab_home(str(tmp_path / "home"))
    h = built(env_for(home, str(tmp_path)))
    c = h.entry("claude", "44444444-4444-4444-8444-444444444444")
    assert (c.title, c.prompt, c.turns, c.exact) == ("sample-title", "please FAKE_WRITE", 2, 3)
    assert c.cwd == os.path.join(home, "work", "claude") and c.created < c.updated
    x = h.entry("codex", "01a200ee-fa97-79d0-9e17-4806385eaaf9")
    assert (x.title, x.prompt, x.turns) == ("sample-name", "hello codex", 4)  # /rename; thread_turns rows
    assert x.input + x.cache_read and x.exact & o.EXACT_USAGE
    ocs = [e for e in h.entries.values() if e.agent == "opencode"]
    assert len(ocs) == 5 and all(e.turns >= 1 and e.prompt for e in ocs)
    default = [e for e in ocs if e.prompt == '"FAKE_ERR400 now"']
    assert default and default[0].title is None  # "New session - <date>" is no title
    assert {e.agent for e in h.entries.values()} == {"claude", "codex", "opencode"}


def test_gemini_qwen_pi_captures(tmp_path):
    home = str(tmp_path / "home")
    for agent, rel in (("gemini", ".gemini/tmp/proj/chats"), ("qwen", ".qwen/projects/-home-dev-proj/chats"),
                       ("pi", ".pi/agent/sessions/--home-dev-proj--")):
        d = os.path.join(home, rel)
        os.makedirs(d)
        with open(os.path.join(HERE, "fixtures", agent, "session-filename.txt")) as f:
            name = f.read().strip()
        shutil.copy(os.path.join(HERE, "fixtures", agent, "session.jsonl"), os.path.join(d, name))
    shutil.copy(os.path.join(HERE, "fixtures", "gemini", "projects.json"), os.path.join(home, ".gemini"))
    h = built(env_for(home, str(tmp_path)))
    by = {e.agent: e for e in h.entries.values()}
    assert set(by) == {"gemini", "qwen", "pi"}
    for agent, e in by.items():
        assert e.cwd == "/home/dev/proj" and e.prompt == "hello there" and e.turns >= 4, (agent, e.cwd, e.turns)
        assert e.input and e.exact == 3
    assert by["pi"].cost is not None  # Pi records its own cost


def test_resumed_and_forked_conversations_as_the_real_clis_left_them(tmp_path):
    """The lab resumed a 10-day-old conversation and forked it with each CLI (FORMATS.md): the
    resumed file grows, the fork is a conversation of its own; Gemini's resume leaves a stub with
    the same id that must not replace the real file."""
    home = str(tmp_path / "home")
    lab = os.path.join(HERE, "fixtures")
    copies = [("claude/history/resumed-original-29a167b4.jsonl", ".claude/projects/-home-dev-work-claude/"),
              ("claude/history/fork-efe74226.jsonl", ".claude/projects/-home-dev-work-claude/"),
              ("codex/history/sessions", ".codex/sessions"),
              ("gemini/history/chats", ".gemini/tmp/gemini/chats"),
              ("qwen/history/chats", ".qwen/projects/-home-dev-work-qwen/chats"),
              ("pi/history/sessions", ".pi/agent/sessions")]
    ids = {}
    for src, dest in copies:
        src, dest = os.path.join(lab, src), os.path.join(home, dest)
        if os.path.isdir(src):
            shutil.copytree(src, dest)
        else:
            os.makedirs(dest, exist_ok=True)
            sid = json.loads([l for l in open(src) if '"sessionId"' in l][0])["sessionId"]
            ids[os.path.basename(src)] = sid
            shutil.copy(src, os.path.join(dest, sid + ".jsonl"))
    h = built(env_for(home, str(tmp_path)))
    by = {}
    for e in h.entries.values():
        by.setdefault(e.agent, []).append(e)
    assert sorted(len(v) for v in by.values()) == [1, 2, 2, 2, 2]  # gemini: one conversation (the stub lost)
    g = by["gemini"][0]
    assert g.prompt and g.turns >= 3 and "2026-11-23" in os.path.basename(g.path)
    original = h.entry("claude", ids["resumed-original-29a167b4.jsonl"])
    fork = h.entry("claude", ids["fork-efe74226.jsonl"])
    assert (original.turns, fork.turns) == (3, 4) and fork.prompt == original.prompt  # the old messages, then its own
    assert fork.updated > original.created
    codex_fork = max(by["codex"], key=lambda e: e.created)
    assert codex_fork.prompt and codex_fork.turns >= 1  # its own prompts (the parent's are pointed at, not copied)


def test_amp_where_its_files_exist(tmp_path):
    """Amp was never captured: its publicly documented thread shape (the one amp_thread_state reads)."""
    from test_parsers import AMP_DOC
    home = str(tmp_path / "home")
    d = os.path.join(home, ".local", "share", "amp", "threads")
    os.makedirs(d)
    with open(os.path.join(d, AMP_DOC["id"] + ".json"), "w") as f:
        json.dump(AMP_DOC, f)
    h = built(env_for(home, str(tmp_path)))
    e = h.entry("amp", AMP_DOC["id"])
    assert (e.title, e.prompt, e.cwd, e.turns) == ("Thread title", "fix it", "/home/u/my proj", 1)
    assert o.history_preview(e) == [{"role": "user", "text": "fix it"}]
    os.makedirs(str(tmp_path / "p"))
    e.cwd = str(tmp_path / "p")
    assert o.history_resume_plan(e)["command"].endswith("command amp threads continue %s" % AMP_DOC["id"])


def test_a_new_agent_in_the_history_is_its_spec(tmp_path, monkeypatch):
    """The History section names no agent: a made-up one (test_agent_specs' "kite", its chat format
    this test's own) is found, read, previewed, resumed and forked from its spec alone."""
    from test_agent_specs import kite_reduce, kite_spec

    def kite_messages(records):
        return [("user" if r.get("type") == "user" else "assistant", r.get("text") or "done") for r in records]
    spec = kite_spec()
    spec.fork_args = ("{flags}", "--resume", "{id}", "--branch")
    spec.history = o.HistoryFormat(dirs=("projects", "*"), name_id=o.qwen_id_from_name, suffix=".jsonl",
                                   reducer=kite_reduce, messages=kite_messages, one_shot=((), ("-p",)))
    monkeypatch.setitem(o.AGENT_SPECS, "kite", spec)
    home = str(tmp_path / "home")
    d = os.path.join(home, ".kite", "projects", "-w")
    os.makedirs(d)
    with open(os.path.join(d, UUID + ".jsonl"), "w") as f:
        f.write(json.dumps({"type": "user", "text": "fly home", "cwd": str(tmp_path)}) + "\n")
        f.write(json.dumps({"type": "answer", "model": "kite-1"}) + "\n")
    h = built(env_for(home, str(tmp_path)))
    e = h.entry("kite", UUID)
    assert (e.prompt, e.cwd, e.turns, e.path) == ("fly home", str(tmp_path), 1, os.path.join(d, UUID + ".jsonl"))
    assert o.history_preview(e) == [{"role": "user", "text": "fly home"}, {"role": "assistant", "text": "done"}]
    e.flags = ("-p", "--fast")
    assert o.history_resume_plan(e)["command"].endswith("command kite --fast --resume " + UUID)
    assert o.history_resume_plan(e, fork=True)["command"].endswith("--resume %s --branch" % UUID)
    assert h.to_json(e)["canFork"] and [x.id for x in h.query(None, "fly")] == [UUID]


def test_a_big_file_is_read_from_head_and_tail_and_says_it_is_estimated(tmp_path):
    home = str(tmp_path / "home")
    sid = SID % 1
    filler = []
    for n in range(400):
        filler += claude_records(sid, "/w/big", "turn %d %s" % (n, "x" * 600), ts="2026-11-20T11:%02d:00.000Z" % (n % 60))
    path = write_claude(home, sid, "/w/big", "the very first prompt", extra=filler)
    assert os.path.getsize(path) > o.HISTORY_FULL
    e = built(env_for(home, str(tmp_path))).entry("claude", sid)
    assert e.prompt == "the very first prompt" and e.cwd == "/w/big" and e.branch == "main"
    assert not e.exact & o.EXACT_TURNS and not e.exact & o.EXACT_USAGE
    assert 300 < e.turns < 500  # extrapolated from the head and tail read (401 in the file)


def test_a_prompt_of_ten_megabytes_costs_what_a_short_one_does(tmp_path):
    home = str(tmp_path / "home")
    sid = SID % 2
    huge = "refactor the parser\x1b[31m;$(rm -rf ~)\n" + "y" * (10 * 1024 * 1024)
    write_claude(home, sid, "/w/huge", huge, extra=claude_records(sid, "/w/huge", "second prompt"))
    h = built(env_for(home, str(tmp_path)))
    e = h.entry("claude", sid)
    assert e.prompt == "refactor the parser [31m;$(rm -rf ~)"  # its first line, control characters out
    assert len(json.dumps(h.to_json(e))) < 2000
    assert [x.id for x in h.query(None, "parser")] == [sid]


def test_an_append_is_read_from_where_the_last_read_stopped(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    sid = SID % 3
    path = write_claude(home, sid, "/w/a", "first")
    h = built(env_for(home, str(tmp_path)))
    e = h.entry("claude", sid)
    assert (e.turns, e.offset) == (1, os.path.getsize(path))
    with open(path, "a") as f:
        for r in claude_records(sid, "/w/a", "second", ts="2026-11-21T10:00:00.000Z"):
            f.write(json.dumps(r) + "\n")
        f.write('{"type": "user", "partial line still being wri')
    reads = []
    real = o._pread
    monkeypatch.setattr(o, "_pread", lambda fd, off, size: reads.append((off, size)) or real(fd, off, size))
    h.seen("claude", sid)
    h._refresh()
    e2 = h.entry("claude", sid)
    assert reads == [(e.offset, os.path.getsize(path) - e.offset)]  # only the appended bytes
    assert e2.turns == 2 and e2.exact == 3 and e2.prompt == "first"
    assert e2.updated > e.updated and e2.offset < os.path.getsize(path)  # the partial line: read next time


def test_a_codex_rename_reaches_the_index_though_no_rollout_changes(tmp_path):
    home = lab_home(str(tmp_path / "home"))
    h = built(env_for(home, str(tmp_path)))
    tid = "01a200ee-ed35-7443-92af-a58cf3c30a84"
    assert h.entry("codex", tid).title is None
    with open(os.path.join(home, ".codex", "session_index.jsonl"), "a") as f:
        f.write(json.dumps({"id": tid, "thread_name": "the new name", "updated_at": "2026-11-22T02:00:00Z"}) + "\n")
    h.seen("codex", tid)  # what the Codex watcher reports on that write
    h._refresh()
    assert h.entry("codex", tid).title == "the new name" and [e.id for e in h.query(None, "new name")] == [tid]


def test_a_restart_reads_only_what_changed(tmp_path):
    home = str(tmp_path / "home")
    history_home().build(FIXTURES, home, total=60, seed=5)
    env = env_for(home, str(tmp_path))
    h = built(env)
    assert h.save() and h.stats["read"] == 60
    some = next(e for e in h.entries.values() if e.agent == "qwen")
    with open(some.path, "a") as f:
        f.write(open(some.path).readline())
    h2 = built(env)
    assert h2.loaded == 60 and h2.stats["read"] == 1 and len(h2.entries) == 60
    assert h2.entry("qwen", some.id).turns == some.turns + 1


def test_the_saved_index_is_never_replaced_by_an_emptier_one_by_accident(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    made = history_home().build(FIXTURES, home, total=40, seed=7)
    env = env_for(home, str(tmp_path))
    h = built(env)
    assert h.save()
    saved = os.path.join(str(tmp_path), "state", "opensessions", o.HISTORY_FILE)
    assert oct(os.stat(saved).st_mode & 0o777) == "0o600"
    # a directory that cannot be listed now: its conversations are not taken for gone
    projects = os.path.join(home, ".claude", "projects")
    real = os.listdir
    monkeypatch.setattr(o.os, "listdir", lambda p: (_ for _ in ()).throw(PermissionError(13, "denied", p))
                        if p == projects else real(p))
    h2 = built(env)
    assert len(h2.entries) == 40 and h2.removed == 0
    monkeypatch.undo()
    # an index that lost entries without their files being gone is not written
    h2.entries.clear()
    assert h2.save() is False
    with open(saved) as f:
        assert len(f.read().splitlines()) == 41
    # a conversation whose file is really gone is removed, and that is saved
    gone = made["claude"][0][0]
    os.unlink(h.entry("claude", gone).path)
    h3 = built(env)
    assert h3.removed == 1 and h3.entry("claude", gone) is None and h3.save()
    assert len(built(env).entries) == 39


def test_a_stop_during_the_first_scan_keeps_what_was_read(tmp_path, monkeypatch):
    home = str(tmp_path / "home")
    history_home().build(FIXTURES, home, total=40, seed=13)
    env = env_for(home, str(tmp_path))
    h = o.History(env)
    real = o.history_read_jsonl
    reads = []

    def read_then_stop(*a, **kw):
        reads.append(a[1])
        if len(reads) == 5:
            h._stop = True  # the server ends while the index is being built
        return real(*a, **kw)
    monkeypatch.setattr(o, "history_read_jsonl", read_then_stop)
    h._run()
    assert len(reads) == 5 and not h.complete
    monkeypatch.undo()
    h2 = built(env)
    assert h2.loaded == 5 and len(h2.entries) == 40 and h2.stats["read"] == 35  # the rest, not the first five


def test_a_stop_during_the_batch_wait_ends_the_worker_at_once(tmp_path, monkeypatch):
    """A report from the watchers starts the worker's batch wait (HISTORY_BATCH); a server that
    stops meanwhile does not wait it out (every server stop right after an agent's file changed
    took up to that long)."""
    import linecache
    import sys
    from conftest import retry_until
    home = str(tmp_path / "home")
    os.makedirs(home)
    monkeypatch.setattr(o, "HISTORY_BATCH", 3600.0)
    h = o.History(env_for(home, str(tmp_path)))
    h.start()
    try:
        retry_until(lambda: h.complete)
        h.seen("claude", "11111111-1111-4111-8111-111111111111")

        def in_batch_wait():  # the worker's _run is on the line that waits HISTORY_BATCH
            frame = sys._current_frames().get(h._thread.ident)
            while frame is not None and frame.f_code.co_name != "_run":
                frame = frame.f_back
            return frame is not None and "HISTORY_BATCH" in linecache.getline(frame.f_code.co_filename,
                                                                               frame.f_lineno)
        retry_until(in_batch_wait)
    finally:
        h.stop(timeout=5)
    assert not h._thread.is_alive()


def test_a_corrupt_saved_index_is_kept_aside_and_bad_lines_skipped(tmp_path):
    home = str(tmp_path / "home")
    history_home().build(FIXTURES, home, total=10, seed=9)
    env = env_for(home, str(tmp_path))
    saved = os.path.join(str(tmp_path), "state", "opensessions", o.HISTORY_FILE)
    built(env).save()
    lines = open(saved).read().splitlines()
    with open(saved, "w") as f:
        f.write("\n".join(lines[:3] + ['["claude", "../../etc/passwd"]', "{not json", '[1, 2, 3]'] + lines[3:]) + "\n")
    h = o.History(env)
    h.load()
    assert h.loaded == 10
    with open(saved, "w") as f:
        f.write("garbage\n")
    h = built(env)
    assert os.path.exists(saved + ".corrupt") and len(h.entries) == 10 and h.loaded == 0


def test_nothing_is_written_into_the_agents_dirs(tmp_path):
    home = lab_home(str(tmp_path / "home"))
    history_home().build(FIXTURES, home, total=30, seed=11)

    def listing():
        out = {}
        for root, dirs, files in os.walk(home):
            for n in files:
                st = os.stat(os.path.join(root, n))
                out[os.path.join(root, n)] = (st.st_size, st.st_mtime_ns)
        return out
    before = listing()
    h = built(env_for(home, str(tmp_path)))
    for e in list(h.entries.values())[:10]:
        o.history_preview(e)
    assert listing() == before


def test_how_a_live_process_ran_is_kept_even_before_its_conversation_is_indexed(tmp_path):
    """Claude writes its transcript at the first prompt: the server sees the process (and reads its
    flags and program) before the index has the conversation. They are kept and come back with it."""
    home = str(tmp_path / "home")
    os.makedirs(home)
    h = built(env_for(home, str(tmp_path)))
    sid = SID % 7
    h.record(("claude", sid), ["--permission-mode", "default", "-p"], "/opt/claude/bin/claude")
    assert h.entry("claude", sid) is None
    write_claude(home, sid, "/w", "first")
    h.seen("claude", sid)
    h._refresh()
    e = h.entry("claude", sid)
    assert e.flags == ("--permission-mode", "default") and e.program == "/opt/claude/bin/claude"  # -p dropped
    h.record(("claude", sid), ["--model", "opus"], None)  # seen again, another run
    assert h.entry("claude", sid).flags == ("--model", "opus") and h.entry("claude", sid).program == "/opt/claude/bin/claude"


def test_a_guessed_link_gives_the_program_and_only_an_exact_one_the_flags(tmp_path):
    import subprocess
    from conftest import fake_agents
    home = str(tmp_path / "home")
    os.makedirs(home)
    h = built(env_for(home, str(tmp_path)))
    sid = SID % 8
    write_claude(home, sid, "/w", "first")
    h.seen("claude", sid)
    h._refresh()
    prog = os.path.join(fake_agents(str(tmp_path / "bin"), ("claude",)), "claude")
    p = subprocess.Popen([prog, "--model", "opus"], stdin=subprocess.PIPE)
    from conftest import retry_until
    retry_until(lambda: "--model" in o.process_args(p.pid))  # exec'd (not the fork before it)
    try:
        t = o.Thread("claude", sid, alive=True)
        t.pid, t.pane, t.link = p.pid, "%3", "cwd"  # guessed from the pane's directory
        h.set_live([t])
        h._refresh()
        assert h.entry("claude", sid).program == prog and h.entry("claude", sid).flags is None
        assert h.live[("claude", sid)]["pane"] == "%3"
        t.link = "pid"  # now vouched for by the registry
        h.set_live([t])
        h._refresh()
        assert h.entry("claude", sid).flags == ("--model", "opus")
    finally:
        p.kill()
        p.wait()


def test_a_fifo_named_like_a_transcript_does_not_block(tmp_path):
    home = str(tmp_path / "home")
    d = os.path.join(home, ".claude", "projects", "-w")
    os.makedirs(d)
    os.mkfifo(os.path.join(d, SID % 4 + ".jsonl"))
    write_claude(home, SID % 5, "/w", "real one")
    h = built(env_for(home, str(tmp_path)))
    assert [e.id for e in h.entries.values()] == [SID % 5] and h.stats["errors"] == 1


# -- search ------------------------------------------------------------------------------------------

def entries(*specs):
    out = []
    for n, (agent, title, prompt, cwd) in enumerate(specs):
        e = o.HistoryEntry(agent, (SID % n) if agent != "opencode" else "ses_%026d" % n)
        e.title, e.prompt, e.cwd, e.updated = title, prompt, cwd, 1000 - n
        e.index_text()
        out.append(e)
    return out


def index_of(es):
    h = o.History({"HOME": "/nonexistent"})
    for e in es:
        h.put(e)
    return h


def test_every_word_must_match_somewhere_in_any_case():
    h = index_of(entries(("claude", None, "Fix the LOGIN redirect", "/src/app"),
                         ("codex", "Payments", "add retry", "/src/pay"),
                         ("opencode", None, "login page", "/src/app/web"),
                         ("claude", None, "unrelated", "/src/application")))
    ids = lambda found: [e.prompt for e in found]
    assert ids(h.query(None, "login")) == ["Fix the LOGIN redirect", "login page"]
    assert ids(h.query(None, "LOGIN fix")) == ["Fix the LOGIN redirect"]
    assert ids(h.query(None, "payments codex")) == ["add retry"]  # title and agent
    assert ids(h.query(None, "web login")) == ["login page"]  # directory and prompt
    assert ids(h.query("/src/app", "")) == ["Fix the LOGIN redirect", "login page"]  # not /src/application
    assert ids(h.query("/src/app/", "")) == ids(h.query("/src/app", ""))
    assert ids(h.query(None, "", agent="codex")) == ["add retry"]
    assert ids(h.query(None, "nothing-like-it")) == []


words = st.text(alphabet="abcxyz /", max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(words, words, st.sampled_from(["/a", "/a/b", "/ab", "/c"])), min_size=1, max_size=30),
       st.lists(words, min_size=1, max_size=6))
def test_typing_on_gives_what_a_fresh_search_gives(specs, typed):
    h = index_of(entries(*[("claude", t or None, p, cwd) for t, p, cwd in specs]))
    text = ""
    for piece in typed:
        text += piece
        found = h.query("/a", text)
        fresh = index_of(list(h.entries.values())).query("/a", text)
        assert [e.key for e in found] == [e.key for e in fresh]
    while text:  # backspaces: each answer as a fresh search gives it
        text = text[:-1]
        assert [e.key for e in h.query("/a", text)] == [e.key for e in index_of(list(h.entries.values())).query("/a", text)]


# -- resume and fork commands ------------------------------------------------------------------------

def entry(agent, tid, cwd, flags=None, program=None):
    e = o.HistoryEntry(agent, tid)
    e.cwd, e.flags, e.program = cwd, flags, program
    return e


UUID = "0a1b2c3d-0000-4000-8000-00000000abcd"


def test_resume_and_fork_commands_per_agent(tmp_path):
    d = str(tmp_path)
    plan = lambda e, fork=False: o.history_resume_plan(e, fork)["command"]
    assert plan(entry("claude", UUID, d)) == "cd %s && command claude --resume %s" % (d, UUID)
    assert plan(entry("claude", UUID, d), True) == "cd %s && command claude --resume %s --fork-session" % (d, UUID)
    assert plan(entry("codex", UUID, d), True) == "cd %s && command codex fork %s" % (d, UUID)
    assert plan(entry("opencode", "ses_" + "a" * 26, d), True).endswith("opencode -s ses_%s --fork" % ("a" * 26))
    assert plan(entry("pi", UUID, d), True).endswith("command pi --fork %s" % UUID)
    assert plan(entry("qwen", UUID, d), True).endswith("command qwen --resume %s --fork-session" % UUID)
    assert plan(entry("gemini", UUID, d)).endswith("command gemini --resume %s" % UUID)
    for agent in ("gemini", "amp"):  # Gemini CLI 0.61.0 has none (tests/fixtures/gemini/help.txt); Amp: never captured
        with pytest.raises(ValueError, match="no fork"):
            plan(entry(agent, UUID if agent != "amp" else "T-" + UUID, d), True)


def test_recorded_flags_and_program_come_back_where_safe(tmp_path):
    prog = tmp_path / "claude"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o755)
    e = entry("claude", UUID, str(tmp_path), flags=("--model", "opus", "-p", "--output-format", "json",
                                                    "--dangerously-skip-permissions"), program=str(prog))
    line = o.history_resume_plan(e)["command"]
    assert shlex.split(line) == ["cd", str(tmp_path), "&&", str(prog), "--model", "opus",
                                 "--dangerously-skip-permissions", "--resume", UUID]
    os.unlink(str(prog))
    plan = o.history_resume_plan(e)
    assert "command claude --model opus" in plan["command"] and "is gone" in plan["notes"][0]


def test_a_gone_directory_follows_restores_rule(tmp_path):
    gone = str(tmp_path / "gone")
    for agent in ("claude", "gemini", "qwen"):
        with pytest.raises(ValueError, match="its directory .* is gone .*resumes a conversation only from"):
            o.history_resume_plan(entry(agent, UUID, gone))
    for agent, tid in (("codex", UUID), ("opencode", "ses_" + "b" * 26), ("pi", UUID)):
        plan = o.history_resume_plan(entry(agent, tid, gone))
        assert not plan["command"].startswith("cd ") and plan["cwd"] is None and "is gone" in plan["notes"][0]


@pytest.mark.parametrize("cwd", ["/tmp/x $(touch pwned)", "/tmp/a;b", "/tmp/#(run)", "/tmp/it's", "/tmp/`id`"])
def test_hostile_directories_are_quoted(tmp_path, cwd):
    d = str(tmp_path) + cwd
    os.makedirs(d)
    line = o.history_resume_plan(entry("codex", UUID, d), fork=True)["command"]
    assert shlex.split(line) == ["cd", d, "&&", "command", "codex", "fork", UUID]


def test_control_characters_never_reach_a_shell(tmp_path):
    d = str(tmp_path / "a\nb")
    os.makedirs(d)
    with pytest.raises(ValueError, match="control character"):
        o.history_resume_plan(entry("codex", UUID, d))
    with pytest.raises(ValueError, match="control character"):
        o.history_resume_plan(entry("codex", UUID, str(tmp_path), flags=("--model", "x\x15rm -rf ~")))


def test_ids_are_validated_per_agent():
    h = index_of(entries(("claude", None, "p", "/a")))
    for bad in ("claude:../../etc/passwd", "claude:", "nope:" + UUID, "codex:ses_" + "a" * 26, "$(id)", ""):
        with pytest.raises(ValueError):
            h.find(bad)
    with pytest.raises(ValueError, match=r"'nope' is no agent \(AGENT:ID, AGENT one of claude, codex"):
        h.find("nope:" + UUID)  # (it said "'…' is not a valid nope conversation id")
    with pytest.raises(LookupError):
        h.find("claude:" + UUID)
    assert h.find("claude:" + SID % 0).id == SID % 0 == h.find(SID % 0).id


# -- preview -----------------------------------------------------------------------------------------

def test_preview_reads_the_last_messages_only(tmp_path, monkeypatch):
    home = lab_home(str(tmp_path / "home"))
    h = built(env_for(home, str(tmp_path)))
    c = o.history_preview(h.entry("claude", "44444444-4444-4444-8444-444444444444"), 3)
    assert c == [{"role": "assistant", "text": "The tool ran. Done."}, {"role": "user", "text": "now FAKE_SLOW"},
                 {"role": "assistant", "text": "word0 word1 word2 word3"}]
    x = o.history_preview(h.entry("codex", "01a200ee-fa97-79d0-9e17-4806385eaaf9"), 2)
    assert [m["role"] for m in x] == ["user", "user"] and x[0]["text"] == "now FAKE_SLOW"
    oc = [e for e in h.entries.values() if e.agent == "opencode" and e.turns == 2][0]
    assert [m["text"] for m in o.history_preview(oc, 4)][:2] == ["please FAKE_WRITE", "The tool ran. Done."]
    # a big transcript: only its end is read
    sid = SID % 6
    path = write_claude(home, sid, "/w", "x", extra=claude_records(sid, "/w", "y" * 200000) * 30)
    reads = []
    real = o._pread
    monkeypatch.setattr(o, "_pread", lambda fd, off, size: reads.append(size) or real(fd, off, size))
    e = o.HistoryEntry("claude", sid)
    e.path = path
    found = o.history_preview(e, 2)
    assert found and found[-1]["role"] == "user" and len(found[-1]["text"]) == o.PREVIEW_TEXT
    assert sum(reads) <= o.HISTORY_PREVIEW_BYTES < os.path.getsize(path)


# -- dates, as every reducer reads them -----------------------------------------------------------------

def old_parse_iso_ms(value):
    """The implementation parse_iso_ms replaced (the reference)."""
    import calendar
    if not isinstance(value, str) or len(value) < 19:
        return None
    if value[4] != "-" or value[7] != "-" or value[10] not in "T " or value[13] != ":" or value[16] != ":":
        return None
    try:
        parts = (value[0:4], value[5:7], value[8:10], value[11:13], value[14:16], value[17:19])
        if not all(p.isdigit() and p.isascii() for p in parts):
            return None
        y, mo, d, h, mi, sec = (int(p) for p in parts)
        if not (1 <= mo <= 12 and 1 <= d <= 31 and h <= 23 and mi <= 59 and sec <= 61):
            return None
        base = calendar.timegm((y, mo, d, h, mi, sec))
    except (ValueError, OverflowError):
        return None
    ms = 0
    if len(value) > 20 and value[19] == ".":
        digits = ""
        for ch in value[20:23]:
            if not ch.isdigit():
                break
            digits += ch
        ms = int((digits + "000")[:3]) if digits else 0
    return base * 1000 + ms


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet="0123456789-T :.Z٣x", min_size=17, max_size=26),
                 st.datetimes().map(lambda d: d.isoformat() + "Z"),
                 st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z")))
def test_parse_iso_ms_is_the_reference(value):
    assert o.parse_iso_ms(value) == old_parse_iso_ms(value)
