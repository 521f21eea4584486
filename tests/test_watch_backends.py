"""The watch backends under the agents' watchers: the StatPoller (the macOS fallback and
OPENSESSIONS_WATCH=poll) and kqueue (macOS, the BSDs).

The poller is driven tick by tick with an injected clock (no sleeping): its cost is counted in stat
calls. kqueue cannot run on Linux: a fake select module replays the events a real kqueue would
send (a new file, an append, a rename, a delete) and the fd budget is spent on purpose. inotify
(Linux) takes its C library without starting a process."""
import os
import sys
import types

import pytest

import opensessions as os_

WEEK = 7 * 86400.0


class Clock(object):
    def __init__(self, now=None):
        import time
        self.now = time.time() if now is None else now

    def __call__(self):
        return self.now


def age(path, seconds, clock):
    """Make path look last changed `seconds` before the clock's now."""
    t = clock.now - seconds
    os.utime(path, (t, t))


def kinds(events):
    return [(name, mask & (os_.IN_CREATE | os_.IN_MODIFY | os_.IN_DELETE | os_.IN_ISDIR))
            for _h, _d, name, mask in events]


def ticks(poller, clock, n, step=1.0):
    """n ticks of one second each -> every event they reported."""
    out = []
    for _ in range(n):
        clock.now += step
        out.extend(poller.run())
    return out


def test_stat_interval_grows_with_idleness_and_stops_at_its_cap():
    si = os_.stat_interval
    assert si(0, 120) == si(59, 120) == 1.0
    assert si(600, 120) == 10.0 and si(3600, 120) == 60.0
    assert si(WEEK, 120) == 120.0 and si(WEEK, 5) == 5.0


def test_a_directory_is_listed_again_only_when_its_mtime_changes(tmp_path):
    clock = Clock()
    listed = []

    def listdir(path):
        listed.append(path)
        return os.listdir(path)
    d = tmp_path / "projects"
    d.mkdir()
    for i in range(50):
        (d / ("%02d.jsonl" % i)).write_text("{}\n")
        age(str(d / ("%02d.jsonl" % i)), WEEK, clock)
    age(str(d), WEEK, clock)
    p = os_.StatPoller(clock, listdir=listdir)
    p.add_dir(str(d), None)
    assert listed == [str(d)]  # the baseline
    assert ticks(p, clock, 30) == []  # nothing changed: no event
    assert listed == [str(d)]  # ... and never listed again
    (d / "new.jsonl").write_text("{}\n")
    events = ticks(p, clock, 5)
    assert kinds(events) == [("new.jsonl", os_.IN_CREATE)]
    assert len(listed) >= 2


def test_idle_files_cost_a_stat_every_two_minutes_active_ones_every_second(tmp_path):
    clock = Clock()
    d = tmp_path / "projects"
    d.mkdir()
    for i in range(1000):
        (d / ("%04d.jsonl" % i)).write_text("{}\n")
        age(str(d / ("%04d.jsonl" % i)), WEEK + i, clock)
    (d / "active.jsonl").write_text("{}\n")
    age(str(d), WEEK, clock)
    p = os_.StatPoller(clock)
    p.add_dir(str(d), None)
    ticks(p, clock, 200)  # past the first spread of looks
    before = p.stat_calls
    ticks(p, clock, 240)
    per_second = (p.stat_calls - before) / 240.0
    # 1000 idle files every 120 s (8.3/s), the active one and the directory ~1/s each while new
    assert per_second < 1000 / os_.STAT_IDLE_MAX + 4, per_second
    # the once active file went idle for 440 s (a look every ~7 s): an append is seen within that
    with open(str(d / "active.jsonl"), "a") as f:
        f.write("{}\n")
    events = ticks(p, clock, int(440 / 60) + 1)
    assert kinds(events) == [("active.jsonl", os_.IN_MODIFY)]
    # a file that changes is back to a look a second
    with open(str(d / "active.jsonl"), "a") as f:
        f.write("{}\n")
    assert kinds(ticks(p, clock, 1)) == [("active.jsonl", os_.IN_MODIFY)]


