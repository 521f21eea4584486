"""Server's parts alone: AgentExits (pidfds, or a 1 s timer where there are none), StateFile, the
control-mode client, the store's publish and metadata rules, the unseen rule."""
import json
import os
import subprocess
import sys

import pytest

import opensessions as os_
from conftest import PYTHON


class FakeLoop(object):
    def __init__(self):
        self.timers, self.readers, self.posted = [], {}, []
        self.now = 0.0

    def clock(self):
        return self.now

    def call_later(self, delay, fn, *args):
        self.timers.append((delay, fn, args))

    def post(self, fn, *args):
        self.posted.append((fn, args))

    def add_reader(self, fd, fn):
        self.readers[fd] = fn

    def remove_reader(self, fd):
        self.readers.pop(fd, None)


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_agent_exits_without_pidfds_looks_every_second_while_there_are_pids():
    loop, exited, want = FakeLoop(), [], set()
    watch = os_.AgentExits(loop, lambda: set(want), exited.append)
    watch._pidfd_ok = False  # an older kernel, or macOS
    watch.sync()
    assert loop.timers == []  # nothing to watch: no timer
    proc = _sleeper()
    try:
        want.add(proc.pid)
        watch.sync()
        watch.sync()
        assert len(loop.timers) == 1 and loop.timers[0][0] == 1.0  # one timer, however often synced
        loop.timers.pop()[1]()
        assert exited == [] and len(loop.timers) == 1  # alive: looks again in a second
        proc.kill()
        proc.wait()
        loop.timers.pop()[1]()
        assert exited == [proc.pid] and loop.timers == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_agent_exits_with_pidfds_reads_one_per_pid_and_closes_the_unwanted():
    if not hasattr(os, "pidfd_open"):
        return
    loop, exited, want = FakeLoop(), [], set()
    watch = os_.AgentExits(loop, lambda: set(want), exited.append)
    proc = _sleeper()
    try:
        want.add(proc.pid)
        watch.sync()
        assert len(loop.readers) == 1 and loop.timers == []
        fd, fn = list(loop.readers.items())[0]
        fn()
        assert exited == [proc.pid]
        want.clear()
        watch.sync()
        assert loop.readers == {}
        try:
            os.fstat(fd)
            closed = False
        except OSError:
            closed = True
        assert closed
    finally:
        proc.kill()
        proc.wait()


def test_state_file_round_trip_and_corrupt_file_kept(tmp_path):
    loop = FakeLoop()
    store = os_.Store(lambda: 1000.0)
    path = str(tmp_path / "state" / "state-x.json")
    sf = os_.StateFile(path, store, loop)
    assert sf.load() == {} and store.threads == {}
    store.metadata["s"] = {"status": {"text": "hi", "tone": "neutral"}, "progress": None, "logs": []}
    store.threads[("claude", "t1")] = os_.Thread("claude", "t1", title="a title", status="done", cwd="/w")
    sf.schedule_save()
    assert sf.pending and loop.timers[0][0] == os_.SAVE_QUIET
    sf.save_now()
    assert not sf.pending
    again = os_.Store(lambda: 1000.0)
    data = os_.StateFile(path, again, loop).load()
    assert isinstance(data, dict) and "metadata" in data
    t = again.threads[("claude", "t1")]
    assert (t.title, t.status, t.cwd) == ("a title", "done", "/w")
    assert again.metadata["s"]["status"] == store.metadata["s"]["status"]
    with open(path, "w") as f:
        f.write("{not json")
    assert os_.StateFile(path, os_.Store(lambda: 1000.0), loop).load() == {}
    assert os.path.exists(path + ".corrupt") and not os.path.exists(path)


def test_stop_control_kills_a_client_that_ignores_sigterm(capsys):
    proc = subprocess.Popen([PYTHON, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                             "print('ready', flush=True); time.sleep(60)"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout.readline() == b"ready\n"

    class Loop(object):
        def remove_reader(self, fd):
            pass

    control = os_.ControlClient(None, Loop(), {}, None, None)
    control.proc = proc
    control.stop(grace=0.2)
    assert control.proc is None and not control.running
    assert proc.poll() == -9  # killed, not left running
    assert "ignored SIGTERM" in capsys.readouterr().err


def test_rule_publish_skips_when_nothing_changed():
    store = os_.Store(clock=lambda: 1000.0)
    assert store.publish() is True
    version, doc, body = store.published
    store.touch()  # marked dirty, but the document is the same
    assert store.publish() is False
    assert store.version == version and store.published[1] is doc  # readers are not woken for nothing
    store.ui = dict(store.ui, width=store.ui.get("width", 30) + 1)
    store.touch()
    assert store.publish() is True and store.version == version + 1


def _bare_server(tmp_path, clock=lambda: 1000.0):
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path)}
    return os_.Server(os_.Tmux(str(tmp_path / "no.sock")), 0, False, env, clock=clock)


