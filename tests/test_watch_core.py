"""The watchers' shared core: one class per agent over it, which source wins (the apply step's
decision, live_state_holds, not a watcher's), and stat polling where inotify is not there."""
import os

import pytest

import opensessions as os_
from conftest import FakeLoop


def _thread(status, source="hook", detail=None, attempt=None):
    t = os_.Thread("codex", "t", status=status, detail=detail, attempt=attempt)
    t.source = source
    return t


def test_a_wait_holds_until_the_file_moves_on():
    waiting = _thread("waiting", detail="approve?")
    assert os_.live_state_holds(waiting, "running", moved_on=False)
    assert not os_.live_state_holds(waiting, "running", moved_on=True)
    assert not os_.live_state_holds(waiting, "done", moved_on=False)  # only "running" yields
    assert not os_.live_state_holds(_thread("done"), "running", moved_on=False)
    assert not os_.live_state_holds(None, "running", moved_on=False)


def test_opencode_database_yields_to_the_plugin_for_waits_and_retries():
    for status in ("waiting", "retry"):
        assert os_.live_state_holds(_thread(status, source="plugin"), "running", False, plugin_holds=True)
        assert not os_.live_state_holds(_thread(status, source="file"), "running", False, plugin_holds=True)
    assert not os_.live_state_holds(_thread("done", source="plugin"), "running", False, plugin_holds=True)
    assert os_.AGENT_SPECS["opencode"].plugin_holds and not os_.AGENT_SPECS["codex"].plugin_holds


@pytest.fixture
def bare(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path)}
    s = os_.Server(os_.Tmux(str(tmp_path / "no.sock")), 0, False, env, clock=lambda: 1000.0)
    try:
        yield s
    finally:
        s.loop.close()


def test_apply_step_keeps_a_hook_wait_against_a_file_that_has_not_moved_on(bare):
    bare.apply_thread_update("codex", "t1", status="waiting", detail="approve?", source="hook")
    t = bare.apply_thread_update("codex", "t1", status="running", detail=None, source="file", moved_on=False)
    assert (t.status, t.detail, t.source) == ("waiting", "approve?", "file")
    t = bare.apply_thread_update("codex", "t1", status="running", detail=None, source="file", moved_on=True)
    assert (t.status, t.detail) == ("running", None)


def test_apply_step_keeps_the_opencode_plugin_as_source(bare):
    s = bare
    s.apply_thread_update("opencode", "ses_a", status="retry", detail="rate limited", attempt=2, source="plugin")
    t = s.apply_thread_update("opencode", "ses_a", status="running", source="file", moved_on=False)
    assert (t.status, t.detail, t.attempt, t.source) == ("retry", "rate limited", 2, "plugin")
    t = s.apply_thread_update("opencode", "ses_a", status="done", source="file", moved_on=False)
    assert (t.status, t.attempt, t.source) == ("done", None, "plugin")


def test_without_the_watchers_fact_a_source_is_taken_as_it_says(bare):
    s = bare
    s.apply_thread_update("codex", "t2", status="waiting", source="hook")
    t = s.apply_thread_update("codex", "t2", status="running", source="file")  # Claude's and Amp's files
    assert t.status == "running"


class _Loop(object):
    def call_later(self, *a):
        pass

    def add_reader(self, *a):
        pass

    def remove_reader(self, *a):
        pass


class _Server(object):
    def __init__(self):
        self.loop = _Loop()
        self.updates = []

    def apply_thread_update(self, agent, tid, **fields):
        self.updates.append((agent, tid, fields))

    def after_watchers(self):
        pass

    def agent_pid_exited(self, agent, pid):
        pass


def test_each_agent_has_its_own_watcher_over_one_core(tmp_path):
    w = os_.AgentWatchers(_Server(), {"HOME": str(tmp_path), "OPENSESSIONS_WATCH": "poll"})
    agents = (w.claude, w.codex, w.opencode, w.amp, w.gemini, w.qwen, w.pi)
    assert all(a.core is w.core for a in agents) and tuple(w.agents) == agents
    assert [type(a).__name__ for a in agents] == ["ClaudeWatcher", "CodexWatcher", "OpenCodeWatcher", "AmpWatcher",
                                                  "GeminiWatcher", "QwenWatcher", "ChatFilesWatcher"]
    assert [a.spec for a in agents] == list(os_.AGENT_SPECS.values())  # each agent's spec names its kind
    w.start()
    assert os.path.join(str(tmp_path), ".qwen", "projects") in w.polled_dirs and w.inotify is None
    w.close()


