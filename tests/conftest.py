"""Shared fixtures: a private tmux server per test, a temp HOME, a running opensessions server.

Nothing here touches the user's tmux server or home: every tmux call names a socket in a temp
dir (-S), and HOME / XDG_* / TMUX_TMPDIR point into the test's temp dir.
"""
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import opensessions  # noqa: E402

SOURCE = os.path.join(ROOT, "opensessions.py")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")  # real captures, one dir per agent (fixtures/README.md)
PYTHON = sys.executable


def _program():
    """The program the tests run: the zipapp built from SOURCE once per test run, in a temp dir
    (build_zipapp.py, what the plugin runs). It starts from bytecode: `python3 opensessions.py`
    compiles the whole module in every process (about 0.3 s of CPU), and the suite starts a few
    hundred servers, sidebars and client commands. OPENSESSIONS_TEST_SOURCE=1 runs the source
    instead."""
    if os.environ.get("OPENSESSIONS_TEST_SOURCE") == "1":
        return SOURCE
    import atexit
    import importlib.util
    import tempfile
    spec = importlib.util.spec_from_file_location("build_zipapp", os.path.join(ROOT, "build_zipapp.py"))
    build_zipapp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_zipapp)
    out = tempfile.mkdtemp(prefix="opensessions-tests-")
    atexit.register(shutil.rmtree, out, True)
    return build_zipapp.build(os.path.join(out, "opensessions.pyz"))


SCRIPT = _program()
TMUX = shutil.which("tmux") or "tmux"


def _no_inherited_fds():
    """The processes tests start get stdin, stdout and stderr and nothing else of ours, though
    some start with close_fds=False (see TmuxServer.run): an fd this process was given open and
    inheritable (by a shell or a CI runner) would live on in every tmux server, for ever."""
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        if fd > 2:
            try:
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)
            except OSError:
                pass


_no_inherited_fds()
# where a child process imports opensessions from: the zipapp (its bytecode), else the source's dir
IMPORT_PATH = SCRIPT if SCRIPT.endswith(".pyz") else ROOT


def wait_process(proc, timeout):
    """proc.wait(timeout), woken by the exit itself where the kernel has pidfds (Linux 5.3+):
    Popen.wait with a timeout polls at growing intervals (up to 50 ms late), for every server a
    test stops."""
    import select
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
    finally:
        os.close(fd)
    return proc.wait(timeout)


def end_process(proc, grace=5):
    """Terminate a child, killing it if it does not exit within `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            wait_process(proc, grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def retry_until(fn, timeout=5.0, interval=0.01, message=None):
    """Call fn until it returns something truthy; tmux and the server are eventually consistent."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(message or "condition not met within %.1fs (last: %r)" % (timeout, last))