def test_rule_metadata_is_evicted_past_the_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(os_, "MAX_METADATA_SESSIONS", 3)
    s = _bare_server(tmp_path)
    try:
        s.store.sessions = [{"name": "live"}]
        for name in ("live", "gone-a", "gone-b"):
            s.api.api_set_status({"session": name, "text": "x"})
        assert len(s.store.metadata) == 3
        s.api.api_set_status({"session": "new", "text": "y"})
        # full: the metadata of sessions that no longer exist goes; a live session's stays
        assert set(s.store.metadata) == {"live", "new"}
    finally:
        s.loop.close()


def test_rule_an_active_status_clears_unseen(tmp_path):
    s = _bare_server(tmp_path)
    try:
        s.apply_thread_update("claude", "t1", status="running", alive=True)
        s.publish()
        t = s.apply_thread_update("claude", "t1", status="done")
        s.publish()
        assert t.unseen  # finished while nobody looked
        for active in os_.ACTIVE_STATUSES:
            s.apply_thread_update("claude", "t1", status="done")
            s.publish()
            assert t.unseen
            s.apply_thread_update("claude", "t1", status=active)
            s.publish()
            assert not t.unseen, active  # working again: what it finished before is old news
    finally:
        s.loop.close()


def test_state_file_keeps_subagents_and_reads_the_older_hidden_key(tmp_path):
    """A subagent thread is saved as "subagent"; a file from before the rename says "hidden"."""
    loop = FakeLoop()
    path = str(tmp_path / "state-x.json")
    store = os_.Store(lambda: 1000.0)
    store.threads[("opencode", "ses_a")] = os_.Thread("opencode", "ses_a", subagent=True, updated_at=1000 * 1000)
    sf = os_.StateFile(path, store, loop)
    sf.save_now()
    with open(path) as f:
        saved = json.load(f)["threads"][0]
    assert saved["subagent"] is True and "hidden" not in saved
    legacy = {k: v for k, v in saved.items() if k != "subagent"}
    with open(path, "w") as f:
        json.dump({"threads": [dict(legacy, hidden=True)]}, f)
    again = os_.Store(lambda: 1000.0)
    os_.StateFile(path, again, loop).load()
    assert again.threads[("opencode", "ses_a")].subagent is True


def test_the_api_needs_only_its_store_and_an_api_host():
    """Api is given a store, a clock, the tmux gateway and an ApiHost: no Server behind it."""
    store = os_.Store(lambda: 1000.0)
    calls = []
    host = os_.ApiHost(
        publish=lambda: calls.append("publish"), refresh=lambda: calls.append("refresh"),
        pane_of_pid=lambda pid: calls.append(("pane of", pid)),
        update_thread=lambda agent, tid, **f: calls.append(("update", agent, tid, f["status"])),
        relink=lambda: calls.append("relink"), notify=lambda *a: calls.append(("notify",) + a),
        save_state=lambda: calls.append("save"), change_ui=lambda change: calls.append(("ui", change)))
    api = os_.Api(store, lambda: 1000.0, None, host)
    body = {"agent": "claude", "status": "running", "threadId": "t1", "pid": 4242}
    assert api.apply_and_publish("api_agent_event", body) is False  # no session known
    assert calls == [("pane of", 4242), "refresh", ("update", "claude", "t1", "running"), "relink", "publish"]
    del calls[:]
    api.apply_and_publish("api_mute", {"session": "s"})
    assert calls == [("ui", {"muted": ["s"]}), "publish"]


