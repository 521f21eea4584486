"""The preview pushed when its pane prints: the control client's command answers and %output lines
(parsed from bytes as tmux 3.3a writes them), the PreviewFeed's reads (coalesced, one under way at a
time, a pane elsewhere read on a timer), and GET /api/preview?follow=1 on a real tmux."""
import json
import os
import socket
import threading
import time

import pytest

import opensessions as os_
from conftest import agent_shell, requires_tmux, retry_until


# -- the control client: answers in order, a pane's text never ends an answer ------------------------------

class Pipe(object):
    """A fake tmux -C process: what it 'prints' is written to a real pipe the client reads."""

    def __init__(self):
        r, w = os.pipe()
        os.set_blocking(r, False)
        self.stdout = os.fdopen(r, "rb", buffering=0)
        self._w = w
        self.stdin = self
        self.sent = []

    def write(self, data):
        self.sent.append(data.decode().rstrip("\n"))

    def flush(self):
        pass

    def prints(self, text):
        os.write(self._w, text.encode())


def control(on_output=None):
    changes = []
    c = os_.ControlClient(None, None, {}, lambda delay: changes.append(delay), lambda: changes.append("exit"),
                          on_output=on_output)
    c.proc = Pipe()
    return c, changes


def test_answers_come_back_in_order_and_a_pane_line_like_end_does_not_end_one():
    c, _ = control()
    got = []
    c.send("capture-pane -p -t %1", lambda ok, lines: got.append((ok, lines)))
    c.send("bad-command", lambda ok, lines: got.append((ok, lines)))
    c.proc.prints("%begin 1700000000 7 0\n%end 1700000000 7 0\n"  # the attach's own answer: not ours
                  "%begin 1700000000 8 1\n$ printf '%end 1700000000 9 1\\n'\n%end 1700000000 9 1\n"
                  "%exit\n%session-changed $9 fake\n%end 1700000000 8 1\n"
                  "%begin 1700000000 10 1\nunknown command: bad-command\n%error 1700000000 10 1\n")
    c._on_readable()
    assert got == [(True, ["$ printf '%end 1700000000 9 1\\n'", "%end 1700000000 9 1", "%exit",
                           "%session-changed $9 fake"]),  # the pane's text, whole: nothing acted on
                   (False, ["unknown command: bad-command"])]
    assert c.session is None  # the forged %session-changed inside the answer changed nothing


def test_output_of_a_pane_and_a_pause_reach_the_feed():
    seen = []
    c, changes = control(on_output=lambda pane, paused=False: seen.append((pane, paused)))
    c.proc.prints("%session-changed $3 web\n%output %5 hello\\015\\012\n%extended-output %5 120 : more\n"
                  "%pause %5\n%layout-change @1 abc\n")
    c._on_readable()
    assert seen == [("%5", False), ("%5", False), ("%5", True)]
    assert c.session == "$3"
    assert c.proc.sent[0].startswith("refresh-client -B 'os-panes::")  # subscribed once attached
    assert changes == [0.005]


def test_follow_attaches_to_the_panes_session_and_pauses_the_others():
    c, _ = control()
    c.session = "$1"
    assert c.follow("%7", "$2", ["%6", "%8", "not-a-pane"])
    assert c.proc.sent == ["switch-client -t '$2'", "refresh-client -f 'pause-after=2,!no-output'",
                           "refresh-client -A '%7:continue' -A '%6:pause' -A '%8:pause'"]
    c.proc.sent = []
    c.session = "$2"
    assert c.follow("%8", "$2", ["%6", "%7"])  # another pane of the same session: no switch, no flag change
    assert c.proc.sent == ["refresh-client -A '%8:continue' -A '%6:pause' -A '%7:pause'"]
    c.unfollow()
    assert c.proc.sent[-1] == "refresh-client -f no-output" and c.following is None
    assert not c.follow("%8; kill-server", "$2", [])  # only pane ids go into a command


# -- the feed: reads coalesced, pushed only when changed -----------------------------------------------

class Loop(object):
    def __init__(self, clock):
        self.clock, self.timers = clock, []

    def call_later(self, delay, fn, *args):
        entry = [self.clock() + delay, fn, args, True]
        self.timers.append(entry)

        def cancel():
            entry[3] = False
        return cancel

    def run_until(self, t):
        while True:
            due = sorted((e for e in self.timers if e[3] and e[0] <= t), key=lambda e: e[0])
            if not due:
                break
            e = due[0]
            e[3] = False
            self.clock.t = max(self.clock.t, e[0])
            e[1](*e[2])
        self.clock.t = t


class Clock(object):
    t = 0.0

    def __call__(self):
        return self.t


