"""Agents' SQLite databases and directories, watched without reacting to our own reads.

The watchers run here on a stub server whose loop the test drives: a read we cause must not wake
us again (Codex's state_5.sqlite in WAL mode spun the server at 70 % of a core), a writer's commit
must be read once it is visible, and directories made while we set up watches must not be missed."""
import os
import select
import shutil
import subprocess
import sys
import threading
import time
import types

import pytest

import opensessions as os_
from conftest import lab_home

CODEX_ID = "01a200ee-ed35-7443-92af-a58cf3c30a84"  # a thread of homes/dev without a name
OC_ID = "ses_dff105766ffedxuBDWnrEGWqpt"

WRITER = r"""
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for line in sys.stdin:
    conn.execute(line)
    print("ok", flush=True)
"""


class Writer(object):
    """Another process holding a database open, as a running agent does; runs SQL sent to it."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, universal_newlines=True)

    def sql(self, statement):
        self.proc.stdin.write(statement.replace("\n", " ") + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


class StubLoop(object):
    def __init__(self):
        self.readers = {}
        self.timers = []

    def add_reader(self, fd, callback):
        self.readers[fd] = callback

    def remove_reader(self, fd):
        self.readers.pop(fd, None)

    def call_later(self, delay, fn, *args):
        self.timers.append((time.monotonic() + delay, fn, args))
        return lambda: None

    def post(self, fn, *args):
        self.call_later(0, fn, *args)

    def run_until_quiet(self, quiet=0.3, limit=200):
        """Serve inotify and timers until nothing happens for `quiet` s. -> wake-ups, or None if
        it never went quiet within `limit` wake-ups."""
        for n in range(limit):
            due = min([t[0] for t in self.timers] or [time.monotonic() + quiet])
            ready, _, _ = select.select(list(self.readers), [], [], max(0.0, due - time.monotonic()))
            for fd in ready:
                self.readers[fd]()
            now = time.monotonic()
            fired = [t for t in self.timers if t[0] <= now]
            self.timers = [t for t in self.timers if t[0] > now]
            for _, fn, args in fired:
                fn(*args)
            if not ready and not fired and not self.timers:
                return n
        return None


class StubServer(object):
    def __init__(self):
        self.loop = StubLoop()
        self.store = types.SimpleNamespace(threads={})
        self.threads = {}

    def apply_thread_update(self, agent, tid, **fields):
        self.threads.setdefault((agent, tid), {}).update({k: v for k, v in fields.items() if v is not None})

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def leftovers(home):
    dirs = (os.path.join(home, ".codex"), os.path.join(home, ".local", "share", "opencode"))
    return sorted(n for d in dirs for n in os.listdir(d) if n.endswith(("-wal", "-shm")))


@pytest.fixture
def home(tmp_path):
    return lab_home(str(tmp_path / "home"))


def watchers(home, **kw):
    environ = {"HOME": home, "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
               "XDG_CONFIG_HOME": os.path.join(home, ".config")}
    server = StubServer()
    w = os_.AgentWatchers(server, environ, recent_days=100000, **kw)
    reads = {"codex": 0, "opencode": 0}
    for watcher, name, key in ((w.codex, "_read_codex_names_db", "codex"), (w.opencode, "_query_opencode", "opencode")):
        def counted(fn=getattr(watcher, name), key=key):
            reads[key] += 1
            return fn()
        setattr(watcher, name, counted)
    w.start()
    reads.update(cold=dict(reads), codex=0, opencode=0)  # the cold start's own reads
    return w, server, reads


def test_reading_a_database_leaves_nothing_behind_and_wakes_nobody(home):
    assert leftovers(home) == []  # homes/dev: WAL databases, no agent running
    w, server, reads = watchers(home)
    try:
        assert server.threads[("codex", "01a200ee-fa97-79d0-9e17-4806385eaaf9")]["title"] == "sample-name"
        assert ("opencode", OC_ID) in server.threads
        assert server.loop.run_until_quiet() is not None
        assert reads["cold"] == {"codex": 1, "opencode": 1}
        assert (reads["codex"], reads["opencode"]) == (0, 0)  # the cold start's own reads woke nothing
        assert leftovers(home) == []
    finally:
        w.close()


def test_a_live_writers_commits_are_read_and_our_reads_are_not_changes(home):
    codex = Writer(os.path.join(home, ".codex", "state_5.sqlite"))
    oc = Writer(os.path.join(home, ".local", "share", "opencode", "opencode.db"))
    w, server, reads = watchers(home)
    try:
        for i in range(3):
            codex.sql("UPDATE threads SET name = 'renamed %d' WHERE id = '%s'" % (i, CODEX_ID))
            oc.sql("UPDATE session SET title = 'retitled %d', time_updated = %d WHERE id = '%s'"
                   % (i, int(time.time() * 1000) + i, OC_ID))
            before = dict(reads, cold=None)
            # each commit is read, and the reads' own traces (-shm, the -wal's close) then go quiet
            assert server.loop.run_until_quiet() is not None
            assert w.codex.codex_names[CODEX_ID] == "renamed %d" % i
            assert server.threads[("codex", CODEX_ID)]["title"] == "renamed %d" % i
            assert server.threads[("opencode", OC_ID)]["title"] == "retitled %d" % i
            assert 1 <= reads["codex"] - before["codex"] <= 4 and 1 <= reads["opencode"] - before["opencode"] <= 4
    finally:
        w.close()
        codex.close()
        oc.close()
    assert leftovers(home) == []  # the writer, last to close, removed its own -wal and -shm


def test_a_commit_under_way_is_read_once_it_is_visible(home):
    db = os.path.join(home, ".codex", "state_5.sqlite")
    codex = Writer(db)
    w, server, reads = watchers(home)
    try:
        codex.sql("BEGIN IMMEDIATE")  # the writer holds the WAL write lock ...
        codex.sql("UPDATE threads SET name = 'late' WHERE id = '%s'" % CODEX_ID)
        assert os_.sqlite_write_locked(db) is True
        before = reads["codex"]
        w.codex._on_codex_home(os.path.dirname(db), "state_5.sqlite-wal", os_.IN_MODIFY)  # ... a -wal write woke us
        assert reads["codex"] == before  # not read while the commit is under way
        codex.sql("COMMIT")
        assert os_.sqlite_write_locked(db) is False
        assert server.loop.run_until_quiet() is not None
        assert w.codex.codex_names[CODEX_ID] == "late"
    finally:
        w.close()
        codex.close()


def test_sqlite_ro_opens_immutable_only_without_a_writer(tmp_path):
    import sqlite3
    db = str(tmp_path / "x.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t(x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()
    assert os.path.exists(db + "-wal")  # a writer is there: read through its WAL
    assert [r[0] for r in os_.sqlite_rows(db, "SELECT x FROM t")] == [1, 2]
    conn.close()
    assert sorted(os.listdir(str(tmp_path))) == ["x.db"]
    assert [r[0] for r in os_.sqlite_rows(db, "SELECT x FROM t")] == [1, 2]
    assert sorted(os.listdir(str(tmp_path))) == ["x.db"]
    assert os_.sqlite_is_wal(db) and not os_.sqlite_is_wal(str(tmp_path / "missing.db"))


def captured_opencode_db(tmp_path):
    """The captured OpenCode database, built in a HOME of its own (fixtures/tools/make_homes.py)."""
    return os.path.join(lab_home(str(tmp_path / "captured")), ".local", "share", "opencode", "opencode.db")


def test_directories_made_while_the_watch_is_placed_are_not_missed(tmp_path):
    """The race of a first OpenCode install: each level of ~/.local/share/opencode is made just
    before the watch on its parent is in place (so that watch never sees it)."""
    src = captured_opencode_db(tmp_path)
    home = str(tmp_path / "home")
    os.makedirs(home)
    w, server, reads = watchers(home)
    try:
        real_add = w.inotify.add_watch
        db = os.path.join(home, ".local", "share", "opencode", "opencode.db")
        levels = [os.path.join(home, ".local"), os.path.join(home, ".local", "share"), os.path.dirname(db)]

        def add_watch(path, mask):
            for level in levels:  # the next level appears between our look and this watch
                if not os.path.isdir(level):
                    os.mkdir(level)
                    if level == levels[-1]:
                        shutil.copy(src, db)
                    break
            return real_add(path, mask)
        w.inotify.add_watch = add_watch
        w.core._on_inotify()  # nothing queued yet; then the first level is made
        os.mkdir(levels[0])
        assert server.loop.run_until_quiet() is not None
        assert os.path.dirname(db) in w.watched_dirs
        assert any(a == "opencode" for a, _ in server.threads)
    finally:
        w.close()


def test_directories_made_in_a_tight_loop(tmp_path):
    """Nested directories made as fast as a program can, while we watch for the deepest."""
    src = captured_opencode_db(tmp_path)
    for attempt in range(7):
        base = str(tmp_path / ("home%d" % attempt))
        os.makedirs(base)
        w, server, reads = watchers(base)
        try:
            db = os.path.join(base, ".local", "share", "opencode", "opencode.db")
            maker = threading.Thread(target=lambda: (os.makedirs(os.path.dirname(db)), shutil.copy(src, db)))
            maker.start()
            for _ in range(200):
                if server.loop.run_until_quiet(quiet=0.05) is None:
                    break
                if any(a == "opencode" for a, _ in server.threads):
                    break
            maker.join()
            assert any(a == "opencode" for a, _ in server.threads), "attempt %d missed the database" % attempt
        finally:
            w.close()


def test_a_first_opencode_install_is_seen_by_the_running_server(env, tmux):
    """~/.local/share/opencode/opencode.db made with its parents while the server runs, then a
    Codex rollout in a day directory made at that moment: both reach /state."""
    from conftest import ServerProc, retry_until
    lab = lab_home(os.path.join(env.base, "lab"))
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"  # fixture records are dated 2026-11-22
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    data = env.vars.get("XDG_DATA_HOME") or os.path.join(env.home, ".local", "share")
    assert not os.path.exists(os.path.join(data, "opencode"))
    s = ServerProc(env, tmux)
    try:
        os.makedirs(os.path.join(data, "opencode"))
        shutil.copy(os.path.join(lab, ".local", "share", "opencode", "opencode.db"), os.path.join(data, "opencode"))
        retry_until(lambda: any(t["agent"] == "opencode" and t["id"] == OC_ID for t in s.state()["threads"]))
        named = "01a200ee-fa97-79d0-9e17-4806385eaaf9"  # has a name in state_5.sqlite
        src = [os.path.join(dp, n) for dp, _, ns in os.walk(os.path.join(lab, ".codex", "sessions")) for n in ns
               if named not in n][0]
        day = os.path.join(env.home, ".codex", "sessions", "2031", "01", "01")
        os.makedirs(day)
        shutil.copy(src, day)
        tid = os_.codex_id_from_path(src)
        retry_until(lambda: any(t["agent"] == "codex" and t["id"] == tid for t in s.state()["threads"]))
        # ~/.codex removed, then put back whole (a restore): awaited again, read again, names too
        assert not any(t["id"] == named for t in s.state()["threads"])
        codex_tmp = os.path.join(env.base, "codex-new")
        shutil.copytree(os.path.join(lab, ".codex"), codex_tmp)
        shutil.rmtree(os.path.join(env.home, ".codex"))
        os.rename(codex_tmp, os.path.join(env.home, ".codex"))
        retry_until(lambda: [t for t in s.state()["threads"] if t["id"] == named and t["title"] == "sample-name"])
        assert not [n for n in os.listdir(os.path.join(data, "opencode")) if n.endswith(("-wal", "-shm"))]
    finally:
        s.stop()