def test_watchers_tell_their_facts_and_never_read_the_store(tmp_path):
    """A Qwen chat (a real capture) that holds only the user's prompt has not moved past a wait;
    the watcher says so and leaves the decision to the server (its stand-in has no store)."""
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "qwen")
    with open(os.path.join(fixture, "session.jsonl")) as f:
        lines = f.read().splitlines(True)
    with open(os.path.join(fixture, "session-filename.txt")) as f:
        name = f.read().strip()
    tid = name[:-len(".jsonl")]
    chats = tmp_path / "home" / ".qwen" / "projects" / "-home-dev-proj" / "chats"
    chats.mkdir(parents=True)
    (chats / name).write_text(lines[0])
    server = _Server()
    w = os_.AgentWatchers(server, {"HOME": str(tmp_path / "home"), "OPENSESSIONS_WATCH": "poll"},
                          recent_days=100000)
    w.start()
    told = [f for agent, t, f in server.updates if (agent, t) == ("qwen", tid)]
    assert told and told[-1]["moved_on"] is False and told[-1]["source"] == "file"
    with open(str(chats / name), "a") as f:
        f.write("".join(lines[1:]))
    w.qwen._on_chats(str(chats), name, os_.IN_MODIFY)
    told = [f for agent, t, f in server.updates if (agent, t) == ("qwen", tid)]
    assert told[-1]["moved_on"] is True  # the assistant answered


def test_a_database_still_being_copied_is_not_opened(tmp_path):
    """A file shorter than SQLite's header (a copy under way) is not opened: SQLite would read its
    header later than we do and, finding WAL, leave -wal and -shm in the agent's directory."""
    import sqlite3
    db = tmp_path / "opencode.db"
    db.write_bytes(b"")
    with pytest.raises(sqlite3.OperationalError, match="no database header yet"):
        os_.sqlite_ro(str(db))
    with pytest.raises(sqlite3.OperationalError):
        os_.sqlite_ro(str(tmp_path / "missing.db"))
    assert sorted(os.listdir(str(tmp_path))) == ["opencode.db"]


# -- stat polling (OPENSESSIONS_WATCH=poll, or a directory inotify cannot watch) ---------------------


class FakeServer(object):
    def __init__(self):
        self.loop = FakeLoop()
        self.after = 0

    def after_watchers(self):
        self.after += 1


def _watchers(tmp_path):
    server = FakeServer()
    w = os_.AgentWatchers(server, {"HOME": str(tmp_path / "home"), "OPENSESSIONS_WATCH": "poll"})
    return server, w


def _scan(server):
    """Run the one scan that is due, as the event loop would."""
    assert len(server.loop.timers) == 1, server.loop.timers
    _, fn, args = server.loop.timers.pop()
    fn(*args)


def test_poll_mode_survives_a_failing_handler_and_reports_deletions(tmp_path, capsys):
    server, w = _watchers(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    seen = []

    def broken(directory, name, mask):
        raise ValueError("a bug in one handler")

    def record(directory, name, mask):
        seen.append((name, mask & (os_.IN_CREATE | os_.IN_MODIFY | os_.IN_DELETE)))
    w.poll_dir(str(a), broken)
    w.poll_dir(str(b), record)
    (a / "x.json").write_text("{}")
    (b / "y.json").write_text("{}")
    _scan(server)
    assert seen == [("y.json", os_.IN_CREATE)]
    assert "a bug in one handler" in capsys.readouterr().err
    (b / "y.json").write_text("{} ")
    _scan(server)  # still scanning after the failure: rescheduled every time
    assert seen[-1] == ("y.json", os_.IN_MODIFY)
    (b / "y.json").unlink()
    _scan(server)
    assert seen[-1] == ("y.json", os_.IN_DELETE)
    _scan(server)
    assert len(seen) == 3 and server.after == 3  # a scan that finds nothing tells the server nothing


def test_poll_mode_reschedules_even_when_after_watchers_fails(tmp_path, capsys):
    server, w = _watchers(tmp_path)
    w.poll_dir(str(tmp_path), lambda *a: None)

    def boom():
        raise RuntimeError("apply step failed")
    server.after_watchers = boom
    (tmp_path / "one").write_text("")
    _scan(server)
    (tmp_path / "two").write_text("")
    _scan(server)
    assert capsys.readouterr().err.count("RuntimeError: apply step failed") == 2


def test_a_failed_inotify_watch_falls_back_to_polling_that_directory(tmp_path, capsys):
    import errno
    server, w = _watchers(tmp_path)

    class NoWatchesLeft(object):
        fd = -1

        def add_watch(self, path, mask):
            raise OSError(errno.ENOSPC, "No space left on device")
    w.inotify = NoWatchesLeft()
    d = tmp_path / "sessions"
    d.mkdir()
    seen = []
    w.watch_dir(str(d), lambda directory, name, mask: seen.append((name, mask & os_.IN_DELETE)))
    w.watch_dir(str(tmp_path / "missing" / "dir"), lambda *a: seen.append(a))
    assert set(w.polled_dirs) == {str(d), str(tmp_path / "missing" / "dir")} and not w.pending_dirs
    assert "scanning it by stat" in capsys.readouterr().err
    (d / "1.json").write_text("{}")
    _scan(server)
    (d / "1.json").unlink()
    _scan(server)
    assert seen == [("1.json", 0), ("1.json", os_.IN_DELETE)]
