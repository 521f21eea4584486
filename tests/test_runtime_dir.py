"""A squatted $TMPDIR/opensessions-<uid> (only without XDG_RUNTIME_DIR): another
user made it first, maybe holding the lock in it. The server starts in a private directory of our
own instead, clients and hooks find it there, and the user is told what happened."""
import fcntl
import json
import os
import subprocess

import pytest

import opensessions as os_
from conftest import PYTHON, SCRIPT, end_process, retry_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a directory owned by another user")


@pytest.fixture
def squatted(env, tmux, tmp_path):
    vars_ = {k: v for k, v in env.vars.items() if k != "XDG_RUNTIME_DIR"}
    shared = tmp_path / "shared-tmp"
    shared.mkdir(mode=0o1777)
    vars_["TMPDIR"] = str(shared)
    squat = str(shared / ("opensessions-%d" % os.getuid()))
    os.mkdir(squat, 0o777)
    os.chmod(squat, 0o777)
    os.chown(squat, 65534, 65534)
    # the squatter holds the lock our server would take there
    lock = os.path.join(squat, "server-%s.lock" % os_.socket_key(tmux.socket))
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield vars_, squat
    os.close(fd)
    subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "stop"], env=vars_, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, timeout=20)


def test_the_server_starts_in_a_dir_of_its_own_and_says_why(env, tmux, squatted):
    vars_, squat = squatted
    fallback = os.path.join(env.home, ".local", "state", "opensessions", "run")
    assert os_.runtime_dir(vars_) == fallback
    r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "start"], env=vars_, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "%s is owned by uid 65534, not by you" % squat in err and "using %s instead" % fallback in err, err
    info = os_.RuntimeFiles(tmux.socket, vars_).live_info()
    assert info and os.path.dirname(os_.RuntimeFiles(tmux.socket, vars_).info_path) == fallback
    assert oct(os.stat(fallback).st_mode & 0o777) == oct(0o700)
    log = open(os.path.join(env.home, ".local", "state", "opensessions", "server.log")).read()
    assert "runtime dir: %s is owned by uid 65534" % squat in log
    # clients and hooks find it
    r = subprocess.run([PYTHON, SCRIPT, "-S", tmux.socket, "status", "--json"], env=vars_, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=20)
    assert r.returncode == 0 and json.loads(r.stdout)["sessions"], r.stderr
    assert os.listdir(squat) == ["server-%s.lock" % os_.socket_key(tmux.socket)]  # nothing of ours there


def test_what_counts_as_squatted(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert os_.runtime_dir_squatted(str(mine)) is None  # ours: made private by ensure_private_dir
    assert os_.runtime_dir_squatted(str(tmp_path / "missing")) is None
    f = tmp_path / "file"
    f.write_text("")
    assert "not a directory" in os_.runtime_dir_squatted(str(f))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(str(theirs), 65534, 65534)
    assert "owned by uid 65534" in os_.runtime_dir_squatted(str(theirs))
    link = tmp_path / "link"
    os.symlink(str(mine), str(link))
    assert "not private" in os_.runtime_dir_squatted(str(link))
    os.chmod(str(mine), 0o700)
    assert os_.runtime_dir_squatted(str(link)) is None  # a link of ours to a private dir of ours
