"""Hostile input, the HTTP / Store / security part: nothing in a request, a state file or a hook payload
crashes the server, hangs it, or reaches another user."""
import json
import os
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

from conftest import PYTHON, SCRIPT, retry_until
import opensessions as os_


def raw_request(port, data, timeout=10):
    """Send raw bytes (HTTP/1.0 style: the server closes after answering) -> (status, body bytes)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        chunks = []
        while True:
            d = s.recv(65536)
            if not d:
                break
            chunks.append(d)
    finally:
        s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]) if head else None, body


def post_raw(port, path, text):
    """POST a body given as JSON text (so it can hold what json.dumps would not write)."""
    data = text.encode("utf-8")
    return raw_request(port, b"POST %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
                       % (path.encode(), len(data)) + data)


def strict_state(server):
    """/state must be UTF-8 and strict JSON (no NaN / Infinity)."""
    status, body = server.get("/state")
    assert status == 200, body

    def refuse(name):
        raise AssertionError("/state holds %s" % name)
    return json.loads(body.decode("utf-8"), parse_constant=refuse)


def session_threads(state, name):
    s = next(s for s in state["sessions"] if s["name"] == name)
    return s["threads"]


class FakeTmux(object):
    def __init__(self, socket_path):
        self.socket_path = socket_path


def bare_server(env, clock=time.time):
    """A Server object that is not started (no tmux, no port): for the store and its timers."""
    return os_.Server(FakeTmux(os.path.join(env.base, "tmux.sock")), environ=env.vars, clock=clock)


# -- lone surrogates ------------------------------------------------------------------------------

def test_lone_surrogates_in_api_strings_keep_the_server_up(server):
    lone = '"x\\ud83d"'
    assert post_raw(server.port, "/set-status", '{"session":"main","text":%s}' % lone)[0] == 204
    assert post_raw(server.port, "/log", '{"session":"main","message":%s,"source":%s}' % (lone, lone))[0] == 204
    assert post_raw(server.port, "/mute", '{"session":"\\udc00","muted":true}')[0] == 204
    assert post_raw(server.port, "/api/agent-event", '{"agent":"claude","status":"running","threadId":"t1",'
                    '"tmuxSession":"main","threadName":%s,"prompt":%s}' % (lone, lone))[0] == 204
    assert post_raw(server.port, "/notify", '{"message":%s}' % lone)[0] == 204
    state = strict_state(server)
    main = next(s for s in state["sessions"] if s["name"] == "main")
    assert main["metadata"]["status"]["text"] == "x\ufffd"
    assert main["metadata"]["logs"][-1]["message"] == "x\ufffd"
    assert [t["title"] for t in main["threads"]] == ["x\ufffd"]
    assert "\ufffd" in state["ui"]["muted"]
    # other requests still work, and the persisted state lets the server start again
    assert server.post("/set-status", {"session": "main", "text": "ok"})[0] == 204
    server.stop()
    again = server.start_another()
    assert strict_state(again)["ui"]["muted"] == ["\ufffd"]


def test_a_state_file_with_lone_surrogates_and_nan_still_loads(env, tmux, server):
    server.stop()
    path = os.path.join(env.home, ".local/state/opensessions",
                        "state-%s.json" % os_.socket_key(tmux.socket))
    # the state dir exists only if the stopped server saved on its way out (not when it had nothing
    # to save, or was killed after its grace under load): this test lays down its own file
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path, "w") as f:  # as an older version wrote it: escapes json.dumps allows, NaN, Infinity
        f.write('{"metadata": {"main": {"status": {"text": "a\\ud83d\\nb", "tone": "info"},'
                ' "progress": {"current": NaN, "total": Infinity, "percent": NaN, "label": null},'
                ' "logs": [{"message": "\\udc00", "tone": "info", "ts": 1}, {"message": 5}]}},'
                ' "threads": [{"agent": "claude", "id": "t\\ud800", "title": "\\ud83d\\r", "status": "done",'
                ' "alive": true, "session": "main", "attempt": Infinity, "updatedAt": 1e999}]}')
    again = server.start_another()
    state = strict_state(again)
    main = next(s for s in state["sessions"] if s["name"] == "main")
    assert main["metadata"]["status"]["text"] == "a\ufffd b"
    assert main["metadata"]["progress"] is None
    assert [e["message"] for e in main["metadata"]["logs"]] == ["\ufffd"]
    assert [(t["id"], t["title"], t["attempt"]) for t in main["threads"]] == [("t\ufffd", "\ufffd ", None)]


def test_titles_from_files_and_hooks_are_made_valid(env):
    srv = bare_server(env)
    # a transcript's custom-title (a parser's string field) reaches the store through one door
    srv.apply_thread_update("claude", "c1", title="cut \ud83d", detail="\udfff", cwd="/tmp/\ud800", status="done")
    assert srv.store.publish()
    doc = json.loads(srv.store.published[2].decode("utf-8"))
    assert doc["threads"][0]["title"] == "cut \ufffd"
    body = os_.hook_event("claude", {"hook_event_name": "UserPromptSubmit", "prompt": "emoji \ud83d",
                                     "session_id": "11111111-1111-4111-8111-111111111111"}, {})
    assert body["prompt"] == "emoji \ufffd"
    json.dumps(body).encode("utf-8")


# -- non-finite numbers, deep JSON ------------------------------------------------------------------

def test_non_finite_numbers_are_refused(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    status, body = post_raw(server.port, "/set-progress", '{"session":"main","current":1e999,"total":1e999}')
    assert status == 400 and b"finite" in body
    assert post_raw(server.port, "/set-progress", '{"session":"main","percent":-1e999}')[0] == 400
    status, body = post_raw(server.port, "/api/opencode-event",
                            '{"type":"session.status","properties":{"sessionID":"ses_dff0ffa93ffebtZJZGz5f4eDGC",'
                            '"status":{"type":"retry","attempt":1e999,"message":"rate limited"}}}')
    assert status in (202, 204), body
    state = strict_state(server)
    assert all(s["metadata"]["progress"] is None for s in state["sessions"])
    assert [t["attempt"] for t in state["threads"] if t["id"] == "ses_dff0ffa93ffebtZJZGz5f4eDGC"] == [None]


def test_state_is_written_without_nan(env):
    srv = bare_server(env)
    srv.store.metadata["m"] = {"status": None, "progress": {"percent": float("nan")}, "logs": []}
    srv.state_file.save_now()
    with open(srv.state_file.path) as f:
        text = f.read()
    assert "NaN" not in text and json.loads(text)["metadata"]["m"]["progress"] == {"percent": None}


def test_deeply_nested_json_is_a_400(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    status, body = post_raw(server.port, "/log", "[" * 60000)
    assert status == 400 and b"nested too deeply" in body
    assert server.get("/health")[0] == 200
    assert "RecursionError" not in server.log()


# -- connections: deadlines, caps, errors, one write ---------------------------------------------

@pytest.fixture
def quick_deadline_server(env, tmux):
    from conftest import ServerProc
    s = ServerProc(env, tmux, extra_env={"OPENSESSIONS_READ_DEADLINE": "1"})
    yield s
    s.stop()


def test_idle_and_trickling_connections_are_closed(quick_deadline_server):
    srv = quick_deadline_server
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    trickle = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    trickle.sendall(b"POST /log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
    t0 = time.monotonic()
    assert idle.recv(100) == b""  # closed by the server, not by our timeout
    assert trickle.recv(100) in (b"",)
    assert time.monotonic() - t0 < 15
    idle.close()
    trickle.close()
    # a keep-alive connection stays usable between requests within the deadline
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    for _ in range(3):
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
    s.close()
    assert srv.get("/health")[0] == 200


def test_connections_and_streams_are_capped(server):
    held = []
    try:
        for _ in range(os_.MAX_CONNECTIONS):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        status, body = raw_request(server.port, b"GET /health HTTP/1.0\r\n\r\n")
        assert status == 503 and b"too many connections" in body
    finally:
        for s in held:
            s.close()
    retry_until(lambda: server.get("/health")[0] == 200, timeout=10)
    streams = []
    try:
        for _ in range(os_.MAX_SSE_CLIENTS):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(12) == b"HTTP/1.1 200"
            streams.append(s)
        status, body = raw_request(server.port, b"GET /events HTTP/1.0\r\n\r\n")
        assert status == 503 and b"too many /events" in body
        assert server.get("/health")[0] == 200  # other requests still served
    finally:
        for s in streams:
            s.close()


def test_a_burst_of_connections_waits_in_the_listen_queue(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    """As many connections at once as the server takes (every sidebar reconnecting after a restart)
    fit in the listen queue: a full queue drops a SYN, and that client waits a second for its retry
    (500 at once took 7 s with a queue of 64)."""
    assert os_.http_classes()[0].request_queue_size >= os_.MAX_CONNECTIONS
    import shutil
    if shutil.which("ss"):  # the listening socket's own backlog (ss shows it as Send-Q)
        out = subprocess.run(["ss", "-ltnH", "sport = :%d" % server.port], stdout=subprocess.PIPE,
                             timeout=10).stdout.decode().split()
        assert int(out[2]) >= os_.MAX_CONNECTIONS, out


def test_a_reset_connection_logs_one_line(server):
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /log HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"se")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST while the server reads the body
    retry_until(lambda: "connection from port" in server.log(), timeout=10)
    assert "Traceback" not in server.log()
    assert server.get("/health")[0] == 200


def test_server_log_is_rotated(tmp_path):
    path = str(tmp_path / "server.log")
    saved = (os_._log_file, os_._log_path, os_.LOG_MAX_BYTES)
    try:
        os_.open_log(path, max_bytes=1000)
        for i in range(200):
            os_.log("line %d %s" % (i, "x" * 40))
        assert os.path.getsize(path) <= 1100 and os.path.getsize(path + ".1") <= 1100
        assert "line 199" in open(path).read()
    finally:
        os_._log_file.close()
        os_._log_file, os_._log_path, os_.LOG_MAX_BYTES = saved


def test_an_answer_with_a_body_is_one_write(env):
    """Headers and body in two writes wait ~40 ms for the client's delayed ACK (Nagle)."""
    Handler = os_.http_classes()[1]
    h = Handler.__new__(Handler)
    writes = []

    class Writer(object):
        def write(self, data):
            writes.append(bytes(data))

        def flush(self):
            pass
    h.wfile, h.request_version, h.command, h.close_connection = Writer(), "HTTP/1.1", "GET", False
    h.requestline = "GET /health HTTP/1.1"
    h._send(200, b'{"ok": true}')
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b'{"ok": true}')


