"""Files we do not own that never end: every reader of an agent's file, a user's
config or tmux-resurrect's files meets a FIFO, a symlink to /dev/zero and a 1 GB sparse file where
it expects a small regular file, and must come back at once with its memory bounded.

Each case runs in a child process with a 1 GB address-space limit and a deadline, so a reader that
blocks on the FIFO, or reads /dev/zero into memory, fails the case instead of the machine."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import IMPORT_PATH, PYTHON

KINDS = ("fifo", "zero", "sparse")
SPARSE = 1 << 30
UUID = "6f1c3a52-1d0b-4c1e-9a57-0c4f2f6d9e11"
CODEX_ID = "01a200ee-0000-7000-9e17-000000000001"
AMP_ID = "T-019b9d03-62e3-772f-9780-3e637f90eaec"

# reader -> the path it reads, relative to HOME ("{pid}" is the child's pid: a registry file is
# named after a live process)
READERS = {
    "claude registry": ".claude/sessions/{pid}.json",
    "claude transcript": ".claude/projects/-w/%s.jsonl" % UUID,
    "codex rollout": ".codex/sessions/2026/11/22/rollout-2026-11-22T01-46-31-%s.jsonl" % CODEX_ID,
    "codex session index": ".codex/session_index.jsonl",
    "codex state db": ".codex/state_5.sqlite",
    "opencode db": ".local/share/opencode/opencode.db",
    "opencode db -journal": ".local/share/opencode/opencode.db-journal",
    "amp thread": ".local/share/amp/threads/%s.json" % AMP_ID,
    "gemini projects.json": ".gemini/projects.json",
    "gemini chat (first line)": ".gemini/tmp/proj/chats/session-2026-11-27T22-08-4fc6198e.jsonl",
    "qwen registry": ".qwen/sessions/{pid}.json",
    "qwen chat": ".qwen/projects/-w/chats/%s.jsonl" % UUID,
    "pi session": ".pi/agent/sessions/--w--/2026-11-22T01-46-31-000Z_%s.jsonl" % UUID,
    "git HEAD": "work/.git/HEAD",
    "git file": "work/.git",
    "ui.json (ours)": ".config/opensessions/ui.json",
    "resurrect sidecar": "resurrect/opensessions_20261122T030000.json",
    "assistant-sessions.json": "resurrect/assistant-sessions.json",
    "pane contents archive": "resurrect/pane_contents.tar.gz",
    "qwen registry (save)": ".qwen/sessions/{pid}.json#save",
    "claude registry (save)": ".claude/sessions/{pid}.json#save",
    "gemini projects.json (save)": ".gemini/projects.json#save",
    "gemini chat (restore)": ".gemini/tmp/proj/chats/session-2026-11-27T22-08-4fc6198e.jsonl#restore",
    "claude settings.json (install)": ".claude/settings.json",
    "pi extension (install)": ".pi/agent/extensions/opensessions.ts",
    "opencode plugin (install)": ".config/opencode/plugins/opensessions.js",
    "install ledger (ours)": ".local/state/opensessions/installed.json",
}

DRIVER = r'''
import json, os, resource, sys, time
sys.path.insert(0, IMPORT)  # the zipapp: its bytecode, not the source compiled in every child
import opensessions as o

base, reader, kinds = sys.argv[1], sys.argv[2], sys.argv[3:]


def plant(kind):
    """HOME for this kind, with the file that never ends where the reader looks."""
    global home, path, env
    home = os.path.join(base, kind)
    rel = READERS[reader].split("#")[0].replace("{pid}", str(os.getpid()))
    path = os.path.join(home, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith("-journal"):  # a database beside it: SQLite opens its journal, looking for a hot one
        import sqlite3
        conn = sqlite3.connect(path[:-len("-journal")])
        conn.execute("CREATE TABLE session (id TEXT)")
        conn.commit()
        conn.close()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as f:
            f.truncate(SPARSE)
    env = {"HOME": home, "XDG_CONFIG_HOME": os.path.join(home, ".config"),
           "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
           "XDG_STATE_HOME": os.path.join(home, ".local", "state")}


class Loop(object):
    def call_later(self, delay, fn, *args):
        pass

    def add_reader(self, fd, fn):
        pass


class StubServer(object):
    """What the watchers call on the server; updates are kept to be counted."""
    def __init__(self):
        self.loop = Loop()
        self.updates = []

    def apply_thread_update(self, agent, tid, **fields):
        self.updates.append((agent, tid))

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def watchers():
    server = StubServer()
    w = o.AgentWatchers(server, env, recent_days=100000)
    w.cold_start()
    return {"skipped": w.core.bad_records, "updates": len(server.updates)}


class FakeTmux(object):
    def run(self, *args, **kw):
        raise o.TmuxError("no tmux here")


def run():
    if reader.startswith("git"):
        return {"branch": o.GitProbe().branch(os.path.join(home, "work"))}
    if reader == "ui.json (ours)":
        try:
            return o.read_json_file(path, {})
        except o.OpensessionsError as e:
            return {"error": str(e)}
    if reader in ("resurrect sidecar", "assistant-sessions.json"):
        r = o.Resurrect(FakeTmux(), env, log=lambda m: None)
        r._options = {"@resurrect-dir": os.path.dirname(path)}
        if reader == "resurrect sidecar":
            os.symlink(os.path.basename(path), os.path.join(os.path.dirname(path), "opensessions_last"))
        try:
            return {"records": len(r.load()[0])}
        except o.OpensessionsError as e:
            return {"error": str(e)}
    if reader == "pane contents archive":
        try:
            return {"removed": o.strip_pane_contents(path, ["s:0.0"])}
        except OSError as e:
            return {"error": str(e)}
    if reader == "qwen registry (save)":
        return {"id": o.qwen_registry_id(os.path.join(home, ".qwen"), [os.getpid()])}
    if reader == "claude registry (save)":
        spec, files = o.agent_files("claude")
        return {"id": files.live_id(spec, o.agent_paths(env)["claude"], [os.getpid()])}
    if reader == "gemini projects.json (save)":
        spec, files = o.agent_files("gemini")
        return {"candidates": files.cwd_candidates(spec, o.agent_paths(env)["gemini"], "/w")}
    if reader == "gemini chat (restore)":
        return {"exists": o.conversation_exists("gemini", "4fc6198e" + "-0000-4000-8000-000000000000",
                                                o.agent_paths(env)["gemini"])}
    if reader.endswith("(install)") or reader == "install ledger (ours)":
        for d in (".claude", ".codex", ".pi/agent", ".config/opencode"):
            os.makedirs(os.path.join(home, d), exist_ok=True)
        try:
            return {"done": o.install_agents("opensessions", env)}
        except o.OpensessionsError as e:
            return {"error": str(e)}
    return watchers()


for kind in kinds:
    plant(kind)
    t0 = time.monotonic()
    result = run()
    elapsed = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"kind": kind, "result": result, "seconds": elapsed, "peak_mb": peak}, default=str))
    sys.stdout.flush()
'''


def run_reader(tmp_path, reader, kinds=KINDS, timeout=30):
    """The reader meeting each kind of file in turn, in one child -> {kind: the driver's report}; an
    AssertionError says how it failed (a deadline passed: blocked; the memory limit: unbounded)."""
    script = tmp_path / "driver.py"
    script.write_text("IMPORT = %r\nREADERS = %r\nSPARSE = %d\n" % (IMPORT_PATH, READERS, SPARSE) + DRIVER)

    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    proc = subprocess.Popen([PYTHON, str(script), str(tmp_path), reader] + list(kinds), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=limit)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    reports = {r["kind"]: r for r in (json.loads(l) for l in out.decode().splitlines() if l.startswith("{"))}
    for kind in kinds:
        assert kind in reports, "%s on a %s: %s" % (reader, kind, "failed: " + err.decode()[-2000:]
                                                    if proc.returncode else "still reading after %d s (blocked)"
                                                    % timeout)
    return reports


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_comes_back_at_once_from_a_file_that_never_ends(tmp_path, reader):
    for kind, report in run_reader(tmp_path, reader).items():
        assert report["seconds"] < 5, (kind, report)
        assert report["peak_mb"] < 200, (kind, report)


def test_a_registry_that_never_ends_is_skipped_and_counted(tmp_path):
    # the four places the issue names: refused, counted in skippedRecords, nothing invented
    for reader in ("claude registry", "qwen registry", "gemini projects.json"):
        sub = tmp_path / reader.replace(" ", "_")
        sub.mkdir()
        for kind, report in run_reader(sub, reader).items():
            assert report["result"]["skipped"] >= 1 and report["result"]["updates"] == 0, (reader, kind, report)


def test_read_foreign_refuses_what_is_not_a_small_regular_file(tmp_path):
    import opensessions as o
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    zero = str(tmp_path / "zero")
    os.symlink("/dev/zero", zero)
    big = str(tmp_path / "big")
    with open(big, "wb") as f:
        f.truncate(SPARSE)
    small = str(tmp_path / "small")
    with open(small, "wb") as f:
        f.write(b"0123456789")
    link = str(tmp_path / "link")
    os.symlink(small, link)
    t0 = time.monotonic()
    for path in (fifo, zero):
        with pytest.raises(o.ForeignFileError, match="not a regular file"):
            o.read_foreign(path, 100)
    with pytest.raises(o.ForeignFileError, match="over the"):
        o.read_foreign(big, 1 << 20)
    assert o.read_foreign(big, 4, whole=False) == b"\0\0\0\0"
    assert o.read_foreign(small, 100) == b"0123456789"
    assert o.read_foreign(link, 100) == b"0123456789"  # a link is followed where one is expected
    with pytest.raises(o.ForeignFileError, match="symlink"):
        o.read_foreign(link, 100, follow=False)
    with pytest.raises(FileNotFoundError):
        o.read_foreign(str(tmp_path / "missing"), 100)
    assert time.monotonic() - t0 < 5
    with pytest.raises(o.OpensessionsError, match="not a regular file"):
        o.read_json_file(fifo)


def test_a_database_whose_journal_wal_or_shm_is_a_fifo_is_not_opened(tmp_path):
    import sqlite3
    import opensessions as o
    db = str(tmp_path / "x.db")
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    conn.close()
    for suffix in ("-wal", "-shm", "-journal"):
        os.mkfifo(db + suffix)
        with pytest.raises(sqlite3.OperationalError, match="not a regular file"):
            o.sqlite_rows(db, "SELECT * FROM t")
        os.unlink(db + suffix)
    assert o.sqlite_rows(db, "SELECT * FROM t") == []


# -- the server and the resurrect hooks, end to end ----------------------------------------------

def plant(path, kind):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as f:
            f.truncate(SPARSE)


def server_paths(home, n):
    """One of each file the server reads, named for round n (a new file at run time)."""
    pid = 4000000 + n
    uid = "6f1c3a52-1d0b-4c1e-9a57-%012d" % n
    return [os.path.join(home, p) for p in (
        ".claude/sessions/%d.json" % pid, ".qwen/sessions/%d.json" % pid,
        ".claude/projects/-w/%s.jsonl" % uid, ".qwen/projects/-w/chats/%s.jsonl" % uid,
        ".gemini/tmp/proj/chats/session-2026-11-27T22-08-%08x.jsonl" % n,
        ".pi/agent/sessions/--w--/2026-11-22T01-46-31-000Z_%s.jsonl" % uid,
        ".local/share/amp/threads/T-019b9d03-62e3-772f-9780-%012d.json" % n,
        ".codex/sessions/2026/11/22/rollout-2026-11-22T01-46-31-01a200ee-0000-7000-9e17-%012d.jsonl" % n)]


def health_ms(server):
    t0 = time.monotonic()
    code, body = server.get("/health")
    assert code == 200, body
    return (time.monotonic() - t0) * 1000


@pytest.mark.parametrize("kind", KINDS)
def test_the_server_starts_and_answers_beside_files_that_never_end(env, tmux, kind):
    from conftest import ServerProc, retry_until
    home = env.home
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    # where the issue saw the server hang for good: and one of every other file it reads
    for p in server_paths(home, 0) + [os.path.join(home, ".gemini", "projects.json"),
                                      os.path.join(home, ".codex", "session_index.jsonl"),
                                      os.path.join(home, ".local/share/opencode/opencode.db")]:
        plant(p, kind)
    good = os.path.join(home, ".claude", "projects", "-w", UUID + ".jsonl")
    with open(good, "w") as f:
        f.write(json.dumps({"type": "user", "sessionId": UUID, "cwd": "/w", "timestamp": "2026-11-22T01:46:19.452Z",
                            "message": {"role": "user", "content": "the good one"}}) + "\n")
    server = ServerProc(env, tmux)  # a restarted server: it must come up at all (it did not)
    try:
        assert health_ms(server) < 2000
        retry_until(lambda: any(t["id"] == UUID for t in server.state()["threads"]), timeout=10)
        # and at run time, through inotify events
        for n in (1, 2):
            for p in server_paths(home, n):
                plant(p, kind)
            code, _ = server.post("/set-status", {"session": "main", "text": "round %d" % n})
            assert code == 204  # the event loop answers (it is where the files are read)
            assert health_ms(server) < 2000
        health = json.loads(server.get("/health")[1])
        assert health["skippedRecords"] >= 3, health  # refused and counted, not read
        rss = int([l for l in open("/proc/%d/status" % server.proc.pid) if l.startswith("VmHWM")][0].split()[1])
        assert rss < 200 * 1024, rss
    finally:
        server.stop()


FAKE_AGENT_SH = r"""#!/bin/sh
while read -r line; do :; done
"""


def agent_pane(tmux, env, name, agent, cwd):
    """A session whose shell runs a fake agent named `agent` (comm = the name) -> the agent's pid."""
    from conftest import retry_until
    bindir = os.path.join(env.base, "bin")
    os.makedirs(bindir, exist_ok=True)
    exe = os.path.join(bindir, agent)
    with open(exe, "w") as f:
        f.write(FAKE_AGENT_SH)
    os.chmod(exe, 0o755)
    tmux.run("new-session", "-d", "-s", name, "-c", cwd, "sh -c '%s; exec sleep 100000'" % exe)  # a shell runs it
    pane_pid = int(tmux.run("display-message", "-p", "-t", "=%s:0.0" % name, "#{pane_pid}").strip())

    def child():
        for task in os.listdir("/proc/%d/task" % pane_pid):
            for pid in open("/proc/%d/task/%s/children" % (pane_pid, task)).read().split():
                if open("/proc/%s/comm" % pid).read().strip() == agent:
                    return int(pid)
    return retry_until(child)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_restore_dry_run_come_back_beside_files_that_never_end(env, tmux, kind):
    """Both run as tmux-resurrect hooks: a hang there hangs tmux's own save."""
    import subprocess as sp
    import opensessions as o
    from conftest import SCRIPT, retry_until
    home = env.home
    rdir = os.path.join(env.base, "resurrect")
    os.makedirs(rdir)
    tmux.run("set-option", "-g", "@resurrect-dir", rdir)
    cwd = os.path.join(home, "w")
    os.makedirs(cwd)
    pids = {agent: agent_pane(tmux, env, agent, agent, cwd) for agent in ("claude", "qwen", "gemini")}
    tmux.run("new-session", "-d", "-s", "sh", "-c", cwd, "bash --norc --noprofile")
    retry_until(lambda: tmux.run("display-message", "-p", "-t", "=sh:0.0", "#{pane_current_command}").strip() == "bash")
    # save: the registries and projects.json never end; the claude pane is found by its directory
    # (so a record is saved and resurrect's pane contents archive, which never ends, is looked at)
    transcript = os.path.join(home, ".claude", "projects", o.claude_project_dir_name(cwd), UUID + ".jsonl")
    os.makedirs(os.path.dirname(transcript))
    with open(transcript, "w") as f:
        f.write("{}\n")
    plant(os.path.join(home, ".claude", "sessions", "%d.json" % pids["claude"]), kind)
    plant(os.path.join(home, ".qwen", "sessions", "%d.json" % pids["qwen"]), kind)
    plant(os.path.join(home, ".gemini", "projects.json"), kind)
    plant(os.path.join(rdir, "pane_contents.tar.gz"), kind)

    def cli(*args):
        t0 = time.monotonic()
        r = sp.run([PYTHON, SCRIPT, "-S", tmux.socket] + list(args), env=env.vars, stdout=sp.PIPE, stderr=sp.PIPE,
                   timeout=30)
        return r, time.monotonic() - t0
    r, took = cli("save")
    assert r.returncode == 0 and took < 10, (r.stderr, took)
    saved = json.load(open(os.path.join(rdir, "opensessions_last")))
    assert [(x["agent"], x["id"]) for x in saved["records"]] == [("claude", UUID)], saved
    # restore --dry-run: a Gemini chat's first line and OpenCode's database never end
    plant(os.path.join(home, ".gemini", "tmp", "proj", "chats", "session-2026-11-27T22-08-4fc6198e.jsonl"), kind)
    plant(os.path.join(home, ".local", "share", "opencode", "opencode.db"), kind)
    os.unlink(os.path.join(rdir, "opensessions_last"))
    records = [{"session": "sh", "window": 0, "paneIndex": 0, "agent": "gemini",
                "id": "4fc6198e-0000-4000-8000-000000000000", "cwd": cwd},
               {"session": "sh", "window": 0, "paneIndex": 0, "agent": "opencode",
                "id": "ses_dff0ffa93ffebtZJZGz5f4eDGC", "cwd": cwd}]
    with open(os.path.join(rdir, "opensessions_20261122T040000.json"), "w") as f:
        json.dump({"version": 1, "records": records}, f)
    os.symlink("opensessions_20261122T040000.json", os.path.join(rdir, "opensessions_last"))
    r, took = cli("restore", "--dry-run")
    assert r.returncode == 0 and took < 10, (r.stderr, took)
    assert r.stdout.count(b"no longer exists") == 2, r.stdout
    # and a sidecar and tmux-assistant-resurrect's file that never end
    for name in os.listdir(rdir):
        os.unlink(os.path.join(rdir, name))
    plant(os.path.join(rdir, "opensessions_20261122T030000.json"), kind)
    os.symlink("opensessions_20261122T030000.json", os.path.join(rdir, "opensessions_last"))
    plant(os.path.join(rdir, "assistant-sessions.json"), kind)
    r, took = cli("restore", "--dry-run")
    assert took < 10, (r.stderr, took)
    assert b"no readable opensessions sidecar" in r.stderr, r.stderr
