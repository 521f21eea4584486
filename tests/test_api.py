"""The HTTP API and live tmux state, against a real server process and a real private tmux: agent
events, metadata for sessions that do not exist yet, ui validation."""
import json
import os
import socket
import subprocess
import time

from hypothesis import HealthCheck, given, settings, strategies as st

import opensessions as os_
from conftest import retry_until


def raw_request(port, data, timeout=5):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    chunks = []
    while True:
        try:
            d = s.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        chunks.append(d)
    s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), head.decode(), body


def post_raw(port, path, body_bytes, headers=None):
    hdrs = {"Host": "127.0.0.1:%d" % port, "Content-Length": str(len(body_bytes)), "Connection": "close"}
    hdrs.update(headers or {})
    head = "POST %s HTTP/1.1\r\n%s\r\n\r\n" % (path, "\r\n".join("%s: %s" % kv for kv in hdrs.items() if kv[1] is not None))
    return raw_request(port, head.encode() + body_bytes)


def test_root_and_state_shape(server):
    status, body = server.get("/")
    assert status == 200 and body == b"opensessions server\n"
    st_ = server.state()
    assert st_["serverVersion"] == os_.__version__ and st_["version"] >= 1
    main = st_["sessions"][0]
    for key in ("id", "name", "created", "attached", "windows", "dir", "branch", "dirty", "ports",
                "state", "unseen", "threads", "metadata"):
        assert key in main
    assert main["name"] == "main" and main["dir"] == server.env.home
    assert main["windows"][0]["panes"][0]["cwd"] == server.env.home
    assert st_["threads"] == [] and st_["clients"] == []


def test_state_follows_tmux_changes(server, tmux, sse):
    events = sse(server.port)
    first = events.next()
    assert first["event"] == "state" and [s["name"] for s in first["data"]["sessions"]] == ["main"]
    tmux.new_session("work", cwd="/")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["main", "work"], timeout=2)
    tmux.run("rename-session", "-t", "=work", "renamed")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["main", "renamed"], timeout=2)
    tmux.run("new-window", "-t", "=renamed", "-n", "second")
    events.wait_for(lambda d: [w["name"] for w in d["sessions"][1]["windows"]] == ["bash", "second"]
                    or len(d["sessions"][1]["windows"]) == 2, timeout=2)
    tmux.run("kill-window", "-t", "=renamed:1")
    events.wait_for(lambda d: len(d["sessions"][1]["windows"]) == 1, timeout=2)
    tmux.run("kill-session", "-t", "=renamed")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["main"], timeout=2)


def test_cwd_change_is_seen_without_tmux_event(server, tmux, sse, tmp_path):
    target = str(tmp_path)
    events = sse(server.port)
    events.next()
    tmux.run("send-keys", "-t", "=main:0.0", "cd %s" % target, "Enter")
    # tmux's subscription reports it (at most once a second); no polling on our side
    events.wait_for(lambda d: d["sessions"][0]["dir"] == target, timeout=4)
    assert "command failed" not in server.log()  # the subscription was accepted (sent after attach)


def test_kill_session_hosting_control_client_keeps_following(server, tmux, sse):
    # the control client attached to "main" (the only session when the server started)
    events = sse(server.port)
    events.next()
    tmux.new_session("other")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["main", "other"], timeout=3)
    tmux.run("kill-session", "-t", "=main")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["other"], timeout=3)
    tmux.new_session("third")
    events.wait_for(lambda d: [s["name"] for s in d["sessions"]] == ["other", "third"], timeout=3)
    assert server.proc.poll() is None


def test_metadata_endpoints(server):
    p = server.post
    assert p("/set-status", {"session": "main", "text": "Deploying", "tone": "warn"}) == (204, None)
    assert p("/set-progress", {"session": "main", "current": 3, "total": 10, "label": "services"})[0] == 204
    assert p("/log", {"session": "main", "message": "Tests passed", "source": "ci", "tone": "success"})[0] == 204
    meta = server.session("main")["metadata"]
    assert meta["status"] == {"text": "Deploying", "tone": "warn"}
    assert meta["progress"]["percent"] == 30.0 and meta["progress"]["label"] == "services"
    assert meta["logs"][0]["message"] == "Tests passed" and meta["logs"][0]["source"] == "ci"
    assert p("/set-progress", {"session": "main", "percent": 80})[0] == 204
    assert server.session("main")["metadata"]["progress"]["percent"] == 80
    assert p("/set-progress", {"session": "main", "clear": True})[0] == 204
    assert p("/set-status", {"session": "main", "text": None})[0] == 204
    assert p("/clear-log", {"session": "main"})[0] == 204
    meta = server.session("main")["metadata"]
    assert meta == {"status": None, "progress": None, "logs": []}