def test_an_append_to_a_file_idle_for_a_week_is_seen_late_unless_held(tmp_path):
    clock = Clock()
    d = tmp_path / "sessions"
    d.mkdir()
    old = d / "old.jsonl"
    old.write_text("{}\n")
    age(str(old), WEEK, clock)
    age(str(d), WEEK, clock)
    p = os_.StatPoller(clock)
    p.add_dir(str(d), None)
    ticks(p, clock, int(os_.STAT_IDLE_MAX) + 10)
    with open(str(old), "a") as f:
        f.write("{}\n")
    # unheld it is found within STAT_IDLE_MAX, not at once
    waited = 0
    seen = []
    while not seen and waited < os_.STAT_IDLE_MAX + 10:
        seen = ticks(p, clock, 1)
        waited += 1
    assert kinds(seen) == [("old.jsonl", os_.IN_MODIFY)] and waited <= os_.STAT_IDLE_MAX + 1
    ticks(p, clock, 400)  # idle again for minutes
    p.hold("agents", [str(old)])  # an agent process maps to it (or a hook named it)
    with open(str(old), "a") as f:
        f.write("{}\n")
    assert kinds(ticks(p, clock, 1)) == [("old.jsonl", os_.IN_MODIFY)]
    with open(str(old), "a") as f:
        f.write("{}\n")
    assert kinds(ticks(p, clock, 1)) == [("old.jsonl", os_.IN_MODIFY)]
    p.hold("agents", [])  # let go: it goes idle again, less and less often, down to the cap
    ticks(p, clock, int(os_.STAT_IDLE_MAX * 60) + 100)
    before = p.stat_calls
    ticks(p, clock, 600)
    assert p.stat_calls - before <= 600 / os_.STAT_IDLE_MAX + 600 / os_.DIR_IDLE_MAX + 2


def test_a_held_file_not_seen_yet_is_found_at_the_next_tick(tmp_path):
    """The agent starts on a conversation whose file it makes a moment later."""
    clock = Clock()
    d = tmp_path / "chats"
    d.mkdir()
    age(str(d), WEEK, clock)
    p = os_.StatPoller(clock)
    p.add_dir(str(d), None)
    ticks(p, clock, 400)  # the directory is idle: looked at every DIR_IDLE_MAX seconds
    target = d / "later.jsonl"
    p.hold("agents", [str(target)])
    target.write_text("{}\n")
    assert kinds(ticks(p, clock, 1)) == [("later.jsonl", os_.IN_CREATE)]


def test_renames_deletes_and_a_removed_directory_are_reported(tmp_path):
    clock = Clock()
    d = tmp_path / "reg"
    d.mkdir()
    (d / "1.json").write_text("{}")
    seen = []
    p = os_.StatPoller(clock)
    p.add_dir(str(d), lambda *a: None, live=True)
    os.rename(str(d / "1.json"), str(d / "2.json"))
    assert sorted(kinds(ticks(p, clock, 1))) == [("1.json", os_.IN_DELETE), ("2.json", os_.IN_CREATE)]
    tmp = d / ".2.json.tmp"
    tmp.write_text('{"a": 1}')
    os.rename(str(tmp), str(d / "2.json"))  # replaced whole (a registry rewritten atomically)
    events = kinds(ticks(p, clock, 2))
    assert ("2.json", os_.IN_CREATE) in events or ("2.json", os_.IN_MODIFY) in events
    (d / "2.json").unlink()
    assert kinds(ticks(p, clock, 1)) == [("2.json", os_.IN_DELETE)]
    (d / "3.json").write_text("{}")
    ticks(p, clock, 1)
    (d / "3.json").unlink()
    d.rmdir()
    assert kinds(ticks(p, clock, 1)) == [("3.json", os_.IN_DELETE)]
    d.mkdir()  # a missing directory is looked at each second until it is back
    (d / "4.json").write_text("{}")
    assert kinds(ticks(p, clock, 1)) == [("4.json", os_.IN_CREATE)]
    assert seen == []


def test_a_live_directorys_files_are_looked_at_each_second(tmp_path):
    """A registry rewritten in place (its directory does not change) is seen at the next tick."""
    clock = Clock()
    d = tmp_path / "sessions"
    d.mkdir()
    reg = d / "123.json"
    reg.write_text('{"status": "idle"}')
    age(str(reg), WEEK, clock)
    p = os_.StatPoller(clock)
    p.add_dir(str(d), None, live=True)
    ticks(p, clock, 300)
    with open(str(reg), "w") as f:
        f.write('{"status": "busy"}  ')
    assert kinds(ticks(p, clock, 1)) == [("123.json", os_.IN_MODIFY)]


# -- kqueue, with a fake that replays what the kernel would send ------------------------------------

NOTE_DELETE, NOTE_WRITE, NOTE_EXTEND, NOTE_RENAME = 0x1, 0x2, 0x4, 0x20  # macOS's values


class FakeKqueue(object):
    """select.kqueue() as the kernel would drive it: fds registered with EV_ADD get the events the
    test fires for their path; an fd that was never registered (or was closed) gets none."""

    def __init__(self, kmod):
        self.kmod = kmod
        self.r, self.w = os.pipe()
        self.queue = []

    def fileno(self):
        return self.r

    def control(self, changes, max_events, timeout=None):
        for ev in changes or ():
            assert ev.filter == self.kmod.KQ_FILTER_VNODE and ev.flags & self.kmod.KQ_EV_ADD
            self.kmod.registered[ev.ident] = ev.fflags
        out, self.queue = self.queue[:max_events], self.queue[max_events:]
        return out

    def close(self):
        os.close(self.r)
        os.close(self.w)