def unused_port():
    """A loopback port that nothing listened on a moment ago (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Env(object):
    """A temp HOME with XDG dirs and an environment that points at it."""

    def __init__(self, base):
        self.base = base
        self.home = os.path.join(base, "home")
        for d in ("home", "home/.config", "home/.local/state", "home/.local/share", "home/.cache", "run", "tmp"):
            os.makedirs(os.path.join(base, d), exist_ok=True)
        os.chmod(os.path.join(base, "run"), 0o700)
        self.vars = {k: v for k, v in os.environ.items()
                     if not k.startswith(("TMUX", "XDG_", "CLAUDE", "CODEX", "OPENCODE"))}
        self.vars.update({
            "HOME": self.home,
            "XDG_CONFIG_HOME": os.path.join(self.home, ".config"),
            "XDG_STATE_HOME": os.path.join(self.home, ".local/state"),
            "XDG_DATA_HOME": os.path.join(self.home, ".local/share"),
            "XDG_CACHE_HOME": os.path.join(self.home, ".cache"),
            "XDG_RUNTIME_DIR": os.path.join(base, "run"),
            "TMUX_TMPDIR": os.path.join(base, "tmp"),
            "TMPDIR": os.path.join(base, "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        })
        # Not the default port 7391: the user's own server (or another checkout's) may listen there, and
        # a client that finds no runtime file would talk to it. A port nothing listens on instead.
        self.vars["OPENSESSIONS_PORT"] = str(unused_port())


class TmuxServer(object):
    """A real tmux server on a private socket, killed at the end of the test."""

    def __init__(self, env, name="os"):
        self.env = env
        self.socket = os.path.join(env.base, "tmux-%s.sock" % name)
        self.tmux = opensessions.Tmux(self.socket)

    def run(self, *args, check=True):
        # tmux by its path and close_fds=False (our fds are close-on-exec anyway): Python 3.9 then
        # starts it with posix_spawn instead of forking this process, which grows to 200 MB in a run
        p = subprocess.Popen([TMUX, "-S", self.socket, "-f", "/dev/null"] + [str(a) for a in args], close_fds=False,
                             env=self.env.vars, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = opensessions.command_output(p, 10, grace=1.0)  # the product's own wait
        if check and p.returncode != 0:
            raise RuntimeError("tmux %s failed: %s" % (args, err.decode()))
        return out.decode()

    def new_session(self, name, cwd=None, command=None):
        args = ["new-session", "-d", "-s", name, "-x", "160", "-y", "40"]
        if cwd:
            args += ["-c", cwd]
        if command:
            args.append(command)
        self.run(*args)

    def pid(self):
        return int(self.run("display-message", "-p", "#{pid}").strip())

    def server_pids(self):
        """The tmux server processes on this socket, found in /proc (no tmux command: this works
        when that server does not answer)."""
        out = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/comm" % name) as f:
                    if f.read().strip() != "tmux: server":
                        continue
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if os.fsencode(self.socket) in argv:
                out.append(int(name))
        return out

    def kill(self):
        """End this socket's tmux server (SIGTERM: tmux's kill-server) and wait until it is really
        gone; one still there 10 s later is killed, with a warning. No tmux command: under load a
        tmux server on its way out (or right after a control client left) once took over 10 s to
        answer, or to let a command client's stdout go (a pipe's reader waits for that)."""
        import signal
        pids = self.server_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        for pid in pids:
            gone = lambda: not os.path.exists("/proc/%d" % pid) or \
                open("/proc/%d/stat" % pid).read().split(") ")[1].startswith("Z")
            try:
                retry_until(gone, timeout=10, interval=0.002)
            except AssertionError:
                import warnings
                warnings.warn("tmux server %d was still there 10 s after SIGTERM; killed" % pid)
                os.kill(pid, signal.SIGKILL)
                retry_until(gone, timeout=10)


class ServerProc(object):
    """`opensessions server` in a subprocess, on a free port."""

    def __init__(self, env, tmux, argv=None, extra_env=None):
        self.env = env
        self.tmux = tmux
        self.log_path = os.path.join(env.base, "server-%s.log" % uuid.uuid4().hex[:6])
        vars_ = dict(env.vars)
        vars_.update(extra_env or {})
        self.vars = vars_
        self.argv = argv or [PYTHON, SCRIPT]
        self.proc = subprocess.Popen(self.argv + ["-S", tmux.socket, "server", "--port", "0",
                                                  "--log", self.log_path], close_fds=False,  # (see TmuxServer.run)
                                     env=vars_, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.runtime = opensessions.RuntimeFiles(tmux.socket, vars_)
        info = retry_until(lambda: self.proc.poll() is None and self.runtime.live_info() or self._dead(),
                           timeout=10, interval=0.005, message="server did not start")
        self.port = info["port"]
        self.client = opensessions.Client(self.port)

    def _dead(self):
        if self.proc.poll() is not None:
            raise RuntimeError("server exited: %s" % self.proc.stderr.read().decode())
        return None

    def get(self, path):
        status, body = self.client.request("GET", path)
        return status, body

    def state(self):
        status, body = self.get("/state")
        assert status == 200, body
        return json.loads(body.decode())

    def post(self, path, body):
        status, content = self.client.request("POST", path, body)
        return status, (json.loads(content.decode()) if content.strip() else None)

    def session(self, name):
        return next((s for s in self.state()["sessions"] if s["name"] == name), None)

    def cli(self, *args, **kw):
        return subprocess.run(self.argv + ["-S", self.tmux.socket] + list(args), env=self.vars, close_fds=False,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=kw.get("timeout", 20))

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        end_process(self.proc)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


class SSEReader(object):
    """Reads /events in a thread; events() waits for them (no sleeping in tests)."""

    def __init__(self, port, path="/events"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode())
        self.queue = queue.Queue()
        self.headers = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                buf += data
                if self.headers is None and b"\r\n\r\n" in buf:
                    self.headers, buf = buf.split(b"\r\n\r\n", 1)
                while b"\n\n" in buf and self.headers is not None:
                    block, buf = buf.split(b"\n\n", 1)
                    event = {"raw": block}
                    for line in block.decode().split("\n"):
                        k, _, v = line.partition(": ")
                        if k in ("event", "id", "data"):
                            event[k] = v
                    if "data" in event:
                        event["data"] = json.loads(event["data"])
                        event["received"] = time.monotonic()
                        self.queue.put(event)
        except OSError:
            pass
        self.queue.put(None)

    def next(self, timeout=5.0):
        ev = self.queue.get(timeout=timeout)
        if ev is None:
            raise EOFError("stream closed")
        return ev

    def wait_for(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no matching event within %.1fs" % timeout)
            ev = self.next(remaining)
            if predicate(ev["data"]):
                return ev

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


@pytest.fixture(scope="session")
def pyz(tmp_path_factory):
    """A zipapp built from SOURCE by build_zipapp.py (the one the tests run, when they run one)."""
    if SCRIPT.endswith(".pyz"):
        return SCRIPT
    out = str(tmp_path_factory.mktemp("dist") / "opensessions.pyz")
    subprocess.run([PYTHON, os.path.join(ROOT, "build_zipapp.py"), "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    return out


@pytest.fixture
def env(tmp_path):
    return Env(str(tmp_path))


@pytest.fixture
def tmux(env):
    t = TmuxServer(env)
    t.new_session("main", cwd=env.home)
    yield t
    t.kill()


@pytest.fixture
def server(env, tmux):
    procs = []

    def start(**kw):
        s = ServerProc(env, tmux, **kw)
        procs.append(s)
        return s
    s = start()
    s.start_another = start
    yield s
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server (its own tmux server and HOME) for a module's tests that change nothing another
    test reads (refused requests, reads): a server per test costs 0.2 s to start and more to stop."""
    env = Env(str(tmp_path_factory.mktemp("shared")))
    tmux = TmuxServer(env)
    tmux.new_session("main", cwd=env.home)
    s = None
    try:
        s = ServerProc(env, tmux)
        yield s
    finally:
        if s is not None:
            s.stop()
        tmux.kill()


