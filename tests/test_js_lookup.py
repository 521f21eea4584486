"""The OpenCode plugin's and the Pi extension's server lookup (_JS_SERVER_LOOKUP), run under node: a
runtime file left by a server killed with -9 sends nothing; the server must still run (a live pid of
ours with the start time it wrote); a squatted temp runtime dir gives way to the same directory
Python uses; the runtime file is never read blocking."""
import json
import os
import shutil
import signal
import subprocess

import pytest

import opensessions as os_
from conftest import ServerProc, retry_until

pytestmark = pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")


def lookup(env, tmp_path, sock, vars_=None):
    """server() of the OpenCode plugin, under node, for the tmux socket `sock`."""
    plugin = tmp_path / "plugin.mjs"
    plugin.write_text(os_.OPENCODE_PLUGIN + "\nexport { server };\n")
    script = "import(%s).then(m => console.log(JSON.stringify(m.server())))" % json.dumps(plugin.as_uri())
    vars_ = dict(env.vars if vars_ is None else vars_, TMUX=sock + ",123,0")
    r = subprocess.run(["node", "-e", script], env=vars_, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def write_info(rt, info):
    os.makedirs(rt.dir, mode=0o700, exist_ok=True)
    try:
        os.unlink(rt.info_path)
    except FileNotFoundError:
        pass
    with open(os.open(rt.info_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        json.dump(info, f)


def test_a_runtime_file_left_by_a_killed_server_sends_nothing(env, tmux, tmp_path):
    server = ServerProc(env, tmux)
    try:
        info = lookup(env, tmp_path, tmux.socket)
        assert info and info["port"] == server.port and info["pid"] == server.proc.pid
        assert info["procStart"] == os_.process_start(server.proc.pid)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        assert os.path.exists(server.runtime.info_path)  # left behind
        assert lookup(env, tmp_path, tmux.socket) is None
    finally:
        server.stop()


def test_only_a_live_pid_of_ours_with_its_start_time_is_trusted(env, tmux, tmp_path):
    rt = os_.RuntimeFiles(tmux.socket, env.vars)
    me, start = os.getpid(), os_.process_start(os.getpid())
    write_info(rt, {"port": 45678, "token": "ab12", "pid": me, "procStart": start})
    assert lookup(env, tmp_path, tmux.socket)["port"] == 45678
    write_info(rt, {"port": 45678, "pid": me, "procStart": start + 1})  # the pid, reused by another process
    assert lookup(env, tmp_path, tmux.socket) is None
    write_info(rt, {"port": 45678, "pid": me})  # no start time: not vouched for
    assert lookup(env, tmp_path, tmux.socket) is None
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_info(rt, {"port": 45678, "pid": gone.pid, "procStart": start})
    assert lookup(env, tmp_path, tmux.socket) is None
    # another user's process, with its real start time: kill 0 is refused (not ours)
    other = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))
    try:
        write_info(rt, {"port": 45678, "pid": other.pid, "procStart": os_.process_start(other.pid)})
        assert lookup(env, tmp_path, tmux.socket) is None
    finally:
        other.kill()
        other.wait()


def test_where_there_is_no_proc_the_start_time_is_ps_lstart(env, tmux, tmp_path):
    rt = os_.RuntimeFiles(tmux.socket, env.vars)
    stamp = subprocess.run(["ps", "-o", "lstart=", "-p", str(os.getpid())], stdout=subprocess.PIPE,
                           env=dict(os.environ, LC_ALL="C")).stdout.decode().strip()
    write_info(rt, {"port": 45678, "pid": os.getpid(), "procStart": stamp})
    assert lookup(env, tmp_path, tmux.socket)["port"] == 45678
    write_info(rt, {"port": 45678, "pid": os.getpid(), "procStart": "Mon Jan  1 00:00:00 2001"})
    assert lookup(env, tmp_path, tmux.socket) is None


def test_a_runtime_file_that_is_a_fifo_is_refused_at_once(env, tmux, tmp_path):
    rt = os_.RuntimeFiles(tmux.socket, env.vars)
    os.makedirs(rt.dir, mode=0o700, exist_ok=True)
    os.mkfifo(rt.info_path, 0o600)
    assert lookup(env, tmp_path, tmux.socket) is None  # subprocess.run's timeout would fail a blocked read


def test_a_squatted_temp_runtime_dir_gives_way_to_the_same_dir_as_python(env, tmux, tmp_path):
    vars_ = {k: v for k, v in env.vars.items() if k != "XDG_RUNTIME_DIR"}
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    vars_["TMPDIR"] = str(shared)
    squat = shared / ("opensessions-%d" % os.getuid())
    squat.mkdir(mode=0o777)
    os.chown(str(squat), 65534, 65534)  # another user made it first
    rt = os_.RuntimeFiles(tmux.socket, vars_)
    assert rt.dir == os.path.join(env.home, ".local", "state", "opensessions", "run")
    assert "owned by uid 65534" in rt.squatted
    write_info(rt, {"port": 45678, "pid": os.getpid(), "procStart": os_.process_start(os.getpid())})
    assert lookup(env, tmp_path, tmux.socket, vars_)["port"] == 45678