def test_a_request_naming_what_tmux_just_made_reads_tmux_before_answering():
    """A session (or pane, or process) made a moment ago, before tmux's notification of it reached
    the server: the API reads tmux once at once (ApiHost.read_tmux) and matches it (no false 202)."""
    store = os_.Store(lambda: 1000.0)
    store.sessions = [{"id": "$0", "name": "main", "windows": []}]
    calls = []

    def read_tmux():
        calls.append("read")
        store.sessions = store.sessions + [{"id": "$1", "name": "fresh", "windows": [
            {"id": "@1", "panes": [{"id": "%7", "pid": 77, "sidebar": False}]}]}]
    host = os_.ApiHost(publish=lambda: None, read_tmux=read_tmux, refresh=lambda: calls.append("refresh"),
                       save_state=lambda: None, pane_of_pid=lambda pid: "%7" if calls else None,
                       update_thread=lambda *a, **f: None, relink=lambda: None)
    api = os_.Api(store, lambda: 1000.0, None, host)
    assert api.apply_and_publish("api_set_status", {"session": "fresh", "text": "deploying"}) is True
    assert calls == ["read"]
    assert api.apply_and_publish("api_set_status", {"session": "main", "text": "x"}) is True
    assert calls == ["read"]  # what the store knows is not read again
    for body in ({"paneId": "%7"}, {"pid": 77}):
        del calls[:]
        store.sessions = store.sessions[:1]
        event = dict({"agent": "claude", "status": "running", "threadId": "t1"}, **body)
        assert api.apply_and_publish("api_agent_event", event) is True, body
        assert calls == ["read"], body  # read now; no second read scheduled
    del calls[:]
    assert api.apply_and_publish("api_set_status", {"session": "nowhere", "text": "x"}) is False  # really not there
    assert calls == ["read"]


def test_the_api_hands_what_tmux_setup_read_to_the_preferences():
    """POST /ui {"fromTmux": …} (a re-source of ~/.tmux.conf) goes to the host's tmux_options, the
    rest of the body to change_ui; a fromTmux that is not an object is refused."""
    store = os_.Store(lambda: 1000.0)
    calls = []
    host = os_.ApiHost(publish=lambda: None, change_ui=lambda change: calls.append(("ui", change)),
                       tmux_options=lambda from_tmux: calls.append(("tmux", from_tmux)))
    api = os_.Api(store, lambda: 1000.0, None, host)
    api.apply_and_publish("api_ui", {"fromTmux": {"theme": "nord", "width": 40}})
    assert calls == [("tmux", {"theme": "nord", "width": 40})]
    del calls[:]
    api.apply_and_publish("api_ui", {"fromTmux": {}, "visible": True})
    assert calls == [("tmux", {}), ("ui", {"visible": True})]
    with pytest.raises(os_.ApiError) as e:
        api.api_ui({"fromTmux": "nord"})
    assert e.value.status == 400
    with pytest.raises(os_.ApiError):
        api.api_ui({"fromTmux": {"theme": "no-such-theme"}})


def test_the_preferences_apply_an_option_only_when_it_changed(tmp_path):
    """Preferences.apply_tmux_options keeps what it applied from tmux (tmux-options.json): the
    same options again leave a choice made since alone; an edited option is applied, saved in
    ui.json and handed to on_change."""
    store = os_.Store(lambda: 1000.0)
    changes = []
    ui_path, applied = str(tmp_path / "config" / "ui.json"), str(tmp_path / "state" / "tmux-options.json")
    prefs = os_.Preferences(store, ui_path, None, changes.append, applied)
    prefs.load()
    assert prefs.apply_tmux_options({"theme": "nord", "width": 40}) == {"theme": "nord", "width": 40}
    with open(applied) as f:
        assert json.load(f) == {"theme": "nord", "width": 40}
    prefs.change({"theme": "dracula"})  # picked with t
    assert prefs.apply_tmux_options({"theme": "nord", "width": 40}) == {}  # a restart, a re-source
    assert store.ui["theme"] == "dracula"
    assert prefs.apply_tmux_options({"theme": "gruvbox-dark", "width": 40}) == {"theme": "gruvbox-dark"}
    with open(ui_path) as f:
        assert json.load(f)["theme"] == "gruvbox-dark"
    assert changes == [{"theme": "nord", "width": 40}, {"theme": "dracula"}, {"theme": "gruvbox-dark"}]
    # a broken memory is said and every option applied again (nothing lost: it is rewritten)
    with open(applied, "w") as f:
        f.write("{not json")
    prefs.change({"theme": "dracula"})
    assert prefs.apply_tmux_options({"theme": "gruvbox-dark"}) == {"theme": "gruvbox-dark"}
    with open(applied) as f:
        assert json.load(f) == {"theme": "gruvbox-dark"}