class FakeControl(object):
    running = True

    def __init__(self):
        self.following, self.calls = None, []

    def follow(self, pane, session, others):
        self.following = (pane, session)
        self.calls.append(("follow", pane, session, tuple(others)))
        return True

    def unfollow(self):
        self.following = None
        self.calls.append(("unfollow",))

    def pause(self, panes):
        self.calls.append(("pause", tuple(panes)))

    def send(self, line):
        self.calls.append(("send", line))


SESSIONS = [{"id": "$1", "windows": [{"panes": [{"id": "%1"}, {"id": "%2"}]}]},
            {"id": "$2", "windows": [{"panes": [{"id": "%3"}]}]}]


def feed_world():
    clock = Clock()
    loop = Loop(clock)
    ctl = FakeControl()
    reads = []
    screens = {"%1": "one", "%2": "two", "%3": "three"}

    def capture(pane, callback):
        reads.append((clock.t, pane))
        pending.append(lambda: callback(screens[pane]))
    pending = []
    sessions = [dict(s) for s in SESSIONS]
    feed = os_.PreviewFeed(loop, ctl, capture, lambda: sessions, clock=clock)
    return feed, loop, clock, ctl, reads, pending, screens, sessions


def answer(pending):
    while pending:
        pending.pop(0)()


def test_a_burst_of_output_is_read_at_most_every_gap_and_only_changes_are_sent():
    feed, loop, clock, ctl, reads, pending, screens, _ = feed_world()
    docs = []
    feed.subscribe("%1", lambda screen: {"lines": [screen]}, docs.append)
    assert ctl.calls == [("follow", "%1", "$1", ("%2",))]  # its session followed, the other pane paused
    answer(pending)
    assert docs == [{"lines": ["one"]}]
    # 1,000 output notifications in one second: reads every PREVIEW_MIN_GAP at most
    for i in range(1000):
        clock.t = i / 1000.0
        screens["%1"] = "one %d" % i
        feed.on_output("%1")
        answer(pending)
        loop.run_until(clock.t)
    loop.run_until(1.2)
    answer(pending)
    n = len(reads)
    # ~10 reads for 1,000 notifications (after a first burst of PREVIEW_BURST: a typed line and its output)
    assert 10 <= n <= 12 + os_.PREVIEW_BURST, reads
    steady = reads[os_.PREVIEW_BURST + 1:]
    assert all(b[0] - a[0] >= os_.PREVIEW_MIN_GAP - 1e-9 for a, b in zip(steady, steady[1:])), reads
    assert docs[-1] == {"lines": ["one 999"]}  # the last output is never left unread
    # nothing printed: nothing read, nothing sent (the sentinel: the clock moves, the counts stay)
    before = (len(reads), len(docs))
    loop.run_until(60.0)
    assert (len(reads), len(docs)) == before
    feed.on_output("%2")  # a pane nobody previews (printed before its pause took effect): ignored
    assert len(reads) == before[0]


def test_output_during_a_read_asks_for_one_more_read():
    feed, loop, clock, ctl, reads, pending, screens, _ = feed_world()
    docs = []
    feed.subscribe("%1", lambda s: s, docs.append)
    clock.t = 1.0
    feed.on_output("%1")  # the first read is still under way
    feed.on_output("%1")
    assert len(reads) == 1
    pending.pop(0)()  # the first read's answer; output came meanwhile: one more read (the gap has passed)
    assert len(reads) == 2 and docs == ["one"]
    screens["%1"] = "changed"
    answer(pending)
    assert len(reads) == 2 and docs == ["one", "changed"]  # and no third: nothing printed since


def test_a_pane_in_another_session_is_read_on_a_timer_while_shown():
    feed, loop, clock, ctl, reads, pending, screens, _ = feed_world()
    a = feed.subscribe("%1", lambda s: s, lambda d: None)
    b = feed.subscribe("%3", lambda s: s, lambda d: None)  # the newest is followed
    answer(pending)
    assert ctl.following == ("%3", "$2")
    for i in range(1, 21):  # one second, its reads answered as they come
        loop.run_until(i * 0.05)
        answer(pending)
    polled = [t for t, p in reads if p == "%1"]
    assert polled == pytest.approx([0.0, 0.3, 0.6, 0.9])  # no output notifications: every PREVIEW_INTERVAL
    feed.unsubscribe(b)
    assert ctl.following == ("%1", "$1")  # back to following %1
    feed.unsubscribe(a)
    assert ctl.calls[-1] == ("unfollow",)
    n = len(reads)
    for i in range(1, 11):
        loop.run_until(1.0 + i)
        answer(pending)
    assert len(reads) == n  # nobody shows a preview: nothing is read