@pytest.fixture
def sse():
    readers = []

    def open_(port, path="/events"):
        r = SSEReader(port, path)
        readers.append(r)
        return r
    yield open_
    for r in readers:
        r.close()


_MAKE_HOMES = []


def _make_homes():
    if _MAKE_HOMES:
        return _MAKE_HOMES[0]
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_homes", os.path.join(FIXTURES, "tools", "make_homes.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _MAKE_HOMES.append(module)
    return module


def lab_home(dest, home_path=None):
    """A HOME laid out like a real user's from the captures (fixtures/tools/make_homes.py), its paths
    pointing at dest (or home_path)."""
    _make_homes().build(FIXTURES, dest, home_path or dest)
    return dest


class FakeLoop(object):
    """The server's event loop as the parts see it, driven by the test: call_later only records."""

    def __init__(self):
        self.timers = []

    def call_later(self, delay, fn, *args):
        self.timers.append((delay, fn, args))

    def add_reader(self, fd, fn):
        pass


requires_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


FAKE_AGENT = r"""#!/bin/sh
# A fake agent: records its argv, optionally writes a Claude registry entry, stays alive cheaply
# (with FAKE_INPUT, recording each line typed into it).
printf '%s\t%s\t%s\t%s\n' "$TMUX_PANE" "$PWD" "${0##*/}" "$*" >> "${FAKE_LOG:-/dev/null}"
if [ -n "$FAKE_REGISTRY" ]; then
  mkdir -p "$FAKE_REGISTRY"
  reg="$FAKE_REGISTRY/$$.json"
  printf '{"pid": %s, "sessionId": "%s", "cwd": "%s", "status": "%s", "kind": "interactive", "updatedAt": %s}' \
    "$$" "$FAKE_SESSION" "$PWD" "${FAKE_STATUS:-idle}" "$(date +%s%3N)" > "$reg.tmp" && mv "$reg.tmp" "$reg"
  trap 'rm -f "$reg"; exit 0' EXIT HUP TERM INT
fi
if [ -n "$FAKE_HOLD" ]; then exec 3>>"$FAKE_HOLD"; fi
while read -r line; do
  if [ -n "$FAKE_INPUT" ]; then printf '%s\t%s\n' "$TMUX_PANE" "$line" >> "$FAKE_INPUT"; fi
done
"""


