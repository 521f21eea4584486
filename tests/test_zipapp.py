"""dist/opensessions.pyz (build_zipapp.py): what it holds, that it rebuilds only when it must, that
it runs the same program, and how it starts and ends a client command."""
import os
import subprocess

import pytest

from conftest import PYTHON, ROOT


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "opensessions.pyz")
    subprocess.run([PYTHON, os.path.join(ROOT, "build_zipapp.py"), "--out", out], check=True,
                   stdout=subprocess.DEVNULL)
    return out


RUN_PYZ = r"""
import marshal, runpy, sys
pyz = sys.argv[1]
sys.argv = sys.argv[1:]
loads, big = marshal.loads, []
def counting(data):
    if len(data) > 500000:  # opensessions.pyc (no stdlib module comes near)
        big.append(len(data))
    return loads(data)
marshal.loads = counting
class Probe(object):
    def __del__(self):
        sys.stderr.write("teardown ran, %d big unmarshal(s)\n" % len(big))
sys.modules["probe"] = Probe()
runpy.run_path(pyz, run_name="__main__")
"""


def run_pyz(pyz, *argv):
    return subprocess.run([PYTHON, "-S", "-c", RUN_PYZ, pyz] + list(argv), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=30)


def test_the_bytecode_is_read_and_unmarshalled_once(pyz):
    """zipimport would load the module's code twice (get_filename loads it too): ~10 ms a command."""
    r = run_pyz(pyz, "--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("opensessions "), r.stderr
    assert r.stderr.decode().endswith("teardown ran, 1 big unmarshal(s)\n")


def test_a_quick_command_skips_the_teardown_and_keeps_its_output_and_code(pyz, tmp_path):
    env_missing = ["-S", str(tmp_path / "no-tmux.sock"), "--port", "9"]  # port 9: nothing listens
    r = run_pyz(pyz, *env_missing + ["set-status", "main", "x"])
    assert r.returncode == 1 and "teardown" not in r.stderr.decode()
    assert r.stderr.decode().startswith("opensessions: cannot reach the opensessions server"), r.stderr
    # not a quick command (help): the interpreter ends as usual
    r = run_pyz(pyz, "set-status", "--help")
    assert r.returncode == 0 and b"usage:" in r.stdout and b"teardown ran" in r.stderr


def test_quick_output_through_a_pipe_is_whole(pyz, server):
    """A quick command's output is flushed before it exits without the teardown."""
    for i in range(60):
        assert server.post("/log", {"session": "main", "message": "line %d %s" % (i, "x" * 200)})[0] == 204
    as_py = server.cli("status", "--json")
    r = subprocess.run([PYTHON, "-S", pyz, "-S", server.tmux.socket, "status", "--json"], env=server.vars,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0 and len(r.stdout) > 10000, r.stderr
    assert r.stdout.count(b"line ") == as_py.stdout.count(b"line ") == 50  # MAX_LOGS