def test_a_timer_whose_work_raises_runs_again(env, monkeypatch):
    srv = bare_server(env)

    def broken():
        raise OSError("netlink said no")
    srv.probes.has_proc = True  # the Linux path, through the server's injected probes
    monkeypatch.setattr(srv.probes, "listening", broken)
    with pytest.raises(OSError):
        srv.facts.ports_timer()
    assert [e[2] for e in srv.loop._timers] == [srv.facts.ports_timer]


# -- other users -----------------------------------------------------------------------------------

def _as_nobody(port):
    """Connect as uid 65534 in a forked child -> what the child read (b'' if closed)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"GET /state HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            os.write(w, data[:4096])
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while True:
        d = os.read(r, 65536)
        if not d:
            break
        out += d
    os.close(r)
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.getuid() != 0 or not sys.platform.startswith("linux"), reason="needs root to be another user")
def test_connections_from_other_users_are_refused(server):
    server.post("/set-status", {"session": "main", "text": "secret cwd"})
    answer = _as_nobody(server.port)
    assert answer.startswith(b"HTTP/1.1 403") and b"other users" in answer and b"secret" not in answer
    curl = subprocess.run(["curl", "-s", "http://127.0.0.1:%d/state" % server.port], stdout=subprocess.PIPE,
                          timeout=10)
    assert b"secret cwd" in curl.stdout  # plain curl by the same user needs nothing more


def test_peer_uid_is_read_from_the_kernel():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, addr = srv.accept()
    try:
        if sys.platform.startswith("linux"):
            assert os_.tcp_peer_uid(addr, a.getsockname()) == os.getuid()
        assert os_.tcp_peer_uid(("127.0.0.1", 1), ("127.0.0.1", 2), proc_root="/nonexistent") is None
    finally:
        for s in (a, c, srv):
            s.close()


def test_without_a_peer_uid_the_runtime_token_is_required(env, tmux):
    """Where the system cannot say who connected (macOS), clients send the runtime file's token."""
    from conftest import ServerProc
    srv = ServerProc(env, tmux, extra_env={"OPENSESSIONS_PEER_CHECK": "token"})
    try:
        token = srv.runtime.read()["token"]
        assert len(token) == 32
        status, body = srv.get("/state")
        assert status == 403 and b"X-Opensessions-Token" in body
        assert os_.Client(srv.port, token="0" * 32).request("GET", "/state")[0] == 403
        assert os_.Client(srv.port, token=token).request("GET", "/state")[0] == 200
        # our own CLI finds the token in the runtime file
        r = srv.cli("set-status", "main", "via token")
        assert r.returncode == 0, r.stderr
        state = json.loads(os_.Client(srv.port, token=token).request("GET", "/state")[1])
        assert next(s for s in state["sessions"] if s["name"] == "main")["metadata"]["status"]["text"] == "via token"
        assert os_.token_header("bad\r\nX: y") == ""
    finally:
        srv.stop()