@pytest.fixture
def labenv(env):
    """env with a HOME laid out like the lab's (real captures), listed whatever their age."""
    shutil.rmtree(env.home)
    lab_home(env.home)
    env.vars["OPENSESSIONS_LIST_HOURS"] = "1000000"  # fixture records are dated 2026-11-22
    env.vars["OPENSESSIONS_RECENT_DAYS"] = "100000"
    return env


def fake_agents(bin_dir, names=("claude", "codex", "opencode", "amp")):
    """Small executables named like the agents (comm = the name), for real panes."""
    os.makedirs(bin_dir, exist_ok=True)
    for name in names:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(FAKE_AGENT)
        os.chmod(path, 0o755)
    return bin_dir


class AttachedClient(object):
    """A real tmux client on a pty, so 'someone is looking at this window' is true."""

    def __init__(self, tmux, target):
        import pty
        self.master, slave = pty.openpty()
        env = dict(tmux.env.vars, TERM="xterm-256color")
        self.proc = subprocess.Popen(["tmux", "-S", tmux.socket, "attach-session", "-t", target],
                                     stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()

    def _read(self):
        self.output = b""
        try:
            while True:
                data = os.read(self.master, 65536)
                if not data:
                    break
                self.output = (self.output + data)[-262144:]
        except OSError:
            pass

    def close(self):
        end_process(self.proc)
        try:
            os.close(self.master)
        except OSError:
            pass


@pytest.fixture
def attach(tmux):
    clients = []

    def open_(target):
        c = AttachedClient(tmux, target)
        clients.append(c)
        # this client, by its pid: any client listed would let a second attach return before it is there
        retry_until(lambda: str(c.proc.pid) in tmux.run("list-clients", "-F", "#{client_pid}").split(),
                    message="the client attached to %s did not show up" % target)
        return c
    yield open_
    for c in clients:
        c.close()


def agent_shell(env, agent="claude"):
    """A shell whose process is named like an agent (a link named `agent` to /bin/sh: comm is the
    link's name): a pane running it has "the agent" in front, and it still echoes what is typed
    (a preview is shown only while the thread's agent is the pane's foreground process)."""
    bin_dir = os.path.join(env.base, "agent-shell")
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, agent)
    if not os.path.lexists(path):
        os.symlink("/bin/sh", path)
    return path