def fake_kmod():
    kmod = types.SimpleNamespace(KQ_FILTER_VNODE=-4, KQ_EV_ADD=0x1, KQ_EV_CLEAR=0x20, KQ_NOTE_DELETE=NOTE_DELETE,
                                 KQ_NOTE_WRITE=NOTE_WRITE, KQ_NOTE_EXTEND=NOTE_EXTEND, KQ_NOTE_RENAME=NOTE_RENAME,
                                 registered={}, queues=[])
    kmod.kevent = lambda ident, filter, flags, fflags: types.SimpleNamespace(ident=ident, filter=filter, flags=flags,
                                                                             fflags=fflags)

    def kqueue():
        kq = FakeKqueue(kmod)
        kmod.queues.append(kq)
        return kq
    kmod.kqueue = kqueue
    return kmod


class Loop(object):
    def __init__(self):
        self.readers, self.timers = {}, []

    def add_reader(self, fd, fn):
        self.readers[fd] = fn

    def remove_reader(self, fd):
        self.readers.pop(fd, None)

    def call_later(self, delay, fn, *args):
        self.timers.append((fn, args))
        return lambda: None


class Server(object):
    def __init__(self):
        self.loop = Loop()
        self.after = 0

    def after_watchers(self):
        self.after += 1


class KqWorld(object):
    """A WatchCore on the fake kqueue: fire(path, flags) is the kernel's event for a path's fd."""

    def __init__(self, tmp_path, budget=None):
        self.clock = Clock()
        self.kmod = fake_kmod()
        self.server = Server()
        self.core = os_.WatchCore(self.server, {"HOME": str(tmp_path / "home")}, clock=self.clock, kmod=self.kmod)
        if budget:
            self.core.kq_budget = budget
        inotify = os_.Inotify

        def no_inotify():
            raise OSError("inotify is not available")
        os_.Inotify = no_inotify  # as on macOS
        try:
            self.core.start()
        finally:
            os_.Inotify = inotify
        assert self.core.backend == "kqueue"
        self.kq = self.kmod.queues[0]
        self.events = []

    def handler(self, directory, name, mask):
        self.events.append((name, mask & (os_.IN_CREATE | os_.IN_MODIFY | os_.IN_DELETE | os_.IN_ISDIR)))

    def fire(self, path, fflags):
        """The kernel's event for path (nothing when path has no registered fd, as for real)."""
        wd = self.core.kq_paths.get(path)
        if wd is not None and wd in self.kmod.registered:
            self.kq.queue.append(types.SimpleNamespace(ident=wd, fflags=fflags & self.kmod.registered[wd]))
        self.server.loop.readers[self.kq.fileno()]()

    def tick(self, n=1):
        for _ in range(n):
            self.clock.now += 1
            (fn, args), = [t for t in self.server.loop.timers if t[0] == self.core._poll]
            self.server.loop.timers.remove((fn, args))
            fn(*args)

    def take(self):
        out, self.events = self.events, []
        return out


def test_kqueue_new_file_append_rename_delete(tmp_path):
    w = KqWorld(tmp_path)
    d = str(tmp_path / "projects")
    os.mkdir(d)
    w.core.watch_root(d, w.handler)
    assert d in w.core.kq_paths  # an agent's own directory: an fd, pinned
    assert w.kmod.registered[w.core.kq_paths[d]] == NOTE_WRITE | NOTE_DELETE | NOTE_RENAME
    # a new file: the directory's NOTE_WRITE; it is listed again; the new file gets an fd
    path = os.path.join(d, "a.jsonl")
    with open(path, "w") as f:
        f.write("{}\n")
    w.fire(d, NOTE_WRITE)
    assert w.take() == [("a.jsonl", os_.IN_CREATE)]
    assert path in w.core.kq_paths and path in w.core.poller.suspended
    assert w.kmod.registered[w.core.kq_paths[path]] == NOTE_WRITE | NOTE_EXTEND | NOTE_DELETE | NOTE_RENAME
    # an append: NOTE_EXTEND | NOTE_WRITE on the file
    with open(path, "a") as f:
        f.write("{}\n")
    w.fire(path, NOTE_WRITE | NOTE_EXTEND)
    assert w.take() == [("a.jsonl", os_.IN_MODIFY)] and w.server.after == 2
    # a rename: NOTE_RENAME on the file, NOTE_WRITE on the directory
    new = os.path.join(d, "b.jsonl")
    os.rename(path, new)
    w.fire(path, NOTE_RENAME)
    assert sorted(w.take()) == [("a.jsonl", os_.IN_DELETE), ("b.jsonl", os_.IN_CREATE)]
    assert path not in w.core.kq_paths  # its fd followed the old name: closed
    w.fire(d, NOTE_WRITE)
    assert w.take() == []  # already reported
    # a delete: NOTE_DELETE on the file
    w.core._kq_add(new, os_.KQ_FILE)
    os.unlink(new)
    w.fire(new, NOTE_DELETE)
    assert w.take() == [("b.jsonl", os_.IN_DELETE)] and new not in w.core.kq_paths
    # nothing is looked at by stat while kqueue follows it
    calls = w.core.poller.stat_calls
    w.tick(50)
    assert w.core.poller.stat_calls == calls and w.take() == []
    w.core.close()
    assert w.core.kqueue is None