def test_new_panes_in_the_followed_session_are_paused():
    feed, loop, clock, ctl, reads, pending, screens, sessions = feed_world()
    feed.subscribe("%1", lambda s: s, lambda d: None)
    ctl.following = ("%1", "$1")
    feed.tmux_changed()
    sessions[0]["windows"][0]["panes"].append({"id": "%9"})
    feed.tmux_changed()
    assert ctl.calls[-1] == ("pause", ("%9",))


# -- the sidebar's stream: a refused preview is asked again on a change, not on a timer -----------------

class Refuser(object):
    """A fake server that refuses every preview (409, as when the thread's agent is not in front)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.paths = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        break
                    head += data
                self.paths.append(head.split(b" ")[1].decode())
                body = b'{"error": "no preview: the pane\'s foreground process (bash) is not claude"}'
                conn.sendall(b"HTTP/1.1 409 Conflict\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(body), body))

    def close(self):
        self.listener.close()


def test_a_refused_preview_is_asked_again_when_the_state_changes_not_every_second():
    """A selected thread whose agent exited (its pane shows a shell) was asked for every 1.5 s for as
    long as it stayed selected, each ask a read of the process table by the server (an idle popup
    cost the server 0.3 % of a core instead of 0.1 %). Now: once per change of the state."""
    server = Refuser()
    stream = os_.PreviewStream(lambda: server.port)
    stream.refused_gap, stream.refused_retry = 0, 3600  # nothing but a poke or another path asks again
    try:
        stream.want("/api/preview?thread=a&follow=1")
        got = retry_until(stream.take)
        assert "not claude" in got[1]["error"] and server.paths == ["/api/preview?thread=a&follow=1"]
        stream.poke()  # a new /events snapshot: asked once more
        retry_until(lambda: len(server.paths) == 2)
        stream.want("/api/preview?thread=b&follow=1")  # the sentinel: another thread selected
        retry_until(lambda: len(server.paths) == 3)
        assert server.paths == ["/api/preview?thread=a&follow=1"] * 2 + ["/api/preview?thread=b&follow=1"]
    finally:
        stream.close()
        server.close()


# -- a real tmux: the stream follows its pane ----------------------------------------------------------

class PreviewReader(object):
    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path).encode())
        self.docs = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        buf = b""
        while True:
            try:
                d = self.sock.recv(65536)
            except OSError:
                return
            if not d:
                return
            buf += d
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        self.docs.append((time.monotonic(), json.loads(line[6:])))

    def close(self):
        self.sock.shutdown(socket.SHUT_RDWR)  # (close alone, with our reader blocked in recv, sends no FIN)
        self.sock.close()


@requires_tmux
def test_the_preview_stream_follows_its_pane(env, tmux, server):
    # the thread's agent in front (a preview shows nothing else): a shell named claude
    pane = tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "main", agent_shell(env)).strip()
    code, _ = server.post("/api/agent-event", {"agent": "claude", "status": "running", "paneId": pane,
                                               "threadId": "2f2a81ee-c6fd-4a36-a1f4-f1ee51347b23"})
    assert code in (202, 204)
    retry_until(lambda: any(t["pane"] == pane for s in server.state()["sessions"] for t in s["threads"]))
    reader = PreviewReader(server.port, "/api/preview?thread=2f2a81ee-c6fd-4a36-a1f4-f1ee51347b23&lines=5&follow=1")
    try:
        retry_until(lambda: reader.docs, timeout=10)
        assert reader.docs[0][1]["pane"] == pane and reader.docs[0][1]["agent"] == "claude"
        for word in ("alpha", "beta"):  # (how soon: bench/run.py --only preview)
            tmux.run("send-keys", "-t", pane, "echo marker-%s" % word, "Enter")
            retry_until(lambda: [t for t, d in reader.docs if any("marker-%s" % word == l for l in d["lines"])],
                        timeout=10)
        health = json.loads(server.get("/health")[1])
        assert health["previews"]["followed"] == pane and health["previews"]["shown"] == 1  # pushed, not polled
        # nothing printed, no doc: once the shell's prompt after the echo is shown, the next doc is the
        # sentinel's (the feed's reads of a quiet pane, none, are held by the injected-clock tests above)
        retry_until(lambda: reader.docs[-1][1]["lines"][-1].strip() not in ("marker-beta", "")
                    and "echo marker-beta" not in reader.docs[-1][1]["lines"][-1], timeout=10)
        n = len(reader.docs)
        tmux.run("send-keys", "-t", pane, "echo sentinel", "Enter")
        retry_until(lambda: any("sentinel" in l for d in reader.docs[n:] for l in d[1]["lines"]))
        assert all("sentinel" in " ".join(d["lines"]) or "echo sentinel" in " ".join(d["lines"])
                   for _, d in reader.docs[n:])
    finally:
        reader.close()
    # the client gone: the preview is no longer shown, nothing followed
    retry_until(lambda: {k: v for k, v in json.loads(server.get("/health")[1])["previews"].items() if k != "reads"}
                == {"shown": 0, "followed": None})



def sidebar_over_thread(tmux, server, status):
    """Session "work" (160x50) whose pane holds claude thread t1 "fix login" in `status`, and the
    sidebar shown beside it, drawn with the thread -> (the work pane, the sidebar pane)."""
    from test_sidebar import sidebars, screen
    tmux.run("resize-window", "-t", "=work", "-x", "160", "-y", "50")
    work = retry_until(lambda: server.session("work"))["windows"][0]["panes"][0]["id"]
    assert server.post("/api/agent-event", {"agent": "claude", "status": status, "threadId": "t1", "paneId": work,
                                            "threadName": "fix login"})[0] in (202, 204)
    assert server.cli("toggle").returncode == 0
    sb = retry_until(lambda: [p["pane"] for p in sidebars(tmux, "work")], timeout=10)[0]
    retry_until(lambda: "fix login" in screen(tmux, sb), timeout=10)
    return work, sb


@requires_tmux
def test_the_sidebar_shows_what_its_previewed_pane_prints(env, tmux, server):
    from test_sidebar import sidebars, screen
    tmux.new_session("work", command=agent_shell(env))  # the thread's agent in front: a shell named claude
    work, sb = sidebar_over_thread(tmux, server, "running")
    tmux.run("send-keys", "-t", sb, "j")  # the thread selected: its pane previewed under the list
    for word in ("first", "second"):
        tmux.run("send-keys", "-t", work, "echo printed-%s" % word, "Enter")
        retry_until(lambda: any(l.strip() == "printed-%s" % word for l in screen(tmux, sb).splitlines()), timeout=10,
                    message="the sidebar did not show printed-%s:\n%s" % (word, screen(tmux, sb)))
    health = json.loads(server.get("/health")[1])["previews"]
    assert health["followed"] == work and health["shown"] >= 1


@requires_tmux
def test_a_pushed_preview_stops_showing_the_pane_once_the_agent_is_not_in_front(env, tmux, server):
    """Each pushed screen is looked at as a one-off preview is: after the agent gives the pane to
    another program, the stream says why and shows none of that program's screen."""
    pane = tmux.run("new-window", "-d", "-P", "-F", "#{pane_id}", "-t", "main", agent_shell(env)).strip()
    tid = "3f2a81ee-c6fd-4a36-a1f4-f1ee51347b23"
    assert server.post("/api/agent-event", {"agent": "claude", "status": "running", "paneId": pane,
                                            "threadId": tid})[0] in (202, 204)
    retry_until(lambda: any(t["pane"] == pane for s in server.state()["sessions"] for t in s["threads"]))
    reader = PreviewReader(server.port, "/api/preview?thread=%s&lines=5&follow=1" % tid)
    try:
        retry_until(lambda: reader.docs, timeout=10)
        assert not reader.docs[-1][1].get("error")
        tmux.run("send-keys", "-t", pane, "exec cat", "Enter")  # cat, not the agent, is in front now
        retry_until(lambda: (tmux.run("display-message", "-p", "-t", pane, "#{pane_current_command}").strip()
                             == "cat"), timeout=10)
        tmux.run("send-keys", "-t", pane, "secret-after-exit", "Enter")
        doc = retry_until(lambda: [d for _, d in reader.docs if d.get("error")], timeout=10)[-1]
        assert "no preview" in doc["error"] and doc["lines"] == []
        assert not any("secret-after-exit" in l for _, d in reader.docs for l in d["lines"])
    finally:
        reader.close()


@requires_tmux
def test_the_sidebar_shows_the_preview_once_the_agent_comes_back_to_the_pane(env, tmux, server):
    """Refused while a shell is in front; the agent started in the pane changes the state, and that
    change (not a timer: the refused preview is asked again after 30 s otherwise) shows its screen."""
    from test_sidebar import sidebars, screen
    tmux.new_session("work")
    work, sb = sidebar_over_thread(tmux, server, "done")
    tmux.run("send-keys", "-t", sb, "j")  # the thread selected: its pane's preview is refused (a shell)
    retry_until(lambda: "no preview: the pane's" in screen(tmux, sb), timeout=10)
    tmux.run("send-keys", "-t", work, "exec %s" % agent_shell(env), "Enter")
    tmux.run("send-keys", "-t", work, "echo back-in-front", "Enter")
    retry_until(lambda: any(l.strip() == "back-in-front" for l in screen(tmux, sb).splitlines()), timeout=10)