# -- hooks and the runtime dir ---------------------------------------------------------------------

def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(5)
    s.setblocking(False)
    return s


def _accepted(listener):
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_hook_never_sends_a_prompt_to_a_port_nobody_vouched_for(env, tmux):
    trap = _listener()
    port = trap.getsockname()[1]
    payload = json.dumps({"session_id": "55555555-5555-4555-8555-555555555555", "hook_event_name": "UserPromptSubmit",
                          "prompt": "my secret prompt", "cwd": env.home})

    def hook(extra=None):
        vars_ = dict(env.vars, OPENSESSIONS_PORT=str(port), **(extra or {}))
        subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "hook", "claude"], input=payload.encode(), env=vars_,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20, check=True)
        return _accepted(trap)
    try:
        assert not hook()  # no runtime file: no fallback to OPENSESSIONS_PORT or 7391
        rt = os_.RuntimeFiles(tmux.socket, env.vars)
        os.makedirs(rt.dir, mode=0o700, exist_ok=True)
        with open(os.open(rt.info_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            json.dump({"pid": os.getpid(), "port": port}, f)
        assert not hook()  # a runtime file whose server holds no lock (dead)
        os.chmod(rt.info_path, 0o666)
        assert rt.read() is None  # a file others could have written is not read at all
    finally:
        trap.close()


def test_hook_reaches_a_live_server(server, env, tmux):
    payload = json.dumps({"session_id": "55555555-5555-4555-8555-555555555555", "hook_event_name": "UserPromptSubmit",
                          "prompt": "hello", "cwd": env.home})
    subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "hook", "claude"], input=payload.encode(), env=env.vars,
                   timeout=20, check=True)
    retry_until(lambda: any(t["title"] == "hello" for s in server.state()["sessions"] for t in s["threads"]))