def test_kqueue_fd_budget_spent_least_recently_active_go_back_to_polling(tmp_path):
    w = KqWorld(tmp_path, budget=4)
    reg = str(tmp_path / "sessions")
    d = str(tmp_path / "projects")
    os.mkdir(reg)
    os.mkdir(d)
    w.core.watch_root(reg, w.handler, live=True)
    w.core.watch_root(d, w.handler)
    assert len(w.core.kq_paths) == 2
    paths = [os.path.join(d, "%d.jsonl" % i) for i in range(6)]
    for i, p in enumerate(paths):
        with open(p, "w") as f:
            f.write("{}\n")
        w.fire(d, NOTE_WRITE)  # each new file takes an fd, the oldest ones give theirs back
        assert len(w.core.kq_paths) <= 4
    assert w.take() == [("%d.jsonl" % i, os_.IN_CREATE) for i in range(6)]
    assert reg in w.core.kq_paths and d in w.core.kq_paths  # pinned: never given back
    assert [p for p in paths if p in w.core.kq_paths] == paths[4:]
    assert all(p in w.core.poller.files and p not in w.core.poller.suspended for p in paths[:4])
    # an evicted file is still seen, by stat, at its next look
    with open(paths[0], "a") as f:
        f.write("{}\n")
    w.fire(paths[0], NOTE_EXTEND)  # no fd: the kernel sends nothing
    assert w.take() == []
    w.tick(2)
    assert w.take() == [("0.jsonl", os_.IN_MODIFY)]
    # ... and, active again, it takes back an fd from the least recently active
    assert paths[0] in w.core.kq_paths and len(w.core.kq_paths) == 4
    assert paths[4] not in w.core.kq_paths
    # activity keeps an fd: the file touched last is the last to go
    with open(paths[5], "a") as f:
        f.write("{}\n")
    w.fire(paths[5], NOTE_EXTEND)
    assert w.take() == [("5.jsonl", os_.IN_MODIFY)]
    w.core.hold("agents", [paths[1]])  # an agent maps to it: an fd
    assert paths[1] in w.core.kq_paths and paths[5] in w.core.kq_paths and paths[0] not in w.core.kq_paths
    w.core.close()


def test_kqueue_polls_idle_directories_and_promotes_them_when_they_change(tmp_path):
    w = KqWorld(tmp_path)
    root = str(tmp_path / "sessions")
    old = os.path.join(root, "2026", "01", "01")
    os.makedirs(old)
    age(old, 30 * 86400, w.clock)
    w.core.watch_root(root, w.handler)
    w.core.watch_dir(old, w.handler)
    assert root in w.core.kq_paths and old not in w.core.kq_paths  # idle for a month: polled
    rollout = os.path.join(old, "rollout-x.jsonl")
    with open(rollout, "w") as f:
        f.write("{}\n")
    w.tick(int(os_.DIR_IDLE_MAX) + 1)
    assert w.take() == [("rollout-x.jsonl", os_.IN_CREATE)]
    assert old in w.core.kq_paths and rollout in w.core.kq_paths
    w.core.close()


def test_kqueue_fd_budget_stays_well_under_the_fd_limit():
    assert os_.kqueue_fd_budget(256) == 64  # macOS's default ulimit -n
    assert os_.kqueue_fd_budget(100) == 25 and os_.kqueue_fd_budget(20) == 8
    assert os_.kqueue_fd_budget(1 << 20) == os_.KQUEUE_FD_BUDGET and os_.kqueue_fd_budget(-1) == os_.KQUEUE_FD_BUDGET


def test_the_c_library_is_found_without_a_child_process(monkeypatch):
    """inotify and malloc_trim come from the process's own C library: ctypes.util.find_library("c")
    runs `ldconfig -p` in a child (three of them in every server start)."""
    import subprocess
    started = []

    class NoChild(object):
        def __init__(self, *a, **kw):
            started.append(a)
            raise OSError("no child processes here")
    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    monkeypatch.setattr(subprocess, "Popen", NoChild)
    watcher = os_.Inotify()
    try:
        assert watcher.fd >= 0
    finally:
        watcher.close()
    os_.release_memory()
    assert started == []