def test_logs_capped_per_session(server):
    for i in range(55):
        assert server.post("/log", {"session": "main", "message": "m%d" % i + "x" * 600})[0] == 204
    logs = server.session("main")["metadata"]["logs"]
    assert len(logs) == 50 and logs[0]["message"].startswith("m5x") and len(logs[-1]["message"]) == 500


def test_notify_endpoint_logs_and_displays(server):
    assert server.post("/notify", {"session": "main", "message": "build done", "tone": "success"})[0] == 204
    logs = server.session("main")["metadata"]["logs"]
    assert logs[-1]["message"] == "build done" and logs[-1]["source"] == "notify"


def test_errors_are_json_with_reasons(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    port = server.port
    status, _, body = post_raw(port, "/set-status", b"{not json")
    assert status == 400 and "not valid JSON" in json.loads(body)["error"]
    status, _, body = post_raw(port, "/set-status", b"[1,2]")
    assert status == 400 and "object" in json.loads(body)["error"]
    status, _, body = post_raw(port, "/set-status", json.dumps({"session": "main", "text": "x", "tone": "loud"}).encode())
    assert status == 400 and "tone" in json.loads(body)["error"]
    status, _, body = post_raw(port, "/set-status", json.dumps({"session": 5, "text": "x"}).encode())
    assert status == 400 and "session" in json.loads(body)["error"]
    status, _, body = post_raw(port, "/set-status", b"\xff\xfe")
    assert status == 400
    status, _, body = post_raw(port, "/nope", b"{}")
    assert status == 404 and json.loads(body)["error"]
    status, head, body = raw_request(port, b"GET /set-status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status == 405 and "Allow: POST" in head and json.loads(body)["error"]
    status, head, _ = post_raw(port, "/state", b"{}")
    assert status == 405 and "Allow: GET" in head
    status, _, body = post_raw(port, "/log", b"x" * (64 * 1024 + 1))
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, _, body = raw_request(port, b"GET /nothing HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert status == 404
    # the server is still fine
    assert server.get("/")[0] == 200


def test_host_and_origin_are_refused(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    port = server.port
    status, _, body = post_raw(port, "/set-status", b'{"session":"main","text":"x"}', {"Host": "evil.example:%d" % port})
    assert status == 403 and "Host" in json.loads(body)["error"]
    status, _, body = post_raw(port, "/set-status", b'{"session":"main","text":"x"}', {"Origin": "http://localhost:3000"})
    assert status == 403
    status, _, _ = raw_request(port, b"GET /state HTTP/1.1\r\nHost: attacker.test\r\nConnection: close\r\n\r\n")
    assert status == 403
    assert server.session("main")["metadata"]["status"] is None


def test_agent_event_matches_pane_session_or_dir(server, tmux):
    pane = server.session("main")["windows"][0]["panes"][0]["id"]
    assert server.post("/api/agent-event", {"agent": "claude", "status": "running", "threadId": "t1",
                                            "threadName": "fix login", "paneId": pane})[0] == 204
    threads = server.session("main")["threads"]
    assert threads[0]["id"] == "t1" and threads[0]["pane"] == pane and threads[0]["status"] == "running"
    assert threads[0]["title"] == "fix login" and server.session("main")["state"] == "running"
    assert server.post("/api/agent-event", {"agent": "codex", "status": "done", "threadId": "t2",
                                            "tmuxSession": "main"})[0] == 204
    assert server.post("/api/agent-event", {"agent": "amp", "status": "waiting", "threadId": "t3",
                                            "projectDir": server.env.home + "/sub"})[0] == 204
    s = server.session("main")
    assert {t["id"] for t in s["threads"]} == {"t1", "t2", "t3"}
    assert s["state"] == "waiting" and s["unseen"] is True  # nobody is attached: unseen
    status, body = server.post("/api/agent-event", {"agent": "codex", "status": "done", "threadId": "t9",
                                                    "tmuxSession": "nope"})
    assert status == 202 and body == {"matched": False}
    assert any(t["id"] == "t9" for t in server.state()["threads"])


def test_metadata_survives_restart(server, env, tmux):
    assert server.post("/set-status", {"session": "main", "text": "kept", "tone": "info"})[0] == 204
    server.stop()
    again = server.start_another()
    assert again.session("main")["metadata"]["status"] == {"text": "kept", "tone": "info"}


def test_second_server_is_refused(server, env, tmux):
    p = subprocess.run([os_.sys.executable, os.path.join(os.path.dirname(os_.__file__), "opensessions.py"),
                        "-S", tmux.socket, "server", "--port", "0"], env=server.vars,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
    assert p.returncode == 1
    assert b"already runs" in p.stderr and str(server.proc.pid).encode() in p.stderr
    assert server.get("/")[0] == 200


def test_port_in_use_is_a_clear_error(server, env, tmux):
    other = os.path.join(env.base, "other.sock")
    subprocess.run(["tmux", "-S", other, "-f", "/dev/null", "new-session", "-d"], env=env.vars, check=True)
    try:
        p = subprocess.run([os_.sys.executable, os.path.join(os.path.dirname(os_.__file__), "opensessions.py"),
                            "-S", other, "server", "--port", str(server.port)], env=server.vars,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
        assert p.returncode == 1 and b"cannot listen" in p.stderr and str(server.port).encode() in p.stderr
    finally:
        subprocess.run(["tmux", "-S", other, "kill-server"], env=env.vars)


def test_stale_lock_is_taken_over(server, env, tmux):
    server.proc.kill()
    server.proc.wait()
    assert os.path.exists(server.runtime.lock_path)  # left behind by the dead server
    again = server.start_another()
    assert again.get("/")[0] == 200 and again.runtime.live_info()["pid"] == again.proc.pid


def test_runtime_dir_is_private(shared_server):
    server = shared_server  # reads and refused requests only: a server shared in this module
    assert (os.stat(server.runtime.dir).st_mode & 0o777) == 0o700
    info = server.runtime.live_info()
    assert info["port"] == server.port and info["socket"] == server.tmux.socket and info["pid"] == server.proc.pid


def test_server_exits_when_tmux_is_killed(server, tmux):
    tmux.kill()
    assert server.proc.wait(10) == 0
    assert "gone" in server.log() or "exited" in server.log()
    assert not os.path.exists(server.runtime.info_path)


def test_events_are_coalesced(server, sse):
    events = sse(server.port)
    events.next()
    for i in range(200):
        server.post("/log", {"session": "main", "message": "burst %d" % i})
    seen = []
    while True:
        ev = events.next(timeout=5)
        seen.append(ev)
        if ev["data"]["sessions"][0]["metadata"]["logs"][-1]["message"] == "burst 199":
            break
    # 200 changes arrive as far fewer events (at most ~30/s), and the last one is the final state
    assert len(seen) < 100
    gaps = [b["received"] - a["received"] for a, b in zip(seen, seen[1:])]
    assert all(g > 0.02 for g in gaps), gaps


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(sorted(os_.ROUTES)),
       body=st.one_of(st.binary(max_size=300),
                      st.dictionaries(st.sampled_from(["session", "text", "tone", "message", "current", "total",
                                                       "percent", "clear", "agent", "status", "threadId", "paneId",
                                                       "label", "source", "tmuxSession", "projectDir", "attempt"]),
                                      st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                                                st.text(max_size=20), st.just("main"), st.just("%0")),
                                      max_size=6).map(lambda d: json.dumps(d).encode())))
def test_random_bodies_always_get_json_answers(server, path, body):
    status, head, content = post_raw(server.port, path, body)
    assert status in (202, 204, 400), (status, content)
    if status == 400:
        assert isinstance(json.loads(content)["error"], str)
    elif status == 202:
        assert json.loads(content) == {"matched": False}


def test_control_client_runs_with_a_minimal_environment(shared_server):
    tmux = shared_server.tmux  # reads only: the server shared in this module
    procs = [p for p in os_.process_table().values() if p.comm.startswith("tmux") and "-C" in os_.process_args(p.pid)
             and tmux.socket in os_.process_args(p.pid)]
    assert len(procs) == 1
    with open("/proc/%d/environ" % procs[0].pid, "rb") as f:
        names = {item.split(b"=", 1)[0] for item in f.read().split(b"\0") if item}
    assert names <= {b"PATH", b"LANG", b"LC_ALL", b"LC_CTYPE"}


def test_hidden_sessions_never_keep_tmux_alive(server, tmux):
    tmux.run("new-session", "-d", "-s", os_.STASH_SESSION)
    tmux.run("kill-session", "-t", "=main")  # the user's last session
    assert server.proc.wait(10) == 0  # tmux exited, and so did the server
    assert not os.path.exists(tmux.socket) or subprocess.run(
        ["tmux", "-S", tmux.socket, "list-sessions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode != 0


def test_a_port_opened_in_a_pane_shows_in_its_session(server, tmux, env):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    tmux.new_session("web", cwd=env.base)
    tmux.run("send-keys", "-t", "=web:0.0", "%s -m http.server %d --bind 127.0.0.1" % (os_.sys.executable, port), "Enter")
    retry_until(lambda: (server.session("web") or {}).get("ports") == [port], timeout=10)
    assert server.session("main")["ports"] == []
    tmux.run("send-keys", "-t", "=web:0.0", "C-c", "")
    retry_until(lambda: server.session("web")["ports"] == [], timeout=10)


def test_an_ambiguous_project_dir_is_not_a_match(server, tmux, env):
    tmux.new_session("other", cwd=env.home)  # main and other both sit in HOME
    retry_until(lambda: [p["cwd"] for w in (server.session("other") or {"windows": []})["windows"]
                         for p in w["panes"]] == [env.home])
    status, body = server.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "T-a",
                                                    "projectDir": env.home + "/sub"})
    assert (status, body) == (202, {"matched": False})
    proj = os.path.join(env.home, "proj")
    os.makedirs(proj)
    tmux.new_session("proj", cwd=proj)
    retry_until(lambda: [p["cwd"] for w in (server.session("proj") or {"windows": []})["windows"]
                         for p in w["panes"]] == [proj])
    assert server.post("/api/agent-event", {"agent": "amp", "status": "running", "threadId": "T-b",
                                            "projectDir": proj + "/x"})[0] == 204
    assert [t["id"] for t in server.session("proj")["threads"]] == ["T-b"]


def test_a_session_that_does_not_exist_is_kept_and_said(server, tmux, env):
    for path, body in (("/set-status", {"session": "later", "text": "deploying"}),
                       ("/set-progress", {"session": "later", "percent": 40}),
                       ("/log", {"session": "later", "message": "step 1"}),
                       ("/notify", {"session": "later", "message": "hello"})):
        assert server.post(path, body) == (202, {"matched": False}), path
    assert server.post("/set-status", {"session": "main", "text": "ok"})[0] == 204
    assert server.post("/notify", {"message": "no session named"})[0] == 204
    r = server.cli("set-status", "later", "still deploying")
    assert r.returncode == 0 and r.stderr.decode() == \
        "opensessions: no tmux session named later (kept for when it appears)\n"
    r = server.cli("log", "main", "fine")
    assert r.returncode == 0 and r.stderr == b""
    tmux.new_session("later", cwd=env.home)
    meta = retry_until(lambda: (server.session("later") or {}).get("metadata"))
    assert meta["status"]["text"] == "still deploying" and meta["progress"]["percent"] == 40
    assert [l["message"] for l in meta["logs"]] == ["step 1", "hello"]


def test_a_session_made_a_moment_ago_is_matched_before_tmux_says_so(tmux, env):
    """A script makes a session and sets its status at once; a hook comes from a pane made a moment
    ago: the server reads tmux when a request names what it does not know yet, rather than answer
    "no tmux session named …" (202). Here the server's loop never runs, so tmux's notification of
    the new session (waiting on the control client's pipe) cannot come first."""
    srv = os_.Server(os_.Tmux(tmux.socket), port=0, environ=env.vars)
    srv.start()
    try:
        tmux.new_session("fresh", cwd=env.home)
        assert srv.api.apply_and_publish("api_set_status", {"session": "fresh", "text": "deploying"}) is True
        pane = tmux.run("display-message", "-p", "-t", "=fresh:", "#{pane_id}").strip()
        tmux.run("split-window", "-d", "-t", pane)
        late = tmux.run("list-panes", "-t", "=fresh:", "-F", "#{pane_id}").split()[-1]
        body = {"agent": "claude", "status": "running", "threadId": "t-fresh", "paneId": late}
        assert srv.api.apply_and_publish("api_agent_event", body) is True
        assert srv.store.threads[("claude", "t-fresh")].pane == late
        assert srv.api.apply_and_publish("api_set_status", {"session": "nowhere", "text": "x"}) is False
    finally:
        srv.shutdown()


def test_an_unknown_theme_is_refused_with_the_names(server):
    status, body = server.post("/ui", {"theme": "no-such"})
    assert status == 400 and "nord" in body["error"] and "catppuccin-mocha" in body["error"]
    assert server.post("/ui", {"theme": "nord"})[0] == 204