def test_runtime_dir_under_tmpdir_is_checked(env, tmp_path):
    vars_ = {k: v for k, v in env.vars.items() if k != "XDG_RUNTIME_DIR"}
    tmpdir = str(tmp_path / "shared-tmp")
    os.makedirs(tmpdir)
    vars_["TMPDIR"] = tmpdir
    rdir = os_.runtime_dir(vars_)
    assert rdir == os.path.join(tmpdir, "opensessions-%d" % os.getuid())
    # someone made it a symlink to a directory of ours: never chmod through it
    target = str(tmp_path / "mine")
    os.makedirs(target)
    os.chmod(target, 0o755)
    os.symlink(target, rdir)
    with pytest.raises(os_.OpensessionsError):
        os_.ensure_private_dir(rdir)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    os.unlink(rdir)
    # our own dir, loose mode: fixed through its descriptor; a runtime file that is a symlink is not read
    os.makedirs(rdir, mode=0o755)
    os.chmod(rdir, 0o755)
    os_.ensure_private_dir(rdir)
    assert stat.S_IMODE(os.stat(rdir).st_mode) == 0o700
    rt = os_.RuntimeFiles("/tmp/x.sock", vars_)
    real = str(tmp_path / "elsewhere.json")
    with open(os.open(real, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        json.dump({"pid": os.getpid(), "port": 1}, f)
    os.symlink(real, rt.info_path)
    assert rt.read() is None
    os.unlink(rt.info_path)
    with open(os.open(rt.info_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        json.dump({"pid": os.getpid(), "port": 1}, f)
    assert rt.read() == {"pid": os.getpid(), "port": 1}
    os.chmod(rdir, 0o755)  # a directory others can list and (if it were theirs) replace files in
    assert rt.read() is None


# -- rows and scale --------------------------------------------------------------------------------

def test_control_characters_never_reach_a_sidebar_row(server):
    assert server.post("/set-status", {"session": "main", "text": "a\nb\rc\bd\te\x1b[31m\x85"})[0] == 204
    assert server.post("/log", {"session": "main", "message": "line1\nline2\u2028x", "source": "c\ti"})[0] == 204
    assert server.post("/api/agent-event", {"agent": "claude", "status": "waiting", "threadId": "t1",
                                            "tmuxSession": "main", "threadName": "t\ni", "detail": "d\re"})[0] == 204
    main = next(s for s in strict_state(server)["sessions"] if s["name"] == "main")
    assert main["metadata"]["status"]["text"] == "a b c d e [31m "
    assert main["metadata"]["logs"][-1]["message"] == "line1 line2 x"
    assert main["metadata"]["logs"][-1]["source"] == "c i"
    assert [(t["title"], t["detail"]) for t in main["threads"]] == [("t i", "d e")]


def test_threads_are_pruned(env):
    now = [1800000000.0]
    srv = bare_server(env, clock=lambda: now[0])
    srv.store.recent_ms = 3600 * 1000
    srv.apply_thread_update("claude", "old", status="done", alive=False)
    srv.apply_thread_update("claude", "old-unseen", status="done", alive=False)
    srv.store.threads[("claude", "old-unseen")].unseen = True
    srv.apply_thread_update("claude", "old-alive", status="running", alive=True)
    now[0] += 3601
    srv.apply_thread_update("claude", "new", status="done", alive=False)
    assert srv.prune_threads() == 1
    assert sorted(k[1] for k in srv.store.threads) == ["new", "old-alive", "old-unseen"]
    # a flood of live threads: the store stays under its cap, the newest are kept
    for i in range(os_.MAX_THREADS + 10):
        now[0] += 0.001
        srv.apply_thread_update("claude", "f%05d" % i, status="running", alive=True, session="main")
    assert len(srv.store.threads) <= os_.MAX_THREADS
    assert ("claude", "f%05d" % (os_.MAX_THREADS + 9)) in srv.store.threads
    assert ("claude", "old-unseen") in srv.store.threads  # unseen outlives seen ones


def test_a_session_lists_a_bounded_number_of_threads(server):
    for i in range(os_.MAX_SESSION_THREADS + 5):
        server.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": "t%03d" % i,
                                         "tmuxSession": "main"})
    threads = session_threads(strict_state(server), "main")
    assert len(threads) == os_.MAX_SESSION_THREADS
    assert "t%03d" % (os_.MAX_SESSION_THREADS + 4) in [t["id"] for t in threads]  # the newest are listed
    assert [t["updatedAt"] for t in threads] == sorted((t["updatedAt"] for t in threads), reverse=True)


def test_state_saves_are_debounced(env):
    srv = bare_server(env)
    t = [0.0]
    srv.loop.clock = lambda: t[0]
    writes = []
    srv.state_file.save_now = lambda: (writes.append(t[0]), setattr(srv.state_file, "pending", False))
    for i in range(100):  # a change every 0.1 s for 10 s
        t[0] = i * 0.1
        srv.state_file.schedule_save()
        while srv.loop._timers and srv.loop._timers[0][0] <= t[0]:
            entry = __import__("heapq").heappop(srv.loop._timers)
            entry[2](*entry[3])
    assert 1 <= len(writes) <= 3  # at most every SAVE_MAX_DELAY while changes go on, not every second
